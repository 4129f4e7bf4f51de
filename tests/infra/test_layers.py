"""Imports follow the layers: metatrain < evaluators < infra, no cycles.

Read from the source (``ast``), deferred imports included: an import
inside a function is still a dependency, and a cycle through one only
works until someone moves it to the top.
"""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYERS = {"metatrain": 0, "evaluators": 1, "infra": 2}


def _module(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _graph() -> dict[str, set[str]]:
  mods = {_module(p): p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")}
  graph = {}
  for name, path in mods.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        # `from pkg import sub` depends on pkg.sub, not on pkg's __init__.
        subs = [f"{node.module}.{a.name}" for a in node.names]
        targets = [t for t in subs if t in mods]
        if len(targets) < len(subs):
          targets.append(node.module)
      else:
        continue
      deps |= {t for t in targets if t in mods and t != name}
    graph[name] = deps
  return graph


def test_no_module_imports_a_layer_above_its_own():
  bad = [(m, d) for m, deps in _graph().items() for d in deps
         if LAYERS[d.split(".")[0]] > LAYERS[m.split(".")[0]]]
  assert not bad, bad


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  state: dict[str, int] = {}  # 1: on the path, 2: done

  def visit(m, path):
    state[m] = 1
    for d in sorted(graph[m]):
      if state.get(d) == 1:
        raise AssertionError(" -> ".join(path + [m, d]))
      if d not in state:
        visit(d, path + [m])
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m, [])


def test_the_parser_is_a_leaf_that_cli_and_launch_share():
  graph = _graph()
  assert not {d for d in graph["infra.parser"] if d.startswith("infra")}
  assert "infra.parser" in graph["infra.cli"]
  assert "infra.parser" in graph["infra.launch"]
  assert "infra.cli" not in graph["infra.launch"]
