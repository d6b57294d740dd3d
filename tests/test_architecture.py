"""The map in docs/architecture.md holds: torch-free readers, functions <= 60 lines, modules <= 450 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "damage_smp"
LONG_MODULES_WITH_A_REASON: set[str] = set()  # each named, with its reason, in docs/architecture.md


def test_runs_compare_and_report_never_import_torch():
    code = "import damage_smp.runs, damage_smp.rundir, damage_smp.compare, damage_smp.report, sys; " \
           "print('torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_no_function_over_60_lines_and_no_module_over_450():
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        rel = str(path.relative_to(PACKAGE))
        if len(text.splitlines()) > 450 and rel not in LONG_MODULES_WITH_A_REASON:
            long_modules.append(rel)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{rel}:{node.lineno} {node.name}")
    assert long_modules == [] and long_functions == []


def test_each_deletion_is_guarded():
    """Every shutil.rmtree in the package sits in a function that checks the folder is damage-smp's first."""
    guards = ("kind_of", "_is_staging", "is_staging", "_is_ours", "is_run_dir", "owned", "ours", "made_by")
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            body = ast.unparse(fn)
            if "rmtree(" in body:
                assert any(g in body for g in guards) or "staging" in body, f"{path.name}: {fn.name}"
