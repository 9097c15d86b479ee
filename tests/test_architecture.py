"""The package layout of docs/architecture.md: imports run one way, and the top level stays
small. A module importing from a floor above it is a layering error this test names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mrcnn"

# Floor of each package or top-level module (higher = may import lower, never the reverse).
FLOORS = {
    "mrcnn.config": 0, "mrcnn.configs": 0, "mrcnn.fileio": 0, "mrcnn._env": 0,
    "mrcnn.ops": 1,
    "mrcnn.layers": 2, "mrcnn.data": 2, "mrcnn.solver": 2,
    "mrcnn.model": 3, "mrcnn.inference": 3, "mrcnn.evaluate": 3, "mrcnn.visualize": 3,
    "mrcnn.engine": 4, "mrcnn.checkpoint": 4,
    "mrcnn.export": 5,
    "mrcnn.cli": 6, "mrcnn.utils": 6, "mrcnn.compat": 6,
    "mrcnn.__main__": 6,
}


def _floor(module: str) -> int | None:
    best = None
    for name, floor in FLOORS.items():
        if module == name or module.startswith(name + "."):
            if best is None or len(name) > len(best[0]):
                best = (name, floor)
    return None if best is None else best[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mrcnn":
                found += [(node.lineno, f"mrcnn.{a.name}") for a in node.names]
            elif node.module.startswith("mrcnn."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mrcnn.")]
    return found


def test_imports_run_one_way():
    errors = []
    for path in sorted(ROOT.rglob("*.py")):
        module = _module_name(path)
        own = _floor(module)
        if own is None or module == "mrcnn":
            continue
        for line, target in _imports(path):
            floor = _floor(target)
            if floor is not None and floor > own:
                errors.append(f"{path.relative_to(ROOT.parent)}:{line} ({module}, floor {own}) "
                              f"imports {target} (floor {floor})")
    assert not errors, "imports against the layering of docs/architecture.md:\n" + "\n".join(errors)


def test_every_module_has_a_floor():
    missing = [m for m in (_module_name(p) for p in ROOT.rglob("*.py")) if m != "mrcnn" and _floor(m) is None]
    assert not missing, f"modules without a floor in docs/architecture.md / this test: {missing}"


def test_top_level_stays_small():
    modules = sorted(p.name for p in ROOT.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 10, modules
