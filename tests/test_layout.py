"""The layout shows the jobs: ``workflows`` imports only downward (command lines and whole jobs, then inference,
engine, data, machine) and has no import circle; each command line is a module at the top, and a command line's
steps split by job live in a subpackage at the top (``recipe``)."""

import ast
from pathlib import Path

WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
#: each subpackage's layer: a module may import its own layer and those below it, never above
LAYERS = {"machine": 0, "data": 1, "engine": 2, "inference": 3}
TOP = 4
#: subpackages at the top layer: a command line's steps, split by job, that use whole workflows (the bundle's)
TOP_PACKAGES = ["recipe"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(WORKFLOWS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _imports(path: Path, module: str) -> set[str]:
    """Every ``workflows`` module ``path`` imports, at its top or inside a function."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("workflows.")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .scans import ...
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base == "workflows":
                found |= {f"workflows.{a.name}" for a in node.names}
            elif base.startswith("workflows."):
                found.add(base)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in WORKFLOWS.rglob("*.py")}
    return {name: {m for m in _imports(path, name) if m in modules and m != name} for name, path in modules.items()}


def test_imports_go_only_downward():
    upward = [(module, imported) for module, imports in _graph().items() for imported in imports
              if _layer(imported) > _layer(module)]
    assert not upward, upward


def test_there_is_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError(f"import circle: {' -> '.join(trail + [node, nxt])}")
            if nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_library_is_in_subpackages_and_the_command_lines_at_the_top():
    top = sorted(p.stem for p in WORKFLOWS.glob("*.py") if p.stem != "__init__")
    assert top == ["bundle", "command_line", "convert", "ensemble", "evaluate", "explore", "infer", "quickstart",
                   "realdata", "release", "split", "synthetic"]
    assert sorted(p.name for p in WORKFLOWS.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(
        [*LAYERS, *TOP_PACKAGES])
