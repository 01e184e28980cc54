"""The house rules that keep the layout readable: stages import downward only, and the
package works when installed without the repository around it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mmexpr"

# Lowest first. A module may import its own stage or any stage before it, never one after.
STAGES: list[tuple[str, ...]] = [
    ("errors", "config", "labels", "metrics", "progress", "local_ray", "store"),
    ("faces",),
    ("data", "synth"),
    ("model",),
    ("train",),
    ("runs",),
    ("predict",),
    ("submit",),
    ("demo", "bench"),
    ("cli",),
]
LEVEL = {name: i for i, names in enumerate(STAGES) for name in names}


def _stage(module: str) -> str:
    """`mmexpr.data.loader` -> `data`; `mmexpr.cli` -> `cli`; the package root is foundation."""
    parts = [p for p in module.split(".") if p != "__init__"]
    return parts[1] if len(parts) > 1 else "errors"


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every mmexpr module `path` imports, at module level or inside a function."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("mmexpr")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mmexpr") and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                is_module = (PACKAGE / Path(*full.split(".")[1:])).with_suffix(".py").is_file()
                found.append((node.lineno, full if is_module else node.module))
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_folder_and_top_module_has_a_stage():
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert names - set(LEVEL) == set(), "add the new stage to STAGES (and docs/ARCHITECTURE.md)"


def test_no_stage_imports_a_stage_above_it():
    upward = []
    for path in _modules():
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        own = LEVEL[_stage(module)]
        for line, target in _imports(path):
            if LEVEL[_stage(target)] > own:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert upward == []


def test_the_import_walk_sees_function_level_imports(tmp_path: Path):
    """The rule above is only as good as its parser: a lazy import inside a function counts."""
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from mmexpr.train.driver import run_training\n")
    assert _imports(sample) == [(2, "mmexpr.train.driver")]


@pytest.mark.slow
def test_an_installed_package_runs_its_commands_from_any_folder(tmp_path: Path):
    """`pip install .` (not editable): the benchmarks and the shipped job files come with it."""
    wheel_dir, venv, elsewhere = tmp_path / "wheel", tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheel_dir), str(REPO)],
                   check=True, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # The dependencies come from this venv's site-packages; its editable mmexpr finder is a .pth
    # hook that a plain path entry does not run, so only the wheel's mmexpr is importable.
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    wheel = next(wheel_dir.glob("mmexpr-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = str(venv / "bin" / "python")

    def run(*args: str) -> str:
        done = subprocess.run([python, "-m", "mmexpr.cli", *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    where = subprocess.run([python, "-c", "import mmexpr; print(mmexpr.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    assert "loader" in run("bench", "--help")
    described = run("describe", "jobs/demo.yaml")
    assert "job: demo" in described and "total" in described


HEAVY = ("torch", "ray", "mlflow", "deepspeed", "transformers")


def test_the_cli_starts_without_importing_heavy_libraries():
    """`mmexpr --help` and argument errors answer at once: the heavy stacks load in handlers."""
    code = ("import sys, mmexpr.cli; mmexpr.cli.build_parser(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == ""
