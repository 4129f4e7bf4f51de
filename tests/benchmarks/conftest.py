"""Loads a script of ``benchmarks/`` (not a package) as a module."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(name="benchmark_module")
def _benchmark_module():
  """``load(name)``: ``benchmarks/<name>.py`` as a fresh module."""
  def load(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
  return load
