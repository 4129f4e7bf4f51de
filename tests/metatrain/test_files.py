"""metatrain.files.write_atomic: the old content or the new, never part."""

import errno
import os

import pytest

from metatrain import files


def _others(d, keep):
  return sorted(n for n in os.listdir(d) if n not in keep)


def test_writes_text_and_bytes_with_open_s_permissions(tmp_path):
  path = tmp_path / "a.json"
  old = os.umask(0o027)
  try:
    files.write_atomic(path, "first ✓\n")
    assert path.read_text(encoding="utf-8") == "first ✓\n"
    assert os.stat(path).st_mode & 0o777 == 0o640
    files.write_atomic(str(path), b"\x00\x01second")
    assert path.read_bytes() == b"\x00\x01second"
  finally:
    os.umask(old)
  assert _others(tmp_path, {"a.json"}) == []  # no temporary left


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temporary(small_disk):
  path = small_disk / "pin.json"
  files.write_atomic(path, "old")
  with pytest.raises(OSError) as e:
    files.write_atomic(path, b"x" * (4 * 2**20))  # more than the 3 MiB disk
  assert e.value.errno == errno.ENOSPC
  assert path.read_text() == "old"
  assert _others(small_disk, {"pin.json"}) == []


def test_a_failed_rename_or_a_missing_directory_changes_nothing(tmp_path):
  (tmp_path / "d").mkdir()
  (tmp_path / "d" / "inside").write_text("kept")
  with pytest.raises(IsADirectoryError):
    files.write_atomic(tmp_path / "d", "new")
  assert (tmp_path / "d" / "inside").read_text() == "kept"
  assert _others(tmp_path, {"d"}) == []
  with pytest.raises(FileNotFoundError):
    files.write_atomic(tmp_path / "missing" / "x.json", "new")
  assert _others(tmp_path, {"d"}) == []
