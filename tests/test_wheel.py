"""A built wheel works outside the checkout: recipes ship inside the package (a plain
`pip install .`, not editable), found through importlib.resources from any directory."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_in_a_fresh_virtual_environment(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(wheels.glob("crossflow-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=True)  # dependencies from this machine
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import crossflow_core, pathlib; from crossflow_core.recipe import load_recipe, recipes_dir;"
        "print(crossflow_core.__file__); print(recipes_dir()); print(load_recipe('shapes').name)"
    )
    out = subprocess.run([str(py), "-c", code], check=True, cwd=elsewhere, capture_output=True, text=True)
    module_file, recipes, name = out.stdout.split()
    assert Path(module_file).is_relative_to(env_dir) and Path(recipes).is_relative_to(env_dir)
    assert not Path(recipes).is_symlink() and name == "shapes"
    listed = subprocess.run(
        [str(env_dir / "bin" / "crossflow"), "recipes"],
        check=True,
        cwd=elsewhere,
        capture_output=True,
        text=True,
    ).stdout
    assert all(r in listed for r in ("shapes", "t2i", "t2i_256", "sr", "sr_shapes", "sr_256"))
