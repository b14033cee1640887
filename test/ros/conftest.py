"""Fixtures of the ROS 2 tests: rclpy, a colcon build of the repository, frames, a tiny
checkpoint. Helpers are in ros_harness.py."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ros_harness import CAMVID, ROOT, H, W, require


@pytest.fixture(scope="session")
def rclpy_module():
    """rclpy, with discovery kept to this machine's loopback (the variable reaches the node
    processes too); each node and its probe choose a domain of their own (fresh_domain)."""
    require("rclpy")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    import rclpy

    return rclpy


@pytest.fixture(scope="session")
def colcon_install(rclpy_module, tmp_path_factory) -> Path:
    """`colcon build` of the whole repository (accel_ros + accel_ros_msgs) into a temporary
    workspace, as the README's ROS section does in the checkout. Returns its install/."""
    colcon = Path(sys.executable).parent / "colcon"
    if not colcon.exists():
        require("colcon")  # skips or fails with the reason
    fix = subprocess.run([sys.executable, str(ROOT / "scripts" / "fix_ros_wheels.py")],
                         capture_output=True, text=True, timeout=300)
    assert fix.returncode == 0, fix.stdout + fix.stderr
    base = tmp_path_factory.mktemp("colcon")
    env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix, CMAKE_PREFIX_PATH=sys.prefix,
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    # As a user builds: with bytecode (otherwise setuptools warns that it skips compiling).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [str(colcon), "--log-base", str(base / "log"), "build",
               "--base-paths", str(ROOT), str(ROOT / "accel_ros_msgs"),
               "--build-base", str(base / "build"), "--install-base", str(base / "install")]
    result = subprocess.run(command, cwd=base, env=env, capture_output=True, text=True,
                            timeout=1200)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    assert "2 packages finished" in result.stdout, result.stdout[-3000:]
    return base / "install"


@pytest.fixture(scope="session")
def stats_class(colcon_install) -> type:
    """accel_ros_msgs.msg.SegmentationStats in this process. The loader of the built libraries
    is preloaded, since LD_LIBRARY_PATH cannot change in a running process."""
    package = colcon_install / "accel_ros_msgs"
    for kind in ("rosidl_generator_c", "rosidl_typesupport_c", "rosidl_typesupport_cpp",
                 "rosidl_typesupport_introspection_c", "rosidl_typesupport_fastrtps_c",
                 "rosidl_typesupport_fastrtps_cpp", "rosidl_typesupport_introspection_cpp",
                 "rosidl_generator_py"):
        ctypes.CDLL(str(package / "lib" / f"libaccel_ros_msgs__{kind}.so"), ctypes.RTLD_GLOBAL)
    site = package / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    sys.path.insert(0, str(site / "site-packages"))
    from accel_ros_msgs.msg import SegmentationStats

    return SegmentationStats


@pytest.fixture(scope="session")
def frames() -> list[np.ndarray]:
    """(H, W, 3) uint8 RGB: consecutive CamVid val frames, or a synthetic moving texture."""
    import cv2

    files = sorted((CAMVID / "val").glob("*.png"))[:40] if (CAMVID / "val").is_dir() else []
    if files:
        return [cv2.resize(cv2.imread(str(p))[:, :, ::-1], (W, H), interpolation=cv2.INTER_AREA)
                for p in files]
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (H, W + 120, 3), np.uint8), (0, 0), 3)
    return [np.ascontiguousarray(base[:, 3 * t : 3 * t + W]) for t in range(40)]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-weight ResNet-18/18 checkpoint with a narrow head: fast on a CPU, and not
    'none', so the node reports OK health once frames are good."""
    import torch

    from accel_ros.config import ModelConfig
    from accel_ros.model import build_model
    from accel_ros.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model(config))


