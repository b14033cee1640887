"""`accel-ros bench-fleet`: what the fleet runner costs and whether its outputs stay exact.

1. Bags: `--bags` one-camera bags of `--frames` synthetic driving frames at H x W, written once
   into the work folder.
2. Throughput, each set-up timed from start to the last output, `--repeats` rounds interleaved:
   `fleet` with 1 worker and with 2 workers (1 torch thread each, a private local Ray started
   by the run), and the same bags as two hand-started processes, each a shell-style loop of
   `accel-ros segment --threads 1` over half of them (what a user does without an engine).
3. Fault injection: `--fault-runs` runs of `fleet` with 2 workers in which one worker is killed
   (SIGKILL) at a random moment while it is writing a bag; every run is then checked: frames
   lost and duplicated in the output bags and in the scene index.
Prints a table, writes the JSON report and a bar plot.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import median, new_figure, save_figure


@dataclass
class FleetBenchSettings:
    work: Path  # bags and run folders (kept between runs: the bags are written once)
    bags: int = 8
    frames: int = 60
    height: int = 360
    width: int = 480
    checkpoint: str = "default"
    repeats: int = 1
    fault_runs: int = 10
    seed: int = 0


def make_bags(settings: FleetBenchSettings) -> list[Path]:
    """The input bags (written only when missing)."""
    from ..io import rosbag
    from .common import make_frames

    folder = settings.work / f"bags_{settings.bags}x{settings.frames}_{settings.height}x" \
        f"{settings.width}"
    bags = [folder / f"drive{index:02d}" for index in range(settings.bags)]
    for index, bag in enumerate(bags):
        if not bag.is_dir():
            images, _ = make_frames(settings.frames, settings.height, settings.width,
                                    seed=settings.seed + index)
            rosbag.write_camera_bag(bag, images)
    return bags


def time_fleet(settings: FleetBenchSettings, bags: list[Path], workers: int,
               tag: str) -> dict[str, Any]:
    from ..config import PipelineConfig
    from ..fleet.run import FleetSettings, run_fleet
    from ..fleet.worker import WorkerSpec

    out = settings.work / f"run_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    spec = WorkerSpec(settings.checkpoint, "lite", PipelineConfig(device="cpu").to_dict(), 1)
    started = time.perf_counter()
    summary = run_fleet(FleetSettings([str(b) for b in bags], out, spec, workers=workers,
                                      quiet=True))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "frames": summary.frames, "fps": summary.frames / seconds,
            "startup_seconds": summary.startup_seconds, "failed": len(summary.failed)}


def time_hand_processes(settings: FleetBenchSettings, bags: list[Path],
                        processes: int = 2) -> dict[str, Any]:
    """`processes` loops of `accel-ros segment --threads 1`, started together."""
    out = settings.work / "run_hand"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    loops = []
    for part in range(processes):
        commands = [[sys.executable, "-m", "accel_ros.cli.main", "segment", str(bag), "--out",
                     str(out / bag.name), "--threads", "1", "--quiet", "--checkpoint",
                     settings.checkpoint] for bag in bags[part::processes]]
        loops.append(commands)
    started = time.perf_counter()
    threads = [threading.Thread(target=_run_loop, args=(commands,)) for commands in loops]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    frames = settings.frames * len(bags)
    return {"seconds": seconds, "frames": frames, "fps": frames / seconds}


def _run_loop(commands: list[list[str]]) -> None:
    for command in commands:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def fault_run(settings: FleetBenchSettings, bags: list[Path], run: int,
              expected_s: float, rng: random.Random) -> dict[str, Any]:
    """One fleet run with a worker killed at a random moment; frames lost and duplicated."""
    from ..config import PipelineConfig
    from ..fleet.run import FleetSettings, run_fleet
    from ..fleet.worker import TMP_DIR, WorkerSpec

    out = settings.work / f"run_fault{run}"
    shutil.rmtree(out, ignore_errors=True)
    spec = WorkerSpec(settings.checkpoint, "lite", PipelineConfig(device="cpu").to_dict(), 1)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_fleet(
        FleetSettings([str(b) for b in bags], out, spec, workers=2, quiet=True))))
    delay = rng.uniform(0.05, 0.9) * expected_s
    thread.start()
    time.sleep(delay)
    killed = None
    while killed is None and thread.is_alive():
        attempts = sorted((out / TMP_DIR).glob("*.*.*")) if (out / TMP_DIR).is_dir() else []
        if attempts:
            killed = int(rng.choice(attempts).name.split(".")[1])
            _kill(killed)
        time.sleep(0.02)
    thread.join()
    summary = result["summary"]
    return {"run": run, "kill_after_s": round(delay, 2), "killed_pid": killed,
            "retries": summary.retries, "failed": len(summary.failed),
            "index_rows": summary.index_rows, **check_outputs(out, bags, settings.frames)}


def _kill(pid: int) -> None:
    # The worker may have finished that bag and renamed its attempt a moment ago.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def check_outputs(out: Path, bags: list[Path], frames: int) -> dict[str, int]:
    """Frames lost and duplicated in the output bags, and rows missing and duplicated in the
    scene index, against `frames` per bag."""
    import pyarrow.parquet as pq

    from ..fleet.index import INDEX_NAME
    from ..fleet.manifest import Manifest
    from ..io.bag_reader import open_bag

    manifest = Manifest.load(out)
    lost = duplicated = 0
    for bag in bags:
        entry = manifest.entries.get(str(bag.resolve()))
        stamps: list[int] = []
        if entry is not None and (out / entry.output).is_dir():
            stamps = [stamp for connection, stamp, _ in open_bag(out / entry.output).messages()
                      if connection.topic.endswith("/labels")]
        duplicated += len(stamps) - len(set(stamps))
        lost += frames - len(set(stamps))
    index = pq.read_table(out / INDEX_NAME).to_pandas()
    index_duplicated = int(index.duplicated(["bag", "topic", "stamp_ns"]).sum())
    return {"frames_lost": lost, "frames_duplicated": duplicated,
            "index_missing": frames * len(bags) - (len(index) - index_duplicated),
            "index_duplicated": index_duplicated}


def run_fleet_benchmark(settings: FleetBenchSettings) -> dict[str, Any]:
    bags = make_bags(settings)
    rows: dict[str, list[dict[str, Any]]] = {"fleet, 1 worker": [], "fleet, 2 workers": [],
                                             "2 hand-started segment processes": []}
    for _ in range(settings.repeats):
        rows["fleet, 1 worker"].append(time_fleet(settings, bags, 1, "w1"))
        rows["fleet, 2 workers"].append(time_fleet(settings, bags, 2, "w2"))
        rows["2 hand-started segment processes"].append(time_hand_processes(settings, bags))
    throughput = {name: {"seconds": median([r["seconds"] for r in runs]),
                         "fps": median([r["fps"] for r in runs]), "runs": runs}
                  for name, runs in rows.items()}
    faults = _fault_runs(settings, bags, throughput["fleet, 2 workers"]["seconds"])
    w1, w2 = throughput["fleet, 1 worker"], throughput["fleet, 2 workers"]
    hand = throughput["2 hand-started segment processes"]
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v
                     for k, v in asdict(settings).items()},
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "throughput": throughput,
        "speedup_2_workers": w2["fps"] / w1["fps"],
        "fleet_time_vs_hand": w2["seconds"] / hand["seconds"],
        "faults": faults,
        "fault_totals": {key: sum(run[key] for run in faults)
                         for key in ("frames_lost", "frames_duplicated", "index_missing",
                                     "index_duplicated")},
    }


def _fault_runs(settings: FleetBenchSettings, bags: list[Path],
                expected_s: float) -> list[dict[str, Any]]:
    if settings.fault_runs < 1:
        return []
    import ray

    rng = random.Random(settings.seed)
    # One private instance for all fault runs, started here on the main thread (the runs go
    # in a thread of their own so this one can kill workers); each run kills one of its
    # workers, and the runner replaces it.
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1", configure_logging=False)
    try:
        return [fault_run(settings, bags, run, expected_s, rng)
                for run in range(settings.fault_runs)]
    finally:
        if started_here:
            ray.shutdown()


def format_table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"fleet: {s['bags']} bags x {s['frames']} frames at {s['height']}x{s['width']}, "
             f"Accel, 1 torch thread per worker/process, median of {s['repeats']}",
             f"{'set-up':<36}{'seconds':>9}{'fps':>8}"]
    for name, row in report["throughput"].items():
        lines.append(f"{name:<36}{row['seconds']:>9.1f}{row['fps']:>8.2f}")
    lines.append(f"2 workers / 1 worker throughput: {report['speedup_2_workers']:.2f}x")
    lines.append(f"fleet (2 workers) time / 2 hand-started processes: "
                 f"{report['fleet_time_vs_hand']:.2f}x")
    if report["faults"]:
        totals = report["fault_totals"]
        lines.append(f"{len(report['faults'])} runs with a worker killed at a random moment: "
                     f"{totals['frames_lost']} frames lost, {totals['frames_duplicated']} "
                     f"duplicated in bags; index rows {totals['index_missing']} missing, "
                     f"{totals['index_duplicated']} duplicated")
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> Path:
    figure = new_figure(6.0, 3.2)
    axes = figure.add_subplot(1, 1, 1)
    names = list(report["throughput"])
    fps = [report["throughput"][name]["fps"] for name in names]
    axes.barh(names, fps, color=["#7aa6c2", "#2f6f9f", "#b0b0b0"])
    for y, value in enumerate(fps):
        axes.text(value, y, f" {value:.1f} fps", va="center", fontsize=8)
    axes.set_xlabel("frames per second (all bags, start to last output)")
    axes.invert_yaxis()
    s = report["settings"]
    return save_figure(figure, path, footer=f"{s['bags']} bags x {s['frames']} frames, "
                       f"{s['height']}x{s['width']}, 1 thread each, {report['created']}")
