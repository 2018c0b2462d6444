"""The floors of the house: each imports only the floors below it (DESIGN.md "Layout").

Two checks. Statically, every ``import`` of a project module (at any depth, lazy ones included) is compared with
the floor rules and the module graph has no cycle. Dynamically, each floor is imported whole in a fresh
interpreter and the third-party engines it must not touch are looked for in ``sys.modules``, so an indirect
import (a floor pulling in a module that pulls in dagster) counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fraud_assets", "serving")
GROUND = "fraud_assets.ground"  # params, settings, schemas, windows: the modules directly under fraud_assets

# floor -> the floors it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    GROUND: {GROUND},
    "fraud_assets.core": {GROUND, "fraud_assets.core"},
    "fraud_assets.adapters": {GROUND, "fraud_assets.core", "fraud_assets.adapters"},
    "fraud_assets.compute": {GROUND, "fraud_assets.core", "fraud_assets.compute"},
    "fraud_assets.orchestration": {GROUND, "fraud_assets.core", "fraud_assets.adapters", "fraud_assets.compute",
                                   "fraud_assets.orchestration"},
    "fraud_assets.stages": {GROUND, "fraud_assets.core", "fraud_assets.adapters", "fraud_assets.compute",
                            "fraud_assets.stages"},
    "serving": {GROUND, "fraud_assets.core", "fraud_assets.adapters", "fraud_assets.compute", "serving"},
    "fraud_assets.cli": {GROUND, "fraud_assets.core", "fraud_assets.adapters", "fraud_assets.compute",
                         "fraud_assets.orchestration", "fraud_assets.stages", "serving", "fraud_assets.cli"},
}
# floor -> third-party engines it must not load, even indirectly
FORBIDDEN: dict[str, set[str]] = {
    GROUND: {"dagster", "ray", "mlflow", "dvc", "xgboost", "sklearn"},
    "fraud_assets.core": {"dagster", "ray", "mlflow", "dvc"},
    "fraud_assets.adapters": {"dagster", "ray"},
    "fraud_assets.compute": {"dagster", "mlflow"},
    "fraud_assets.stages": {"dagster", "ray"},
    "serving": {"dagster"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _floor(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "serving":
        return "serving"
    if len(parts) == 1 or (len(parts) == 2 and f"fraud_assets.{parts[1]}" not in ALLOWED):
        return GROUND
    return ".".join(parts[:2])


def _imports(path: Path, module: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, project module) for every import statement of ``path``, however deep."""
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES:
                out.append((node.lineno, name))
    return out


def test_every_module_has_a_floor() -> None:
    for module in _modules():
        assert _floor(module) in ALLOWED, f"{module} is on no floor"


def test_floors_import_only_the_floors_below() -> None:
    modules = _modules()
    known = set(modules)
    broken = []
    for module, path in modules.items():
        floor = _floor(module)
        for line, target in _imports(path, module, known):
            if _floor(target) not in ALLOWED[floor]:
                broken.append(f"{path.relative_to(ROOT)}:{line}: {floor} imports {target} ({_floor(target)})")
    assert not broken, "floor rules broken:\n" + "\n".join(broken)


def test_no_import_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {m: {t for _, t in _imports(p, m, known) if t != m and not m.startswith(t + ".")}
             for m, p in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*stack[stack.index(t):], t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert len(state) == len(modules)  # every module was walked
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("floor", sorted(FORBIDDEN))
def test_floor_loads_no_forbidden_engine(floor: str) -> None:
    members = sorted(m for m in _modules() if _floor(m) == floor and not m.endswith("__main__"))
    code = ("import importlib, json, sys\n"
            f"for m in {members!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted({k.split('.')[0] for k in sys.modules})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert not loaded & FORBIDDEN[floor], f"{floor} loads {sorted(loaded & FORBIDDEN[floor])}"
