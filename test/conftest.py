"""Shared fixtures: tiny models keep the CPU test suite fast. Every test runs with the
package's caches, ROS 2's logs and matplotlib's settings in a temporary folder, never in the
user's home."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig
from accel_ros.deploy.export import CACHE_ENV

# What tests (and the processes they start) would otherwise write under ~: the exported graphs
# (~/.cache/accel_ros), ROS 2 logs (~/.ros/log), matplotlib's font cache (~/.config), and
# whatever keeps to $HOME itself (ONNX Runtime's ~/.cache/Microsoft/DeveloperTools).
_HOME_WRITERS = {"HOME": "home", CACHE_ENV: "accel_ros_cache", "ROS_HOME": "ros",
                 "ROS_LOG_DIR": "ros/log", "MPLCONFIGDIR": "matplotlib", "XDG_CACHE_HOME": "cache"}
_TEMPORARY_HOME: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    """Point every writer of _HOME_WRITERS at a temporary folder, before any test module is
    imported (matplotlib reads its variable at import) and for every process tests start."""
    config.addinivalue_line("markers", "runtimes_installed: backend auto sees the runtimes "
                            "that are installed (otherwise none)")
    root = tempfile.mkdtemp(prefix="accel_ros_test_home_")
    _TEMPORARY_HOME.append(root)
    for variable, folder in _HOME_WRITERS.items():
        os.environ[variable] = os.path.join(root, folder)
        os.makedirs(os.environ[variable], exist_ok=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _TEMPORARY_HOME:
        shutil.rmtree(_TEMPORARY_HOME.pop(), ignore_errors=True)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _auto_backend_is_torch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
                           ) -> None:
    """`backend: auto` (the default) finds no runtime installed: tests of the pipeline compare
    with torch's own numbers and do not export graphs at every start. Tests of auto itself opt
    out with `@pytest.mark.runtimes_installed`."""
    if request.node.get_closest_marker("runtimes_installed") is None:
        monkeypatch.setattr("accel_ros.deploy.auto.installed_runtimes", frozenset)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread, restored afterwards: on a small shared CPU, several processes each
    spinning two OpenMP threads slow each other down ten-fold. Test files that train or
    evaluate opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_config() -> ModelConfig:
    """ResNet-18 reference and update, narrow head: seconds, not minutes, on a CPU."""
    return ModelConfig(
        num_classes=5, reference_backbone="resnet18", update_backbone="resnet18", head_channels=16
    )


@pytest.fixture
def moving_frames() -> list[np.ndarray]:
    """Six (64, 96, 3) uint8 frames of a smooth texture sliding 2 px right per frame."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(64, 160, 3), dtype=np.uint8)
    import cv2

    base = cv2.GaussianBlur(base, (0, 0), 2.0)
    return [np.ascontiguousarray(base[:, 40 - 2 * t : 136 - 2 * t]) for t in range(6)]


@pytest.fixture
def fake_camvid(tmp_path: Path) -> Path:
    """A SegNet-layout CamVid tree under tmp_path/camvid: train = two 4-frame sequences, val =
    one 6-frame sequence.

    Frames show a blurred texture sliding 2 px right per frame; labels: sky (0) on top, road
    (3) below, a car (8) box and a strip of void (11).
    """
    root, height, width = tmp_path / "camvid", 48, 64
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height, width + 40, 3), np.uint8), (0, 0), 2)
    splits = {"train": [("0001TP", 6690, 30, 4), ("0006R0", 930, 30, 4)],
              "val": [("0016E5", 7959, 2, 6)]}
    for split, sequences in splits.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir(parents=True)
        for sequence, first, step, count in sequences:
            for t in range(count):
                image = np.ascontiguousarray(texture[:, 20 - 2 * t : 20 - 2 * t + width])
                labels = np.full((height, width), 3, np.uint8)
                labels[: height // 3] = 0
                image[: height // 3] = (200, 150, 90)  # BGR on disk: a light-blue sky
                labels[height // 2 :, 10 + 2 * t : 30 + 2 * t] = 8
                labels[:, -3:] = 11
                name = f"{sequence}_{first + step * t:06d}.png"
                cv2.imwrite(str(root / split / name), image)
                cv2.imwrite(str(root / f"{split}annot" / name), labels)
    return root


class Countdown:
    """A deadline that passes after `checks` calls of `expired()` (no clock needed)."""

    def __init__(self, checks: int) -> None:
        self.checks = checks

    def expired(self) -> bool:
        self.checks -= 1
        return self.checks < 0

    def left(self) -> float:
        return 0.0 if self.checks < 0 else 1e9

    def within(self, seconds: float) -> Countdown:
        return self


@pytest.fixture
def countdown() -> type[Countdown]:
    """Deadlines that pass after a number of checks: `countdown(3)`."""
    return Countdown
