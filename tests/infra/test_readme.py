"""README, CI script and command line agree with each other."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command():
  readme = (ROOT / "README.md").read_text()
  ci = (ROOT / ".ci/run").read_text()
  install = re.search(r"^INSTALL_CMD='(.*)'$", ci, re.M).group(1)
  test = re.search(r"^TEST_CMD='(.*)'$", ci, re.M).group(1)
  assert f"{install} && {test}" in readme


def test_readme_has_exactly_two_fresh_machine_commands():
  readme = (ROOT / "README.md").read_text()
  start = readme.index("## Quick start")
  section = readme[start:readme.index("\n## ", start + 3)]
  blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
  assert len(blocks) == 2
  assert all(b.strip().startswith("pip install -e ") for b in blocks)


def test_cli_version_and_help():
  out = subprocess.run([sys.executable, "-m", "infra.cli", "--version"],
                       capture_output=True, text=True, check=True, cwd=ROOT)
  assert out.stdout.startswith("lopt ")
  out = subprocess.run([sys.executable, "-m", "infra.cli", "--help"],
                       capture_output=True, text=True, check=True, cwd=ROOT)
  assert "demo" in out.stdout


def test_the_readme_flax_example_runs_as_written_and_prints_both_losses():
  readme = (ROOT / "README.md").read_text()
  start = readme.index("<!-- README-FLAX-EXAMPLE")
  code = re.search(r"```python\n(.*?)```", readme[start:], re.S).group(1)
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stdout.strip().splitlines()
  assert [l.split(":")[0] for l in lines] == ["learned (shipped)", "adam 1e-3"]
  losses = [float(l.split()[-1]) for l in lines]
  # Both train: digits start at log(10) = 2.30 (an honest bound, not a race).
  assert all(0 < v < 1.0 for v in losses), lines
