"""The package's layers: every import points down, modules stay small, privates stay private.

Imports are read from the source (every import counts: module level, inside functions and
under TYPE_CHECKING), so a cycle cannot hide behind a lazy import.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sslall"

# lowest first; a module may import its own layer's siblings and anything lower
LAYERS = [
    ("sslall.errors",),
    ("sslall._settings", "sslall._fsutil", "sslall._faults", "sslall._progress", "sslall._workers",
     "sslall._keychecks"),
    ("sslall._config_sections",),
    ("sslall.config",),
    ("sslall._schema",),
    ("sslall.data",),
    ("sslall.store",),
    ("sslall.workspace",),
    ("sslall.decide",),
    ("sslall.model",),
    ("sslall.labelstudio", "sslall.report"),
    ("sslall.rounds",),
    ("sslall.experiments",),
    ("sslall.cli",),
    ("sslall.__main__",),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
    """The layer unit (a sub-package or a top-level module) that `module` belongs to."""
    for name in sorted(RANK, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(p for p in parts if p != "__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslall"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sslall"))
    return found


def test_every_module_belongs_to_a_layer() -> None:
    assert [m for m in _modules() if m != "sslall" and _unit(m) is None] == []


@pytest.mark.parametrize("module", [m for m in _modules() if m != "sslall"])
def test_imports_point_down(module: str) -> None:
    mine = _unit(module)
    upward = sorted(m for m in _imports(_modules()[module])
                    if (unit := _unit(m)) is not None and unit != mine and RANK[unit] >= RANK[mine])
    assert upward == [], f"{module} imports its own layer's neighbours or above: {upward}"


def test_no_module_over_400_lines() -> None:
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > 400} == {}


def test_sub_packages_hold_only_private_modules() -> None:
    public = [m for m in _modules() if m.count(".") >= 2 and not m.rsplit(".", 1)[1].startswith("_")]
    assert public == []


def test_no_import_cycle() -> None:
    modules = _modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        return next((".".join(parts[:k]) for k in range(len(parts), 0, -1)
                     if ".".join(parts[:k]) in modules), None)

    graph = {m: {t for i in _imports(p) if (t := resolve(i)) and t != m
                 and not t.startswith(m + ".") and not m.startswith(t + ".")}
             for m, p in modules.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return path[path.index(t):] + [t] if t in path else [m, t]
            if t not in state and (found := cycle_from(t, path + [t])):
                return found
        state[m] = 2
        return None

    cycles = [c for m in sorted(modules) if m not in state and (c := cycle_from(m, [m]))]
    assert cycles == []
