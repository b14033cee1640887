"""Default torch/OpenCV threads: from the CPUs the process may use, less the busy ones."""

from __future__ import annotations

import cv2
import pytest
import torch

from accel_ros import runtime


def test_default_threads_leave_busy_cpus_alone():
    assert runtime.default_threads(cpus=2, load=0.0, host_cpus=2) == 2
    assert runtime.default_threads(cpus=2, load=0.4, host_cpus=2) == 2
    assert runtime.default_threads(cpus=2, load=1.3, host_cpus=2) == 1  # one core busy
    assert runtime.default_threads(cpus=2, load=7.0, host_cpus=2) == 1  # never below one
    assert runtime.default_threads(cpus=16, load=3.2, host_cpus=16) == 13
    assert runtime.default_threads(cpus=1.5, load=0.0, host_cpus=2) == 1  # a quota of 1.5
    assert runtime.default_threads(cpus=4, load=0.0, host_cpus=4) == 4
    # 2 CPUs of a 64-CPU host whose load is 8: about a quarter of one of ours is busy.
    assert runtime.default_threads(cpus=2, load=8.0, host_cpus=64) == 2
    assert runtime.default_threads(cpus=2, load=48.0, host_cpus=64) == 1


def test_cgroup_quota_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")
    assert runtime.cgroup_cpu_quota(v2) == pytest.approx(1.5)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert runtime.cgroup_cpu_quota(v2) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert runtime.cgroup_cpu_quota(v1) == pytest.approx(2.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert runtime.cgroup_cpu_quota(v1) is None
    assert runtime.cgroup_cpu_quota(tmp_path / "none") is None


def test_available_cpus_follow_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: None)
    assert runtime.available_cpus() == 4
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: 2.5)
    assert runtime.available_cpus() == 2.5


def test_set_threads_default_explicit_and_environment(monkeypatch):
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
        monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
        monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.6, 1.0, 1.0))
        assert runtime.set_threads(None) == 1  # the other core is busy
        assert torch.get_num_threads() == 1 and cv2.getNumThreads() == 1
        assert runtime.set_threads(3) == 3 and torch.get_num_threads() == 3
        with pytest.raises(ValueError, match="--threads must be >= 1"):
            runtime.set_threads(0)
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user chose: left as it is
        assert runtime.set_threads(None) == 3
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
