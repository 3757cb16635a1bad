"""The house's floors: jtl's modules import only from their own floor or below, in no circle.

The floors are the README's Layout section; a new module is placed in FLOORS first.
"""

import ast
import pathlib

import pytest

JTL = pathlib.Path(__file__).resolve().parent.parent / "jtl"

# Module (or package prefix) -> floor. The longest matching prefix decides.
FLOORS = {
    # 0: no JAX model code; anything may use these.
    "jtl.config": 0, "jtl.results": 0, "jtl.runtime": 0, "jtl.writers": 0,
    "jtl.workdir": 0, "jtl.distributed": 0, "jtl.ops": 0,
    # 1: data and models.
    "jtl.data": 1, "jtl.models": 1,
    # 2: what a run is made of.
    "jtl.strategy": 2, "jtl.optim": 2, "jtl.regularizers": 2, "jtl.adapt": 2, "jtl.adabn": 2,
    "jtl.checkpoint": 2, "jtl.convert": 2, "jtl.prefix_cache": 2,
    # 3: the trainer and what reads one model.
    "jtl.train": 3, "jtl.dry_run": 3, "jtl.predict": 3,
    # 4: studies, their reports, diagnostics.
    "jtl.sweep": 4, "jtl.workers": 4, "jtl.slurm": 4, "jtl.report": 4, "jtl.diagnose": 4,
    # 5: the command line.
    "jtl.cli": 5, "jtl.main": 5, "jtl.start": 5,
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(JTL.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in JTL.rglob("*.py")}


def floor(module: str) -> int:
  best = max((k for k in FLOORS if module == k or module.startswith(k + ".")), key=len,
             default=None)
  if best is None:
    raise AssertionError(f"{module} has no floor: add it to FLOORS in tests/test_layout.py")
  return FLOORS[best]


def imports(module: str) -> set[str]:
  """The jtl modules `module` imports, at the top or inside a function."""
  path = MODULES[module]
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      # `from jtl import train` imports the module jtl.train.
      out |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
  return {m for m in out if m in MODULES and m != module and m != "jtl"}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_has_a_floor():
  for module in MODULES:
    if module != "jtl":
      floor(module)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "jtl"))
def test_no_import_runs_up_a_floor(module):
  up = sorted(m for m in GRAPH[module] if floor(m) > floor(module))
  assert not up, f"{module} (floor {floor(module)}) imports {up} from a higher floor"


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every import circle a depth-first walk of `graph` meets, as module paths."""
  seen, found = {}, []

  def visit(module, stack):
    seen[module] = "open"
    for dep in sorted(graph.get(module, ())):
      if seen.get(dep) == "open":
        found.append(stack[stack.index(dep):] + [dep])
      elif dep not in seen:
        visit(dep, stack + [dep])
    seen[module] = "done"

  for module in sorted(graph):
    if module not in seen:
      visit(module, [module])
  return found


def test_no_import_circles():
  assert not circles(GRAPH)


def test_the_checker_finds_a_circle_and_reads_function_level_imports():
  assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
  assert circles({"a": {"b"}, "b": set()}) == []
  # jtl.main imports the trainer inside a function, and the checker sees it.
  assert "jtl.train" in GRAPH["jtl.main"]
