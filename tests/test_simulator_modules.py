"""The simulator's modules import in one direction and stay small.

Issue 10 found the fault knobs in an import cycle with the four fakes (the fault module imported
the fakes inside a function to name their operations, the fakes imported the fault module). These
tests fail if such a cycle comes back, whether the import sits at module level or inside a
function, and check that every module imports alone in a fresh interpreter.
"""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import providers.simulated

PACKAGE = "providers.simulated"
ROOT = Path(providers.simulated.__file__).parent
MODULES = sorted(f"{PACKAGE}.{path.stem}" for path in ROOT.glob("*.py") if path.stem != "__init__")
MAX_LINES = 600


def _imports_of(module: str) -> set[str]:
    """Modules of this package that ``module`` imports anywhere in its source (functions included)."""
    tree = ast.parse((ROOT / f"{module.rsplit('.', 1)[1]}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
            # ``from providers.simulated import railway`` imports the module ``railway``.
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def test_the_package_has_the_split_fault_modules() -> None:
    for name in ("fault_plan", "fault_layer", "fault_flags", "catalog", "faults"):
        assert f"{PACKAGE}.{name}" in MODULES


def test_no_import_cycle_among_the_simulator_modules() -> None:
    graph = {module: _imports_of(module) for module in MODULES}
    order = list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    assert set(order) == set(MODULES)


def test_the_cycle_check_sees_a_cycle() -> None:
    """The check above is not vacuous: the old shape (plan imports fakes, fakes import plan) fails."""
    graph = {module: _imports_of(module) for module in MODULES}
    graph[f"{PACKAGE}.fault_layer"] = graph[f"{PACKAGE}.fault_layer"] | {f"{PACKAGE}.railway"}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(graph).static_order())


def test_the_plan_and_the_layer_know_no_fake() -> None:
    fakes = {f"{PACKAGE}.{name}" for name in ("railway", "openrouter", "agentmail", "telnyx", "upstream", "catalog")}
    for module in ("fault_plan", "fault_layer"):
        assert not _imports_of(f"{PACKAGE}.{module}") & fakes, module
    assert _imports_of(f"{PACKAGE}.fault_plan") <= set(), "the plan model imports nothing of ours"


def test_each_module_imports_alone_in_a_fresh_interpreter() -> None:
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for module in MODULES:
        done = subprocess.run([sys.executable, "-c", script, module], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{module}: {done.stderr[-2000:]}"


def test_no_simulator_module_is_over_the_size_limit() -> None:
    for path in ROOT.glob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= MAX_LINES, f"{path.name} has {lines} lines (limit {MAX_LINES})"
