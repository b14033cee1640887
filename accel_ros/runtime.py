"""Process-wide settings that a command owns: how many CPU threads torch and OpenCV use.

torch's own default is one thread per physical core. Its OpenMP workers wait for each other
at every parallel region, so when other jobs keep the cores busy a worker that lost its core
holds up the rest: on a busy 2-core machine the default made `demo` 4x and `segment` up to 20x
slower than one thread. The default here counts only the CPUs the process may use (affinity
mask, cgroup quota) and leaves out those other processes keep busy (load average).

Only command-line entry points call `set_threads`: a library must not change the threads of
the process it runs in.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_TORCH_DEFAULT: list[int] = []  # torch's own choice (physical cores), read before the first change


def available_cpus() -> float:
    """CPUs this process may run on: its affinity mask (taskset, cpusets), capped by a cgroup
    CPU quota (a container's `--cpus`), which may be fractional."""
    try:
        count: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return min(count, quota) if quota is not None else count


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the process's cgroup may use per period, or None without a limit.
    cgroup v2: ``cpu.max`` ("max 100000" or "<quota> <period>"); v1: ``cpu/cpu.cfs_quota_us``
    over ``cpu.cfs_period_us`` (quota -1: none)."""
    try:
        fields = (root / "cpu.max").read_text(encoding="ascii").split()
        if len(fields) == 2 and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text(encoding="ascii"))
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text(encoding="ascii"))
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def default_threads(
    cpus: float | None = None, load: float | None = None, host_cpus: int | None = None
) -> int:
    """Threads for a command run without --threads: the CPUs the process may use (`cpus`,
    default `available_cpus`) less their share of what other processes keep busy, rounded,
    at least 1 and at most the whole CPUs available. `load` (default: the 1-minute load
    average) counts busy CPUs of the whole machine, `host_cpus` of them (default: all), and
    is taken as spread evenly over them."""
    cpus = available_cpus() if cpus is None else cpus
    host_cpus = host_cpus or os.cpu_count() or 1
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # no load average on this platform: assume idle
            load = 0.0
    busy = load * min(cpus / host_cpus, 1.0)
    whole = max(1, math.floor(cpus))
    return int(min(whole, max(1, math.floor(cpus - busy + 0.5))))


def set_threads(threads: int | None) -> int:
    """Apply --threads to torch and to OpenCV (DIS flow runs in OpenCV's pool) and return the
    count used. None: `default_threads`, unless OMP_NUM_THREADS is set (the user chose)."""
    import cv2
    import torch

    if not _TORCH_DEFAULT:
        _TORCH_DEFAULT.append(torch.get_num_threads())
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()
        threads = min(default_threads(), _TORCH_DEFAULT[0])
    elif threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    return threads


THREADS_HELP = ("torch/OpenCV CPU threads (default: the CPUs this process may use, less those "
                "other jobs keep busy; at least 1)")
