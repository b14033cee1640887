"""`accel-ros bench --streams 1,2,4`: several cameras served by one node against one process
per camera, on the same cores.

For each stream count N, two set-ups run the same frames (360x480, Accel, keyframe interval 5
unless told otherwise):

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
finished too, so every timed frame ran against all N competitors.

Measured per set-up:
- per-frame latency = wall time of the call that produced the frame (a batch's frames all share
  their call's time); p50 / p99 over every frame of every stream;
- per-stream fps = timed frames / the child's timed span; total fps = the sum over children of
  their frames / their span (one child for the node);
- peak resident memory = `ru_maxrss` of each child after the model loaded and the loop ran
  (summed over the separate processes), and the resident set at the end (`VmRSS`);
- keyframes: per stream, and the largest number of keyframes in one batch (staggering keeps it
  at ceil(N / k) instead of N).

Separate processes get the same keyframe phases as the node's streams (process i runs
round(i * k / N) extra warm-up frames), so neither side wins by a lucky keyframe alignment.
OpenCV's thread count follows torch's in every child, and every child of every set-up is pinned
(sched_setaffinity) to the same T CPUs, so "the same cores" holds even on a bigger machine
(`--no-pin` lets the scheduler place them).

Targets (issue 12): resident memory of one node with N streams <= 1.3x one single-stream node;
total throughput of one node >= 1.2x N separate processes, with p99 latency no worse.
`--repeats R` runs the whole plan R times, interleaved; rows are medians over the runs and each
ratio is the median of the per-run ratios (min-max range given).

Run as a module with `--worker SPEC.json` this file is the child process (internal).
"""

from __future__ import annotations

import argparse
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..report import write_json

MODULE = "accel_ros.bench.streams"
# Lines of the parent/child protocol on the child's stdout start with this, so stray prints
# (library warnings) cannot be mistaken for them.
PREFIX = "@accel-bench-streams "
DEFAULT_SIZE = (360, 480)  # the shipped checkpoint's input size
DEFAULT_FRAMES = 40  # timed rounds per set-up (rounded up to whole keyframe cycles)
DEFAULT_CLIP_FRAMES = 8  # distinct frames per stream, played back and forth
SEPARATE_CHOICES = ("split", "full", "both")
MEMORY_TARGET = 1.3  # RSS(one node, N streams) / RSS(one node, 1 stream) <=
THROUGHPUT_TARGET = 1.2  # total fps(one node, N) / total fps(N separate processes) >=
# Rendering cost grows with the pixel count; larger frames are rendered at this many pixels and
# resized (the motion, and so DIS's work, scales with the frame).
MAX_RENDER_PIXELS = 720 * 1280


@dataclass
class StreamsSettings:
    """Everything a `--streams` run depends on (the CLI's options, validated)."""

    streams: tuple[int, ...] = (1, 2, 4)
    height: int = DEFAULT_SIZE[0]
    width: int = DEFAULT_SIZE[1]
    frames: int = DEFAULT_FRAMES  # timed rounds = timed frames per stream
    warmup: int | None = None  # untimed rounds; None: one keyframe cycle
    threads: int = 1  # T: the node's torch threads (and the cores the set-ups share)
    device: str = "cpu"
    mode: str = "accel"
    keyframe_interval: int = 5
    flow: str = "dis"
    flow_scale: float = 0.5
    stagger: bool = True
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
        from ..config import FLOW_METHODS, MODES

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
            raise ValueError(f"--warmup must be >= 1 in --streams mode, got {self.warmup}")
        if self.keyframe_interval < 1:
            raise ValueError(f"keyframe interval must be >= 1, got {self.keyframe_interval}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if self.flow not in FLOW_METHODS:
            raise ValueError(f"flow {self.flow!r} is not one of {FLOW_METHODS}")
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


# -- frames ------------------------------------------------------------------------------------
def make_stream_frames(
    count: int, frames: int, height: int, width: int, seed: int = 0
) -> tuple[list[np.ndarray], str]:
    """`count` streams of `frames` (H, W, 3) uint8 frames each, as (frames, H, W, 3) arrays,
    and a description. Stream i is a synthetic camera moving (zoom, pan, roll) over the first
    frame of synthetic street seed + i: different content and different motion per stream,
    with real motion for the flow estimator."""
    import cv2

    from ..data.motion import make_motion_clip, random_motion
    from ..data.synthetic import generate_clip

    scale = min(1.0, math.sqrt(MAX_RENDER_PIXELS / (height * width)))
    render = (max(32, round(height * scale)), max(32, round(width * scale)))
    streams = []
    for index in range(count):
        base = generate_clip(1, render[0], render[1], seed=seed + index)[0]
        image, labels = base.image, base.labels
        if render != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        motion = random_motion((height, width), np.random.default_rng(seed + index))
        clip = make_motion_clip(image, labels, frames, motion)
        streams.append(np.stack(clip.frames))
    source = (
        f"synthetic camera motion (data/motion.py) over synthetic street seeds "
        f"{seed}..{seed + count - 1} rendered at {render[0]}x{render[1]}, {frames} frames per "
        "stream played back and forth"
    )
    return streams, source


def ping_pong_index(length: int, index: int) -> int:
    """Index into a clip of `length` frames played forwards then backwards, endlessly."""
    if length < 2:
        return 0
    period = 2 * length - 2
    index %= period
    return index if index < length else period - index


# -- the child process -------------------------------------------------------------------------
def _emit(event: str, **data: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **data}), flush=True)


def _status_mb(key: str) -> float | None:
    """A /proc/self/status memory line (VmRSS, VmHWM) in MB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (2**20 if sys.platform == "darwin" else 1024.0)


class _Control:
    """The parent's commands on stdin ("go", "stop"), read by a thread so the timed loop only
    checks an Event between frames. End of input (the parent died) releases both."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.stop = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            command = line.strip()
            if command == "go":
                self.go.set()
            elif command == "stop":
                self.stop.set()
        self.go.set()
        self.stop.set()


def _build_segmenter(spec: dict[str, Any]) -> Any:
    from ..config import ModelConfig, PipelineConfig
    from ..model import AccelNet, AccelSegmenter
    from ..model.pipeline import build_segmenter

    pipeline = PipelineConfig.from_dict(spec["pipeline"])
    if spec["checkpoint"] is not None:
        return build_segmenter(pipeline=pipeline, checkpoint=spec["checkpoint"])
    model = AccelNet(ModelConfig.from_dict(spec["model_config"])).eval()
    return AccelSegmenter(model, pipeline)


def worker(spec: dict[str, Any]) -> int:
    """One child: load, warm up, report ready, wait for "go", time the loop, report done, keep
    running untimed rounds until "stop", report the result. `spec["api"]` is "batch" (one
    node: every stream per `process_batch` call) or "single" (one stream, `process`)."""
    if spec.get("cpus"):
        # Before torch loads: its OpenMP pool then starts on these CPUs.
        os.sched_setaffinity(0, spec["cpus"])
    import cv2
    import torch

    from ..model.pipeline import StreamFrame

    threads = int(spec["threads"])
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)  # DIS flow runs in OpenCV's pool: keep it on the same cores
    control = _Control()
    started = time.perf_counter()
    names: list[str] = list(spec["streams"])
    clips = [np.load(path) for path in spec["frames"]]
    segmenter = _build_segmenter(spec)
    batched = spec["api"] == "batch"
    if batched:
        segmenter.configure_streams(names)
    load_s = time.perf_counter() - started
    rss_loaded = _status_mb("VmRSS")
    step = 0
    frame_time = 1.0 / 30.0  # stamps of a 30 fps camera: no time-gap resets

    def next_round() -> list[Any]:
        """The next frame of every stream, ready for the call (outside the timed part)."""
        nonlocal step
        frames = [clip[ping_pong_index(len(clip), step)] for clip in clips]
        stamp = step * frame_time
        step += 1
        return [StreamFrame(name, frame, stamp) for name, frame in zip(names, frames,
                                                                        strict=True)]

    def run(batch: list[Any]) -> list[Any]:
        if batched:
            return segmenter.process_batch(batch)
        return [segmenter.process(batch[0].frame, batch[0].stamp)]

    def run_round() -> list[Any]:
        return run(next_round())

    for _ in range(int(spec["warmup"]) + int(spec.get("extra_warmup", 0))):
        run_round()
    _emit("ready", load_s=load_s, rss_loaded_mb=rss_loaded)
    control.go.wait()

    latencies: list[float] = []
    keyframes: list[list[bool]] = []
    batch_sizes: list[int] = []
    begin = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    for _ in range(int(spec["rounds"])):
        batch = next_round()
        call_start = time.perf_counter()
        results = run(batch)
        latencies.append((time.perf_counter() - call_start) * 1000.0)
        got = [getattr(r, "stream", names[0]) for r in results]
        if batched and got != names:
            raise RuntimeError(f"process_batch returned streams {got}, expected {names}")
        keyframes.append([bool(r.is_keyframe) for r in results])
        batch_sizes.append(int(getattr(results[0], "batch_size", 1)))
    end = time.monotonic()
    _emit("done")
    padding = 0
    while not control.stop.is_set():  # keep the others' competition until all are done
        run_round()
        padding += 1
    cuda_peak = None
    if segmenter.device.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(segmenter.device) / 2**20
    segmenter.close()
    _emit(
        "result",
        streams=names,
        threads=torch.get_num_threads(),
        cpus=sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        begin=begin,
        end=end,
        latency_ms=latencies,
        keyframes=keyframes,
        batch_sizes=batch_sizes,
        padding_rounds=padding,
        load_s=load_s,
        peak_rss_mb=_peak_rss_mb(),
        rss_loaded_mb=rss_loaded,
        rss_end_mb=_status_mb("VmRSS"),
        cuda_peak_mb=cuda_peak,
        frames_mb=sum(clip.nbytes for clip in clips) / 2**20,
        fast_path_notes=list(segmenter.fast_path_notes),
    )
    return 0


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--worker", type=Path, required=True, help="spec JSON (internal)")
    args = parser.parse_args(argv)
    return worker(json.loads(args.worker.read_text(encoding="utf-8")))


# -- the parent --------------------------------------------------------------------------------
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
    of their start times in ms (how together they really started)."""
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
    peaks = [r["peak_rss_mb"] for r in results]
    ends = [r["rss_end_mb"] for r in results if r["rss_end_mb"] is not None]
    loaded = [r["rss_loaded_mb"] for r in results if r["rss_loaded_mb"] is not None]
    cuda = [r["cuda_peak_mb"] for r in results if r["cuda_peak_mb"] is not None]
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
        "rss_mb": float(sum(peaks)),
        "rss_mb_per_process": peaks,
        "rss_end_mb": float(sum(ends)) if ends else None,
        # Resident after load, before any frame: what the loop's activations add is the rest.
        "rss_loaded_mb": float(sum(loaded)) if loaded else None,
        "cuda_peak_mb": float(sum(cuda)) if cuda else None,
        "frames_mb": float(sum(r["frames_mb"] for r in results)),
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


def model_source(settings: StreamsSettings) -> tuple[str | None, dict[str, Any], str]:
    """(checkpoint path or None, ModelConfig as a dict, description). A checkpoint is loaded by
    the children only when no architecture override asks for a variant of it."""
    import dataclasses

    from ..config import PRESETS, preset
    from ..model import load_checkpoint, resolve_checkpoint

    overrides = {
        key: value
        for key, value in (
            ("reference_backbone", settings.reference_backbone),
            ("update_backbone", settings.update_backbone),
            ("head_channels", settings.head_channels),
        )
        if value is not None
    }
    if settings.model in PRESETS:
        config = preset(settings.model, **overrides)
        return None, config.to_dict(), f"preset {settings.model}, random weights"
    path = resolve_checkpoint(settings.model)
    if path is None:
        raise ValueError(f"--model {settings.model!r} is neither a preset nor a checkpoint")
    net, _ = load_checkpoint(path)
    if overrides:
        config = dataclasses.replace(net.config, **overrides)
        return None, config.to_dict(), f"{path.name}'s architecture with {overrides}, random"
    return str(path), net.config.to_dict(), f"checkpoint {path}"


def _plan(settings: StreamsSettings) -> list[tuple[int, str, str | None]]:
    """(N, set-up, baseline) in the order they run: per N, the node then its baselines."""
    plan: list[tuple[int, str, str | None]] = []
    for count in settings.streams:
        plan.append((count, "one_node", None))
        plan.extend((count, "separate", baseline) for baseline in settings.baselines())
    return plan


def _specs(
    settings: StreamsSettings, count: int, setup: str, baseline: str | None,
    frame_files: list[Path], checkpoint: str | None, config: dict[str, Any], device: str,
) -> list[dict[str, Any]]:
    from ..config import PipelineConfig

    pipeline = PipelineConfig(
        mode=settings.mode, keyframe_interval=settings.keyframe_interval, device=device,
        flow_method=settings.flow, flow_scale=settings.flow_scale,
        stagger_keyframes=settings.stagger,
    ).to_dict()
    common = {
        "pipeline": pipeline, "checkpoint": checkpoint, "model_config": config,
        "warmup": settings.warmup_rounds, "rounds": settings.rounds, "cpus": settings.cpus(),
    }
    names = [f"cam{i}" for i in range(count)]
    if setup == "one_node":
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


def _median(values: list[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the repeats of a set-up: medians of the rates, latencies and memory;
    `runs` keeps each repeat's total fps, p99 and RSS."""
    row = dict(runs[-1])
    for key in ("per_stream_fps", "per_stream_fps_min", "total_fps", "rss_mb", "timed_span_s"):
        row[key] = _median([r[key] for r in runs])
    for key in ("rss_end_mb", "rss_loaded_mb", "cuda_peak_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        row[key] = _median(values) if values else None
    row["latency_ms"] = {
        key: _median([r["latency_ms"][key] for r in runs]) for key in runs[0]["latency_ms"]
    }
    row["max_keyframes_per_batch"] = max(r["max_keyframes_per_batch"] for r in runs)
    row["runs"] = {
        "total_fps": [r["total_fps"] for r in runs],
        "p99_ms": [r["latency_ms"]["p99"] for r in runs],
        "rss_mb": [r["rss_mb"] for r in runs],
        "start_spread_ms": [r["start_spread_ms"] for r in runs],
    }
    row["repeats"] = len(runs)
    row.pop("start_spread_ms", None)
    return row


def _ratio(numerators: list[float], denominators: list[float]) -> dict[str, Any]:
    """Median and min-max of per-run ratios (runs paired by repeat)."""
    ratios = [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]
    if not ratios:
        return {"ratio": None, "range": None}
    return {"ratio": _median(ratios), "range": [min(ratios), max(ratios)]}


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's two comparisons, for every N measured: memory of the node with N streams
    against the node with one (target for N > 1), and the node's throughput and p99 against
    N separate processes of each baseline."""
    node = {r["streams"]: r for r in rows if r["setup"] == "one_node"}
    comparisons: list[dict[str, Any]] = []
    if 1 in node:
        for count, row in sorted(node.items()):
            if count == 1:
                continue
            ratio = _ratio(row["runs"]["rss_mb"], node[1]["runs"]["rss_mb"])
            comparisons.append({
                "name": f"memory: one node with {count} streams / one node with 1 stream",
                "kind": "memory", "streams": count, **ratio, "target": MEMORY_TARGET,
                "met": ratio["ratio"] is not None and ratio["ratio"] <= MEMORY_TARGET,
            })
    for row in rows:
        if row["setup"] != "separate" or row["streams"] not in node:
            continue
        mine = node[row["streams"]]
        throughput = _ratio(mine["runs"]["total_fps"], row["runs"]["total_fps"])
        p99 = _ratio(mine["runs"]["p99_ms"], row["runs"]["p99_ms"])
        latency_ok = p99["ratio"] is not None and p99["ratio"] <= 1.0
        comparisons.append({
            "name": (
                f"throughput: one node / {row['streams']} separate processes "
                f"x {row['threads_per_process']} threads ({row['baseline']})"
            ),
            "kind": "throughput", "streams": row["streams"], "baseline": row["baseline"],
            **throughput, "target": THROUGHPUT_TARGET,
            "p99_ratio": p99["ratio"], "p99_range": p99["range"], "p99_no_worse": latency_ok,
            # One stream is the same work either way: only N > 1 is judged.
            "met": (
                None if row["streams"] == 1
                else throughput["ratio"] is not None
                and throughput["ratio"] >= THROUGHPUT_TARGET and latency_ok
            ),
        })
    return comparisons


def run_streams_benchmark(
    settings: StreamsSettings, log: Callable[[str], None] | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Measure every (N, set-up) of the plan, `settings.repeats` times interleaved; returns the
    JSON-ready report."""
    import torch

    from ..model import resolve_device

    log = log or (lambda message: None)
    device = resolve_device(settings.device)
    checkpoint, config, model_text = model_source(settings)
    plan = _plan(settings)
    runs: list[list[dict[str, Any]]] = [[] for _ in plan]
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="accel-bench-streams-")))
        folder.mkdir(parents=True, exist_ok=True)
        clips, source = make_stream_frames(
            max(settings.streams), settings.clip_frames, settings.height, settings.width,
            settings.seed,
        )
        frame_files = []
        for index, clip in enumerate(clips):
            path = folder / f"stream{index}.npy"
            np.save(path, clip)
            frame_files.append(path)
        for repeat in range(settings.repeats):
            for number, (count, setup, baseline) in enumerate(plan):
                specs = _specs(settings, count, setup, baseline, frame_files, checkpoint,
                               config, str(device))
                results, spread = run_children(specs, folder, settings.timeout_s)
                summary = summarise(results, settings.rounds)
                summary["start_spread_ms"] = spread
                runs[number].append(summary)
                shown = "one node" if setup == "one_node" else (
                    f"{count} separate x {summary['threads_per_process']} threads ({baseline})"
                )
                log(
                    f"[run {repeat + 1}/{settings.repeats}, {number + 1}/{len(plan)}] "
                    f"N={count} {shown}: {summary['total_fps']:.2f} fps total, "
                    f"p99 {summary['latency_ms']['p99']:.1f} ms, RSS {summary['rss_mb']:.0f} MB"
                )
    rows = []
    for (count, setup, baseline), measured in zip(plan, runs, strict=True):
        processes = 1 if setup == "one_node" else count
        rows.append({
            "streams": count, "setup": setup, "baseline": baseline, "processes": processes,
            **aggregate(measured),
        })
    return {
        "meta": {
            "kind": "streams",
            "device": str(device),
            "device_name": _device_name(device),
            "torch": torch.__version__,
            "cpu_count": os.cpu_count(),
            "threads": settings.threads,
            "thread_split": {
                baseline: {str(n): settings.separate_threads(baseline, n)
                           for n in settings.streams}
                for baseline in settings.baselines()
            },
            "cpus": settings.cpus(),
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
            "model": model_text,
            "frame_source": source,
            "memory": "peak RSS (ru_maxrss) of each child after load and loop, summed",
            "load_average_before": list(load_before) if load_before else None,
            "load_average_after": list(os.getloadavg()) if load_before else None,
            "seconds": round(time.perf_counter() - started, 1),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        },
        "rows": rows,
        "comparisons": compare(rows),
    }


def _device_name(device: Any) -> str:
    import platform

    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


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
        f"accel-ros bench --streams: {meta['height']}x{meta['width']} on {meta['device']} "
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
    for row in report["rows"]:
        per_process = "" if row["processes"] == 1 else f"{np.mean(row['rss_mb_per_process']):.0f}"
        lat = row["latency_ms"]
        lines.append(
            f"{row['streams']:>2} {_setup_label(row):<18} "
            f"{row['processes']:>4} x {row['threads_per_process']:<4} "
            f"{row['per_stream_fps']:10.2f} {row['total_fps']:9.2f} {lat['p50']:8.1f} "
            f"{lat['p99']:8.1f} {row['rss_mb']:8.0f} {per_process:>8} "
            f"{row['max_keyframes_per_batch'] if row['setup'] == 'one_node' else '-':>12}"
        )
    spreads = [s for row in report["rows"] if row["processes"] > 1
               for s in row["runs"]["start_spread_ms"]]
    if spreads:
        lines.append(f"separate processes started their timed loops within {max(spreads):.1f} ms "
                     "of each other")
    for item in report["comparisons"]:
        if item["ratio"] is None:
            continue
        low, high = item["range"]
        text = f"{item['name']}: {item['ratio']:.2f} (runs {low:.2f}-{high:.2f})"
        if item["kind"] == "memory":
            text += f", target <= {item['target']}"
        else:
            text += (
                f", target >= {item['target']}; p99 one node / separate {item['p99_ratio']:.2f}"
                f" ({'no worse' if item['p99_no_worse'] else 'WORSE'})"
            )
        if item["met"] is not None:
            text += ": " + ("met" if item["met"] else "NOT met")
        lines.append(text)
    notes = sorted({n for row in report["rows"] for n in row["notes"]})
    lines.extend(f"note: {note}" for note in notes)
    load = meta.get("load_average_before")
    if load:
        lines.append(
            f"load average before the run {load[0]:.2f} (1 min) on {meta['cpu_count']} CPUs: "
            "timings are only clean on an otherwise idle machine"
        )
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: str | Path) -> Path:
    """PNG: total throughput and p99 latency against the number of streams, per set-up."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9.0, 4.0), dpi=110)
    FigureCanvasAgg(figure)
    fps_axes = figure.add_subplot(1, 2, 1)
    p99_axes = figure.add_subplot(1, 2, 2)
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
        axes.legend(fontsize=8)
    meta = report["meta"]
    figure.text(
        0.01, 0.01,
        f"{meta['height']}x{meta['width']}, {meta['device_name']} ({meta['device']}), "
        f"{meta['threads']} threads, {meta['mode']} k={meta['keyframe_interval']}",
        fontsize=7,
    )
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


# -- CLI (through `accel-ros bench --streams`) -------------------------------------------------
STREAMS_ONLY = (
    ("--separate-threads", "separate_threads", "split"), ("--no-stagger", "no_stagger", False),
    ("--no-pin", "no_pin", False),
    ("--update-backbone", "update_backbone", None), ("--head-channels", "head_channels", None),
    ("--stream-timeout", "stream_timeout", 1800.0),
)


def streams_only_options(args: argparse.Namespace) -> list[str]:
    """The `--streams`-mode options given on a command line without --streams."""
    return [flag for flag, name, default in STREAMS_ONLY if getattr(args, name) != default]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options only `--streams` mode reads; bench.py adds them to its parser."""
    group = parser.add_argument_group(
        "several streams (--streams)",
        "one node serving N cameras against N separate single-camera processes",
    )
    group.add_argument("--streams", default=None,
                       help="stream counts to measure, e.g. 1,2,4 (switches to this mode; "
                       "default size 360x480, accel, keyframe interval 5)")
    group.add_argument("--separate-threads", choices=SEPARATE_CHOICES, default="split",
                       help="threads of each separate process: split = max(1, T // N), "
                       "full = T each (oversubscribed), both")
    group.add_argument("--no-pin", action="store_true",
                       help="do not pin every child to the same --threads CPUs")
    group.add_argument("--no-stagger", action="store_true",
                       help="do not stagger keyframes across streams (nor processes)")
    group.add_argument("--update-backbone", default=None,
                       help="architecture override (random weights), e.g. for quick runs")
    group.add_argument("--head-channels", type=int, default=None,
                       help="N_feat width override (random weights), e.g. for quick runs")
    group.add_argument("--stream-timeout", type=float, default=1800.0,
                       help="seconds one set-up (load, warm-up, timed loop) may take")


def parse_counts(text: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4)."""
    try:
        counts = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError as error:
        raise ValueError(f"bad --streams list {text!r}: {error}") from error
    if not counts:
        raise ValueError(f"no stream counts in {text!r}")
    return counts


def settings_from_args(args: argparse.Namespace) -> StreamsSettings:
    """StreamsSettings from `accel-ros bench` arguments (shared options keep their meaning:
    --frames = timed frames per stream, --warmup = untimed rounds, --intervals = the one
    keyframe interval)."""
    import torch

    from .single_stream import parse_intervals

    if (args.height is None) != (args.width is None):
        raise ValueError("give both --height and --width, or neither")
    not_here = [
        flag for flag, value, default in (
            ("--variants", args.variants, None), ("--precision", args.precision, "fp32"),
            ("--channels-last", args.channels_last, False), ("--compile", args.compile, False),
            ("--cuda-graphs", args.cuda_graphs, False),
            ("--overlap-flow", args.overlap_flow, False),
            ("--breakdown", args.breakdown, False), ("--flow-epe", args.flow_epe, False),
            ("--accuracy", args.accuracy, None), ("--fast-variants", args.fast_variants, None),
            ("--fast-intervals", args.fast_intervals, None),
        )
        if value != default
    ]
    if not_here:
        # Silently ignoring them would report a configuration that did not run.
        raise ValueError(f"{', '.join(not_here)} do not apply to --streams")
    interval = 5
    if args.intervals is not None:
        intervals = parse_intervals(args.intervals)
        if len(intervals) != 1:
            raise ValueError(f"--streams takes one keyframe interval, got {intervals}")
        interval = intervals[0]
    return StreamsSettings(
        streams=parse_counts(args.streams),
        height=args.height or DEFAULT_SIZE[0],
        width=args.width or DEFAULT_SIZE[1],
        frames=args.frames if args.frames is not None else DEFAULT_FRAMES,
        warmup=args.warmup,
        threads=args.threads if args.threads is not None else torch.get_num_threads(),
        device="cpu" if args.device == "auto" and not torch.cuda.is_available() else args.device,
        keyframe_interval=interval,
        flow=args.flow,
        flow_scale=args.flow_scale,
        stagger=not args.no_stagger,
        separate=args.separate_threads,
        pin=not args.no_pin,
        model=args.model or "default",
        reference_backbone=args.reference_backbone,
        update_backbone=args.update_backbone,
        head_channels=args.head_channels,
        clip_frames=args.clip_frames if args.clip_frames is not None else DEFAULT_CLIP_FRAMES,
        seed=args.seed,
        repeats=args.repeats,
        timeout_s=args.stream_timeout,
    )


def main(args: argparse.Namespace) -> int:
    """`accel-ros bench --streams ...`: run, print the table, write --json / --plot."""
    settings = settings_from_args(args)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run_streams_benchmark(settings, log)
    print(format_table(report))
    if args.json is not None:
        print(f"wrote {write_json(report, args.json)}")
    if args.plot is not None:
        print(f"wrote {write_plot(report, args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
