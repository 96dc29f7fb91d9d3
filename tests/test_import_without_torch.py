"""The app side (CLI, cohort layer, metrics, dashboard) must import with torch, torchvision and timm absent."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parents[1]
# Packages that may import torch (the training engine); everything else in engine/ must not.
TORCH_PACKAGES = ("engine.models", "engine.train")

BLOCK_TORCH = """
import sys
for name in ("torch", "torchvision", "timm"):
    sys.modules[name] = None  # any import of these now raises ImportError
import importlib
for module in sys.argv[1:]:
    importlib.import_module(module)
print("ok", len(sys.argv) - 1)
"""


def torch_free_modules() -> list[str]:
    modules = ["run_experiments", "cli.data_commands", "cli.metrics_commands", "cli.engine_commands"]
    for info in pkgutil.walk_packages(engine.__path__, prefix="engine."):
        if not info.name.startswith(TORCH_PACKAGES):
            modules.append(info.name)
    return modules


def test_cli_and_cohort_layer_import_without_torch():
    modules = torch_free_modules()
    assert "engine.data.cohort" in modules
    result = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *modules], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ok {len(modules)}"


def test_cli_help_runs_without_torch():
    code = "import sys; sys.modules['torch'] = None; import runpy; sys.argv = ['run_experiments.py', '--help']; " \
           "runpy.run_path('run_experiments.py', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "prepare" in result.stdout and "subsets" in result.stdout and "cache" in result.stdout
