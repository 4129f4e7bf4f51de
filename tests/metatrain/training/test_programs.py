"""The compiled-program bound and the on-disk compile cache."""

import gc
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp

from metatrain.training import programs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _compile_many(n, offset):
  for i in range(n):
    f = jax.jit(lambda x, i=i: jnp.tanh(x @ x.T + i).sum())
    f(jnp.ones((4 + offset + i, 3))).block_until_ready()


def test_map_count_and_limit_are_read_on_linux():
  assert programs.map_count() > 10
  assert programs.map_limit() > 1000


def test_clear_unmaps_compiled_programs():
  programs.clear()
  gc.collect()
  before = programs.map_count()
  _compile_many(40, 0)
  grown = programs.map_count()
  assert grown > before + 100  # each executable costs memory maps
  programs.clear()
  gc.collect()
  assert programs.map_count() < grown - 100


def test_note_clears_only_for_new_keys_over_budget(monkeypatch):
  programs.clear()
  clears = programs.stats()["clears"]
  assert not programs.note("a")
  assert not programs.note("a")
  monkeypatch.setattr(programs, "MAP_FRACTION", 1e-9)  # always over budget
  assert not programs.note("a")  # already live: no clear
  assert programs.note("b")
  assert programs.stats()["clears"] == clears + 1
  assert programs.stats()["live"] == 1


def test_note_falls_back_to_a_program_count(monkeypatch):
  programs.clear()
  monkeypatch.setattr(programs, "map_count", lambda: None)
  monkeypatch.setattr(programs, "MAX_PROGRAMS", 3)
  assert [programs.note(k) for k in "abcd"] == [False, False, False, True]


def test_persistent_cache_writes_and_reloads(tmp_path):
  code = textwrap.dedent(f"""
      import sys, time
      sys.path.insert(0, {ROOT!r})
      import jax, jax.numpy as jnp
      from metatrain.training import programs
      events = []
      jax.monitoring.register_event_listener(lambda e, **kw: events.append(e))
      assert programs.enable_persistent_cache({str(tmp_path / "c")!r})
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
      programs.compile_counts()  # counting from here
      f = jax.jit(lambda x: jnp.sin(x) * 3 + 1)
      y = float(f(jnp.float32(2.0)))
      c = programs.compile_counts()
      print(y, any("cache_hits" in e for e in events), c["cache_hits"],
            c["compiles"])
  """)
  out = [subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, check=True).stdout for _ in range(2)]
  assert out[0].split()[0] == out[1].split()[0]
  assert out[0].split()[1] == "False" and out[1].split()[1] == "True"
  # Counted: the first run compiles its programs, the second loads them all.
  first, second = ([int(v) for v in o.split()[2:]] for o in out)
  assert first[0] == 0 and first[1] >= 1
  assert second == [first[1], 0]
  assert os.listdir(tmp_path / "c")  # the compiled program was written


def test_unwritable_cache_dir_disables_with_a_warning(tmp_path, caplog):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  assert programs.enable_persistent_cache(str(blocker / "sub")) is None
  assert "compile cache disabled" in caplog.text
  assert programs.enable_persistent_cache("") is None


def test_map_limit_advice_names_the_fix(monkeypatch):
  monkeypatch.setattr(programs, "map_limit", lambda: 65530)
  advice = programs.map_limit_advice()
  assert "vm.max_map_count is 65530" in advice
  assert "sysctl -w vm.max_map_count=262144" in advice
  monkeypatch.setattr(programs, "map_limit", lambda: 262144)
  assert programs.map_limit_advice() is None
  monkeypatch.setattr(programs, "map_limit", lambda: None)
  assert programs.map_limit_advice() is None


def test_compiles_are_counted_from_jax_events():
  x1, x2 = jnp.float32(1.0), jnp.float32(2.0)  # (converting compiles too)
  before = programs.compile_counts()
  f = jax.jit(lambda x: x * 7.0 + 1.0)
  f(x1)  # a new program: one compile
  f(x2)  # the same program: none
  after = programs.compile_counts()
  assert after["compiles"] - before["compiles"] == 1


def test_the_default_cache_dir_is_per_version_and_env_overrides_it(
    monkeypatch, tmp_path):
  import jaxlib  # pylint: disable=import-outside-toplevel
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert programs.default_cache_dir() == str(
      tmp_path / "lopt" / f"jax-{jax.__version__}-{jaxlib.__version__}")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
  assert programs.default_cache_dir() == str(tmp_path / "mine")


def test_trim_cache_deletes_the_oldest_programs_first(tmp_path):
  for i in range(5):
    p = tmp_path / f"prog{i}"
    p.write_bytes(b"x" * 1000)
    os.utime(p, (1000 + i, 1000 + i))
  assert programs.trim_cache(str(tmp_path), max_bytes=2500) == 3000
  assert sorted(os.listdir(tmp_path)) == ["prog3", "prog4"]
  assert programs.trim_cache(str(tmp_path), max_bytes=2500) == 0
  assert programs.trim_cache("", max_bytes=0) == 0  # off: nothing touched
