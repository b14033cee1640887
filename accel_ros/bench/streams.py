"""`accel-ros bench-streams 1,2,4`: several cameras served by one node against one process per
camera, on the same cores.

For each stream count N, two set-ups run the same frames (360x480, Accel, keyframe interval 5
unless told otherwise; the network runs at exactly that size):

- **one node**: one child process loads ONE segmenter with `--threads T`, declares N streams
  (`configure_streams`, keyframes staggered across streams unless `--no-stagger`) and runs a
  closed loop: each round takes the next frame of every stream and calls `process_batch` once.
- **separate**: N child processes, launched together on the same cores, each loads its own
  segmenter and runs `process` in a closed loop on its own stream. `--separate-threads split`
  gives each max(1, T // N) torch threads (the fair split of the same cores); `full` gives each
  T threads (oversubscribed: what N default nodes get); `both` runs the two.

No child renders frames while timed: each stream's frames (a synthetic camera moving over a
different synthetic street, `data/motion.py`) are made once by the parent, stored as .npy and
loaded by the children before the clock starts. Per child: `--warmup` untimed rounds (default
one keyframe cycle), then a "ready" line; the parent waits until every child of the set-up is
ready and releases them together (one stdin line each), so separate processes really compete.
A child that has finished its timed frames keeps running untimed frames until the last one has
finished too, so every timed frame ran against all N competitors. The child is
bench/stream_worker.py.

Measured per set-up:
- per-frame latency = wall time of the call that produced the frame (a batch's frames all share
  their call's time); p50 / p99 over every frame of every stream;
- per-stream fps = timed frames / the child's timed span; total fps = the sum over children of
  their frames / their span (one child for the node);
- peak resident memory = `ru_maxrss` of each child after the model loaded and the loop ran
  (summed over the separate processes), and the resident set at the end (`VmRSS`); on CUDA
  also each child's peak device memory (`cuda_peak_mb`, max allocated), summed likewise;
- keyframes: per stream, and the largest number of keyframes in one batch (staggering keeps it
  at ceil(N / k) instead of N).

Separate processes get the same keyframe phases as the node's streams (process i runs
round(i * k / N) extra warm-up frames), so neither side wins by a lucky keyframe alignment.
OpenCV's thread count follows torch's in every child, and every child of every set-up is pinned
(sched_setaffinity) to the same T CPUs, so "the same cores" holds even on a bigger machine
(`--no-pin` lets the scheduler place them).

Comparisons (measured ratios, no verdicts): host memory of one node with N streams against one
single-stream node, and the same for device memory on CUDA; total throughput and p99 latency of
one node against N separate processes. `--repeats R` runs the whole plan R times, interleaved;
rows are medians over the runs and each ratio is the median of the per-run ratios (min-max
range given). A `Deadline` (the device check's time box) bounds every set-up; set-ups it cuts or
leaves out are named in the report's `skipped`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PipelineConfig
from .common import (
    NO_DEADLINE,
    Deadline,
    device_name,
    make_stream_frames,
    median,
    new_figure,
    save_figure,
)
from .stream_worker import MODULE, PREFIX

DEFAULT_SIZE = (360, 480)  # the shipped checkpoint's input size
DEFAULT_FRAMES = 40  # timed rounds per set-up (rounded up to whole keyframe cycles)
DEFAULT_CLIP_FRAMES = 8  # distinct frames per stream, played back and forth
# The pipeline settings a run shares with the node take the node's defaults.
PIPELINE_DEFAULTS = PipelineConfig()
SEPARATE_CHOICES = ("split", "full", "both")
# A set-up with less time than this left before the deadline is not started.
MIN_SETUP_S = 10.0


@dataclass
class StreamsSettings:
    """Everything a several-streams run depends on (the CLI's options, validated)."""

    streams: tuple[int, ...] = (1, 2, 4)
    height: int = DEFAULT_SIZE[0]
    width: int = DEFAULT_SIZE[1]
    frames: int = DEFAULT_FRAMES  # timed rounds = timed frames per stream
    warmup: int | None = None  # untimed rounds; None: one keyframe cycle
    threads: int = 1  # T: the node's torch threads (and the cores the set-ups share)
    device: str = "cpu"
    mode: str = PIPELINE_DEFAULTS.mode
    keyframe_interval: int = PIPELINE_DEFAULTS.keyframe_interval
    flow: str = PIPELINE_DEFAULTS.flow_method
    flow_scale: float = PIPELINE_DEFAULTS.flow_scale
    stagger: bool = PIPELINE_DEFAULTS.stagger_keyframes
    separate: str = "split"
    pin: bool = True  # every child on the same `threads` CPUs
    # "default" / a path: load that checkpoint (as the node does); a preset name: random
    # weights of that architecture. Overrides below make a random-weight variant of either.
    model: str = "default"
    reference_backbone: str | None = None
    update_backbone: str | None = None
    head_channels: int | None = None
    clip_frames: int = DEFAULT_CLIP_FRAMES
    seed: int = 0
    repeats: int = 1
    timeout_s: float = 1800.0  # per set-up: load, warm-up and the timed loop of every child

    def __post_init__(self) -> None:
        if not self.streams or min(self.streams) < 1:
            raise ValueError(f"--streams must list counts >= 1, got {self.streams}")
        self.streams = tuple(sorted(set(self.streams)))
        if min(self.height, self.width) < 32:
            raise ValueError(f"resolution must be at least 32x32, got {self.height}x{self.width}")
        if self.frames < 1 or self.repeats < 1 or self.threads < 1 or self.clip_frames < 2:
            raise ValueError(
                "--frames, --repeats and --threads must be >= 1 and --clip-frames >= 2"
            )
        if self.warmup is not None and self.warmup < 1:
            # The first round is a keyframe on every stream (empty caches): never time it.
            raise ValueError(f"--warmup must be >= 1 with several streams, got {self.warmup}")
        # The allowed values and ranges live in config.py: PipelineConfig checks them.
        PipelineConfig(mode=self.mode, keyframe_interval=self.keyframe_interval,
                       flow_method=self.flow, flow_scale=self.flow_scale)
        if self.separate not in SEPARATE_CHOICES:
            raise ValueError(f"--separate-threads must be one of {SEPARATE_CHOICES}")

    @property
    def rounds(self) -> int:
        """Timed rounds: `frames` rounded up to whole keyframe cycles, so every stream sees
        the same number of keyframes and the mean is the true per-frame average."""
        k = self.keyframe_interval
        return math.ceil(self.frames / k) * k

    @property
    def warmup_rounds(self) -> int:
        """Untimed rounds before the clock starts: one keyframe cycle by default, so every
        stream has run its keyframe and non-key frame paths and its schedule is steady."""
        return self.warmup if self.warmup is not None else max(2, self.keyframe_interval)

    def baselines(self) -> tuple[str, ...]:
        return ("split", "full") if self.separate == "both" else (self.separate,)

    def separate_threads(self, baseline: str, count: int) -> int:
        """Torch threads of each of `count` separate processes: the node's T shared out
        (`split`), or T each (`full`, oversubscribed)."""
        return max(1, self.threads // count) if baseline == "split" else self.threads

    def cpus(self) -> list[int] | None:
        """The CPUs every child is pinned to: the first T this process may use (all of them
        when T is more), or None when not pinning or the platform cannot."""
        if not self.pin or not hasattr(os, "sched_getaffinity"):
            return None
        return sorted(os.sched_getaffinity(0))[: self.threads]

    def stagger_offset(self, index: int, count: int) -> int:
        """Keyframe offset of stream `index` of `count`, as the pipeline staggers them."""
        if not self.stagger:
            return 0
        return round(index * self.keyframe_interval / count)

    def model_overrides(self) -> dict[str, Any]:
        """The architecture overrides given (ModelConfig fields)."""
        return {
            key: value
            for key, value in (
                ("reference_backbone", self.reference_backbone),
                ("update_backbone", self.update_backbone),
                ("head_channels", self.head_channels),
            )
            if value is not None
        }


# -- the children ------------------------------------------------------------------------------
class _Child:
    """One child process, its stderr file and a thread that turns its protocol lines into
    queue items (None at end of output)."""

    def __init__(self, spec: dict[str, Any], folder: Path, name: str) -> None:
        self.name = name
        spec_path = folder / f"{name}.json"
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.stderr_path = folder / f"{name}.stderr"
        self._stderr = open(self.stderr_path, "w", encoding="utf-8")  # noqa: SIM115
        root = str(Path(__file__).resolve().parents[2])  # the folder holding accel_ros/
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.process = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--worker", str(spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, env=env,
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith(PREFIX):
                self.events.put(json.loads(line[len(PREFIX):]))
        self.events.put(None)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def expect(self, event: str, deadline: float) -> dict[str, Any]:
        """The next protocol message, which must be `event`; raises with the child's stderr if
        it died or the deadline passed."""
        try:
            message = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"bench child {self.name} sent no {event!r} in time") from None
        if message is None or message.get("event") != event:
            self.process.wait(timeout=30)
            raise RuntimeError(
                f"bench child {self.name} exited with code {self.process.returncode} before "
                f"{event!r}; its stderr ends:\n{self.stderr_tail()}"
            )
        return message

    def stderr_tail(self, lines: int = 25) -> str:
        self._stderr.flush()
        text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()  # only ever our own child
        self.process.wait()
        self._stderr.close()


def run_children(
    specs: list[dict[str, Any]], folder: Path, timeout_s: float
) -> tuple[list[dict[str, Any]], float]:
    """Start one child per spec at once, release them together once all are ready, stop them
    together once all have finished their timed rounds. Returns their results and the spread
    of their start times in ms (how together they really started). Raises TimeoutError (the
    children killed) when `timeout_s` passes first."""
    deadline = time.monotonic() + timeout_s
    children: list[_Child] = []
    try:
        for number, spec in enumerate(specs):
            children.append(_Child(spec, folder, f"child{number}"))
        for child in children:
            child.expect("ready", deadline)
        for child in children:
            child.send("go")
        for child in children:
            child.expect("done", deadline)
        for child in children:
            child.send("stop")
        results = [child.expect("result", deadline) for child in children]
        for child in children:
            child.process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for child in children:
            child.close()
    begins = [r["begin"] for r in results]
    return results, (max(begins) - min(begins)) * 1000.0


# -- numbers -----------------------------------------------------------------------------------
def summarise(results: list[dict[str, Any]], rounds: int) -> dict[str, Any]:
    """One set-up's numbers from its children's results (see the module docstring)."""
    frame_latencies: list[float] = []
    per_stream_fps: list[float] = []
    total_fps = 0.0
    keyframes_per_stream: list[int] = []
    max_in_batch = 0
    for result in results:
        span = result["end"] - result["begin"]
        streams = len(result["streams"])
        if len(result["latency_ms"]) != rounds:
            raise RuntimeError(f"a child timed {len(result['latency_ms'])} rounds, not {rounds}")
        for latency in result["latency_ms"]:
            frame_latencies.extend([latency] * streams)  # every frame of a batch waited for it
        fps = rounds / span if span > 0 else 0.0
        per_stream_fps.extend([fps] * streams)
        total_fps += fps * streams
        flags = np.asarray(result["keyframes"], dtype=bool)  # (rounds, streams)
        keyframes_per_stream.extend(int(v) for v in flags.sum(axis=0))
        max_in_batch = max(max_in_batch, int(flags.sum(axis=1).max()))
    values = np.asarray(frame_latencies)
    return {
        "frames_per_stream": rounds,
        "frames_total": len(frame_latencies),
        "per_stream_fps": float(np.mean(per_stream_fps)),
        "per_stream_fps_min": float(np.min(per_stream_fps)),
        "total_fps": total_fps,
        "latency_ms": {
            "mean": float(values.mean()),
            "p50": float(np.percentile(values, 50)),
            "p99": float(np.percentile(values, 99)),
            "max": float(values.max()),
        },
        **_memory(results),
        "keyframes_per_stream": keyframes_per_stream,
        "max_keyframes_per_batch": max_in_batch,
        "batch_sizes": sorted({b for r in results for b in r["batch_sizes"]}),
        "timed_span_s": float(max(r["end"] for r in results) - min(r["begin"] for r in results)),
        "padding_rounds": [r["padding_rounds"] for r in results],
        "load_s": float(max(r["load_s"] for r in results)),
        "threads_per_process": results[0]["threads"],
        "cpus": sorted({c for r in results for c in (r.get("cpus") or [])}) or None,
        "notes": sorted({n for r in results for n in r["fast_path_notes"]}),
    }


def _memory(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Host and device memory of a set-up, summed over its processes."""
    peaks = [r["peak_rss_mb"] for r in results]
    ends = [r["rss_end_mb"] for r in results if r["rss_end_mb"] is not None]
    loaded = [r["rss_loaded_mb"] for r in results if r["rss_loaded_mb"] is not None]
    cuda = [r["cuda_peak_mb"] for r in results if r["cuda_peak_mb"] is not None]
    return {
        "rss_mb": float(sum(peaks)),
        "rss_mb_per_process": peaks,
        "rss_end_mb": float(sum(ends)) if ends else None,
        # Resident after load, before any frame: what the loop's activations add is the rest.
        "rss_loaded_mb": float(sum(loaded)) if loaded else None,
        "cuda_peak_mb": float(sum(cuda)) if cuda else None,
        "frames_mb": float(sum(r["frames_mb"] for r in results)),
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repeats of a set-up: medians of the rates, latencies and memory;
    `runs` keeps each repeat's total fps, p99, RSS and device memory."""
    row = dict(runs[-1])
    for key in ("per_stream_fps", "per_stream_fps_min", "total_fps", "rss_mb", "timed_span_s"):
        row[key] = median([r[key] for r in runs])
    for key in ("rss_end_mb", "rss_loaded_mb", "cuda_peak_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = median(values) if values else None
    row["latency_ms"] = {
        key: median([r["latency_ms"][key] for r in runs]) for key in runs[0]["latency_ms"]
    }
    row["max_keyframes_per_batch"] = max(r["max_keyframes_per_batch"] for r in runs)
    row["runs"] = {
        "total_fps": [r["total_fps"] for r in runs],
        "p99_ms": [r["latency_ms"]["p99"] for r in runs],
        "rss_mb": [r["rss_mb"] for r in runs],
        "cuda_peak_mb": [r["cuda_peak_mb"] for r in runs],
        "start_spread_ms": [r["start_spread_ms"] for r in runs],
    }
    row["repeats"] = len(runs)
    row.pop("start_spread_ms", None)
    return row


def _ratio(numerators: list[float | None], denominators: list[float | None]) -> dict[str, Any]:
    """Median and min-max of per-run ratios (runs paired by repeat; None when the two sides
    ran a different number of repeats, as after a deadline, or lack the value)."""
    if len(numerators) != len(denominators):
        return {"ratio": None, "range": None}
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True)
              if a is not None and b]
    if not ratios:
        return {"ratio": None, "range": None}
    return {"ratio": median(ratios), "range": [min(ratios), max(ratios)]}


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured ratios for every N: memory of the node with N streams against the node with
    one (host RSS always; device memory where the rows have it, i.e. on CUDA), and the node's
    throughput and p99 against N separate processes of each baseline."""
    node = {r["streams"]: r for r in rows if r["setup"] == "one_node"}
    comparisons: list[dict[str, Any]] = []
    if 1 in node:
        for count, row in sorted(node.items()):
            if count > 1:
                comparisons.extend(_memory_ratios(count, row, node[1]))
    for row in rows:
        if row["setup"] != "separate" or row["streams"] not in node:
            continue
        mine = node[row["streams"]]
        throughput = _ratio(mine["runs"]["total_fps"], row["runs"]["total_fps"])
        p99 = _ratio(mine["runs"]["p99_ms"], row["runs"]["p99_ms"])
        comparisons.append({
            "name": (
                f"throughput: one node / {row['streams']} separate processes "
                f"x {row['threads_per_process']} threads ({row['baseline']})"
            ),
            "kind": "throughput", "streams": row["streams"], "baseline": row["baseline"],
            **throughput, "p99_ratio": p99["ratio"], "p99_range": p99["range"],
            "p99_no_worse": p99["ratio"] is not None and p99["ratio"] <= 1.0,
        })
    return comparisons


def _memory_ratios(
    count: int, row: dict[str, Any], single: dict[str, Any]
) -> list[dict[str, Any]]:
    ratios = [{
        "name": f"memory: one node with {count} streams / one node with 1 stream (host RSS)",
        "kind": "memory", "streams": count,
        **_ratio(row["runs"]["rss_mb"], single["runs"]["rss_mb"]),
    }]
    device = _ratio(row["runs"].get("cuda_peak_mb", []), single["runs"].get("cuda_peak_mb", []))
    if device["ratio"] is not None:
        # On a GPU the activations live in device memory: host RSS alone would miss them.
        ratios.append({
            "name": f"device memory: one node with {count} streams / one node with 1 stream "
                    "(CUDA max allocated)",
            "kind": "device_memory", "streams": count, **device,
        })
    return ratios


# -- running -----------------------------------------------------------------------------------
def model_source(settings: StreamsSettings) -> tuple[str | None, dict[str, Any], str]:
    """(checkpoint path or None, ModelConfig as a dict, description) through `load_model`.
    A checkpoint is loaded by the children only when no architecture override asks for a
    variant of it (then they build random weights of the variant)."""
    from ..model import load_model

    overrides = settings.model_overrides()
    loaded = load_model(settings.model, **overrides)
    text = loaded.description
    if overrides:
        text = f"{settings.model} with {overrides}, {text}"
    elif loaded.path is None:
        text = f"preset {settings.model}, {text}"
    path = None if loaded.path is None else str(loaded.path)
    return path, loaded.model.config.to_dict(), text


Setup = tuple[int, str, str | None]


def _plan(settings: StreamsSettings) -> list[Setup]:
    """(N, set-up, baseline) in the order they run: per N, the node then its baselines."""
    plan: list[Setup] = []
    for count in settings.streams:
        plan.append((count, "one_node", None))
        plan.extend((count, "separate", baseline) for baseline in settings.baselines())
    return plan


def _setup_name(setup: Setup) -> str:
    count, kind, baseline = setup
    return f"N={count} " + ("one node" if kind == "one_node" else f"separate ({baseline})")


def _specs(
    settings: StreamsSettings, setup: Setup, frame_files: list[Path],
    checkpoint: str | None, config: dict[str, Any], device: str,
) -> list[dict[str, Any]]:
    count, kind, baseline = setup
    pipeline = PipelineConfig(
        mode=settings.mode, keyframe_interval=settings.keyframe_interval, device=device,
        flow_method=settings.flow, flow_scale=settings.flow_scale,
        stagger_keyframes=settings.stagger, input_size=(settings.height, settings.width),
    ).to_dict()
    common = {
        "pipeline": pipeline, "checkpoint": checkpoint, "model_config": config,
        "warmup": settings.warmup_rounds, "rounds": settings.rounds, "cpus": settings.cpus(),
    }
    names = [f"cam{i}" for i in range(count)]
    if kind == "one_node":
        return [{**common, "api": "batch", "streams": names, "threads": settings.threads,
                 "frames": [str(f) for f in frame_files[:count]]}]
    assert baseline is not None
    return [
        {**common, "api": "single", "streams": [names[i]],
         "threads": settings.separate_threads(baseline, count),
         "frames": [str(frame_files[i])],
         # The same keyframe phase as stream i of the node.
         "extra_warmup": settings.stagger_offset(i, count)}
        for i in range(count)
    ]


def _write_frames(settings: StreamsSettings, folder: Path) -> tuple[list[Path], str]:
    clips, source = make_stream_frames(
        max(settings.streams), settings.clip_frames, settings.height, settings.width,
        settings.seed,
    )
    frame_files = []
    for index, clip in enumerate(clips):
        path = folder / f"stream{index}.npy"
        np.save(path, clip)
        frame_files.append(path)
    return frame_files, source


@dataclass
class _Run:
    """What every set-up of one run shares."""

    settings: StreamsSettings
    folder: Path
    frame_files: list[Path]
    checkpoint: str | None
    config: dict[str, Any]
    device: str
    log: Callable[[str], None]
    deadline: Deadline


def _run_setup(run: _Run, setup: Setup, label: str) -> dict[str, Any] | str:
    """One set-up's summary, or why it did not finish (the deadline)."""
    left = run.deadline.left()
    if left < MIN_SETUP_S:
        return f"{left:.0f} s left before the deadline"
    specs = _specs(run.settings, setup, run.frame_files, run.checkpoint, run.config, run.device)
    try:
        results, spread = run_children(specs, run.folder, min(run.settings.timeout_s, left))
    except TimeoutError as error:
        return f"stopped at the time limit ({error})"
    summary = summarise(results, run.settings.rounds)
    summary["start_spread_ms"] = spread
    count, kind, baseline = setup
    shown = "one node" if kind == "one_node" else (
        f"{count} separate x {summary['threads_per_process']} threads ({baseline})"
    )
    run.log(f"[{label}] N={count} {shown}: {summary['total_fps']:.2f} fps total, "
            f"p99 {summary['latency_ms']['p99']:.1f} ms, RSS {summary['rss_mb']:.0f} MB")
    return summary


def _run_plan(run: _Run, plan: list[Setup]) -> tuple[list[list[dict[str, Any]]], list[str]]:
    """Every set-up `repeats` times, interleaved, until the deadline. Returns the summaries
    per set-up (plan order) and the names of what did not run or finish."""
    repeats = run.settings.repeats
    measured: list[list[dict[str, Any]]] = [[] for _ in plan]
    skipped: list[str] = []
    for repeat in range(repeats):
        for number, setup in enumerate(plan):
            label = f"run {repeat + 1}/{repeats}, {number + 1}/{len(plan)}"
            outcome = _run_setup(run, setup, label)
            if isinstance(outcome, str):
                skipped.append(f"run {repeat + 1}/{repeats}: {_setup_name(setup)} ({outcome})")
            else:
                measured[number].append(outcome)
    return measured, skipped


def run_streams_benchmark(
    settings: StreamsSettings, log: Callable[[str], None] | None = None,
    workdir: Path | None = None, deadline: Deadline = NO_DEADLINE,
) -> dict[str, Any]:
    """Measure every (N, set-up) of the plan, `settings.repeats` times interleaved, until
    `deadline`; returns the JSON-ready report (`skipped` names what did not run)."""
    import torch

    from ..stream import resolve_device

    device = resolve_device(settings.device)
    checkpoint, config, model_text = model_source(settings)
    plan = _plan(settings)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="accel-bench-streams-")))
        folder.mkdir(parents=True, exist_ok=True)
        frame_files, source = _write_frames(settings, folder)
        run = _Run(settings, folder, frame_files, checkpoint, config, str(device),
                   log or (lambda message: None), deadline)
        measured, skipped = _run_plan(run, plan)
    rows = [
        {"streams": count, "setup": kind, "baseline": baseline,
         "processes": 1 if kind == "one_node" else count, **aggregate(runs)}
        for (count, kind, baseline), runs in zip(plan, measured, strict=True) if runs
    ]
    meta = {
        **_meta(settings, device, torch.__version__),
        "model": model_text,
        "frame_source": source,
        "load_average_before": list(load_before) if load_before else None,
        "load_average_after": list(os.getloadavg()) if load_before else None,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return {"meta": meta, "rows": rows, "comparisons": compare(rows), "skipped": skipped}


def _meta(settings: StreamsSettings, device: Any, torch_version: str) -> dict[str, Any]:
    return {
        "kind": "streams",
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch_version,
        "cpu_count": os.cpu_count(),
        "threads": settings.threads,
        "thread_split": {
            baseline: {str(n): settings.separate_threads(baseline, n) for n in settings.streams}
            for baseline in settings.baselines()
        },
        "cpus": settings.cpus(),
        # The size every set-up ran at: frames and network input alike.
        "height": settings.height,
        "width": settings.width,
        "mode": settings.mode,
        "keyframe_interval": settings.keyframe_interval,
        "stagger_keyframes": settings.stagger,
        "frames_per_stream": settings.rounds,
        "warmup_rounds": settings.warmup_rounds,
        "repeats": settings.repeats,
        "flow": settings.flow,
        "flow_scale": settings.flow_scale,
        "memory": "peak RSS (ru_maxrss) of each child after load and loop, summed; on CUDA "
                  "also CUDA max allocated per child, summed",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# -- output ------------------------------------------------------------------------------------
def _setup_label(row: dict[str, Any]) -> str:
    if row["setup"] == "one_node":
        return "one node"
    return f"separate ({row['baseline']})"


def format_table(report: dict[str, Any]) -> str:
    """Fixed-width text table, one row per (N, set-up), then the comparisons."""
    meta = report["meta"]
    split = "; ".join(
        f"{baseline}: " + ", ".join(f"N={n}: {t}" for n, t in per_n.items())
        for baseline, per_n in meta["thread_split"].items()
    )
    header = (
        f"{'N':>2} {'set-up':<18} {'procs x thr':>11} {'fps/stream':>10} {'fps total':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'RSS MB':>8} {'MB/proc':>8} {'max kf/batch':>12}"
    )
    lines = [
        f"accel-ros bench-streams: {meta['height']}x{meta['width']} on {meta['device']} "
        f"({meta['device_name']}), mode {meta['mode']}, k={meta['keyframe_interval']}, "
        f"keyframes {'staggered' if meta['stagger_keyframes'] else 'not staggered'}, "
        f"{meta['frames_per_stream']} timed frames per stream, median of {meta['repeats']} "
        "run(s)",
        f"one node: {meta['threads']} torch threads; separate processes' threads each ({split}); "
        + (f"every process on CPUs {meta['cpus']}" if meta["cpus"] else "processes not pinned"),
        f"model: {meta['model']}",
        "latency = wall time of the call that produced the frame; RSS = peak resident memory "
        "(ru_maxrss), summed over processes",
        header,
        "-" * len(header),
    ]
    lines.extend(_table_row(row) for row in report["rows"])
    spreads = [s for row in report["rows"] if row["processes"] > 1
               for s in row["runs"]["start_spread_ms"]]
    if spreads:
        lines.append(f"separate processes started their timed loops within {max(spreads):.1f} ms "
                     "of each other")
    lines.extend(_comparison_line(item) for item in report["comparisons"]
                 if item["ratio"] is not None)
    notes = sorted({n for row in report["rows"] for n in row["notes"]})
    lines.extend(f"note: {note}" for note in notes)
    lines.extend(f"not run: {name}" for name in report.get("skipped", []))
    load = meta.get("load_average_before")
    if load:
        lines.append(
            f"load average before the run {load[0]:.2f} (1 min) on {meta['cpu_count']} CPUs: "
            "timings are only clean on an otherwise idle machine"
        )
    return "\n".join(lines)


def _table_row(row: dict[str, Any]) -> str:
    per_process = "" if row["processes"] == 1 else f"{np.mean(row['rss_mb_per_process']):.0f}"
    lat = row["latency_ms"]
    return (
        f"{row['streams']:>2} {_setup_label(row):<18} "
        f"{row['processes']:>4} x {row['threads_per_process']:<4} "
        f"{row['per_stream_fps']:10.2f} {row['total_fps']:9.2f} {lat['p50']:8.1f} "
        f"{lat['p99']:8.1f} {row['rss_mb']:8.0f} {per_process:>8} "
        f"{row['max_keyframes_per_batch'] if row['setup'] == 'one_node' else '-':>12}"
    )


def _comparison_line(item: dict[str, Any]) -> str:
    low, high = item["range"]
    text = f"{item['name']}: {item['ratio']:.2f} (runs {low:.2f}-{high:.2f})"
    if item["kind"] == "throughput" and item["p99_ratio"] is not None:
        text += (f"; p99 one node / separate {item['p99_ratio']:.2f}"
                 f" ({'no worse' if item['p99_no_worse'] else 'worse'})")
    return text


def draw_streams(fps_axes: Any, p99_axes: Any, report: dict[str, Any]) -> None:
    """Total throughput and p99 latency against the number of streams, per set-up."""
    from matplotlib.ticker import MaxNLocator

    setups: dict[str, list[dict[str, Any]]] = {}
    for row in report["rows"]:
        setups.setdefault(_setup_label(row), []).append(row)
    for number, (label, rows) in enumerate(setups.items()):
        rows = sorted(rows, key=lambda r: r["streams"])
        counts = [r["streams"] for r in rows]
        style = {"marker": "o", "label": label, "color": f"C{number % 10}"}
        fps_axes.plot(counts, [r["total_fps"] for r in rows], **style)
        p99_axes.plot(counts, [r["latency_ms"]["p99"] for r in rows], **style)
    # Oversubscribed processes reach seconds: a log scale keeps the others readable.
    p99_axes.set_yscale("log")
    for axes, title in ((fps_axes, "total throughput (frames/s)"),
                        (p99_axes, "p99 latency (ms, log scale)")):
        axes.set_xlabel("streams (cameras)")
        axes.set_title(title)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if report["rows"]:
            axes.legend(fontsize=8)


def plot_footer(report: dict[str, Any]) -> str:
    meta = report["meta"]
    return (f"{meta['height']}x{meta['width']}, {meta['device_name']} ({meta['device']}), "
            f"{meta['threads']} threads, {meta['mode']} k={meta['keyframe_interval']}")


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: total throughput and p99 latency against the number of streams, per set-up."""
    figure = new_figure(9.0, 4.0)
    draw_streams(figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2), report)
    return save_figure(figure, path, plot_footer(report))
