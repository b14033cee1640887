"""`pip install -e .` and `pip install .` put the commands in the venv's bin/, with or without
`wheel` in the venv (pyproject.toml sends every install through setuptools' PEP 517 backend;
without it pip ran `setup.py develop` when `wheel` was present, and setup.cfg's script folder,
meant for colcon, took the commands to lib/accel_ros). colcon's side is in
test/ros/test_node_ros.py (test_colcon_build_is_clean_and_installs_the_executables).

Each install is of a copy of the repository in a temporary folder (pip builds inside the
source), without dependencies: what is checked is where the files go, not that torch installs.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("accel-ros", "accel_segmentation_node", "accel_segmentation_lifecycle_node")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The repository's tracked files and the checkpoint, copied (pip builds in the source)."""
    # The tests' HOME is a temporary folder: no user git configuration to trust the checkout.
    listed = subprocess.run(["git", "-c", "safe.directory=*", "ls-files", "-z", "--cached",
                             "--others", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            check=True)
    copy = tmp_path_factory.mktemp("source")
    for name in listed.stdout.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    return copy


@pytest.mark.parametrize(("with_wheel", "editable"), list(itertools.product((True, False),
                                                                           repeat=2)))
def test_pip_puts_the_commands_in_the_venv_bin(source, tmp_path, with_wheel, editable):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    if with_wheel:
        result = subprocess.run([*pip, "wheel"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
    result = subprocess.run([*pip, "--no-deps", *(["-e"] if editable else []), str(source)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    for command in COMMANDS:
        script = venv / "bin" / command
        assert script.is_file(), sorted(p.name for p in (venv / "bin").iterdir())
        assert "accel_ros." in script.read_text()
    assert not (venv / "lib" / "accel_ros").exists()
    if not editable:
        site = next((venv / "lib").glob("python*/site-packages"))
        checkpoint = site / "accel_ros" / "weights" / "accel_camvid.pt"
        assert checkpoint.stat().st_size == (ROOT / "accel_ros/weights/accel_camvid.pt").stat(
        ).st_size
