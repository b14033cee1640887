"""The child process of `accel-ros bench-streams` (bench/streams.py starts it; internal).

    python -m accel_ros.bench.stream_worker --worker SPEC.json

Protocol: lines on stdout that start with PREFIX carry JSON events ("ready", "done",
"result"); stray prints (library warnings) cannot be mistaken for them. The parent sends "go"
and "stop" on stdin; end of input (the parent died) releases both.

The spec names the streams, their frame files (.npy, made by the parent), the pipeline, the
model (a checkpoint path, or a ModelConfig as a dict for random weights), the torch threads,
the CPUs to pin to, the warm-up and timed rounds, and the API: "batch" (one node: every stream
per `process_batch` call) or "single" (one stream, `process`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..runtime import set_threads
from .common import peak_rss_mb, ping_pong_index, status_mb

MODULE = "accel_ros.bench.stream_worker"
PREFIX = "@accel-bench-streams "
# Stamps of a 30 fps camera: no time-gap resets.
FRAME_TIME_S = 1.0 / 30.0


def _emit(event: str, **data: Any) -> None:
    print(PREFIX + json.dumps({"event": event, **data}), flush=True)


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
    """The segmenter the spec describes, through the one loading path (`load_model`)."""
    from ..config import ModelConfig, PipelineConfig
    from ..model import load_model
    from ..stream import AccelSegmenter

    pipeline = PipelineConfig.from_dict(spec["pipeline"])
    source = spec["checkpoint"] or ModelConfig.from_dict(spec["model_config"])
    return AccelSegmenter(load_model(source).model.eval(), pipeline)


@dataclass
class _Streams:
    """The child's streams: their names and frames, the segmenter, and how to call it."""

    names: list[str]
    clips: list[np.ndarray]
    segmenter: Any
    batched: bool
    step: int = 0

    def next_round(self) -> list[Any]:
        """The next frame of every stream, ready for the call (outside the timed part)."""
        from ..stream.segmenter import StreamFrame

        stamp = self.step * FRAME_TIME_S
        frames = [clip[ping_pong_index(len(clip), self.step)] for clip in self.clips]
        self.step += 1
        return [StreamFrame(name, frame, stamp)
                for name, frame in zip(self.names, frames, strict=True)]

    def run(self, batch: list[Any]) -> list[Any]:
        if self.batched:
            return self.segmenter.process_batch(batch)
        return [self.segmenter.process(batch[0].frame, batch[0].stamp)]

    def run_round(self) -> list[Any]:
        return self.run(self.next_round())


def _timed_loop(streams: _Streams, rounds: int) -> dict[str, Any]:
    """`rounds` timed calls: per call its latency (ms), keyframe flags and batch size."""
    latencies: list[float] = []
    keyframes: list[list[bool]] = []
    batch_sizes: list[int] = []
    begin = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process on the machine
    for _ in range(rounds):
        batch = streams.next_round()
        call_start = time.perf_counter()
        results = streams.run(batch)
        latencies.append((time.perf_counter() - call_start) * 1000.0)
        got = [getattr(r, "stream", streams.names[0]) for r in results]
        if streams.batched and got != streams.names:
            raise RuntimeError(f"process_batch returned streams {got}, expected {streams.names}")
        keyframes.append([bool(r.is_keyframe) for r in results])
        batch_sizes.append(int(getattr(results[0], "batch_size", 1)))
    return {"begin": begin, "end": time.monotonic(), "latency_ms": latencies,
            "keyframes": keyframes, "batch_sizes": batch_sizes}


def worker(spec: dict[str, Any]) -> int:
    """One child: load, warm up, report ready, wait for "go", time the loop, report done, keep
    running untimed rounds until "stop" (so every timed frame of the others ran against this
    one too), report the result."""
    if spec.get("cpus"):
        # Before torch loads: its OpenMP pool then starts on these CPUs.
        os.sched_setaffinity(0, spec["cpus"])
    import torch

    # torch's and OpenCV's pools alike: DIS flow runs in OpenCV's, on the same cores.
    set_threads(int(spec["threads"]))
    control = _Control()
    started = time.perf_counter()
    clips = [np.load(path) for path in spec["frames"]]
    streams = _Streams(list(spec["streams"]), clips, _build_segmenter(spec),
                       spec["api"] == "batch")
    if streams.batched:
        streams.segmenter.configure_streams(streams.names)
    load_s = time.perf_counter() - started
    rss_loaded = status_mb("VmRSS")
    for _ in range(int(spec["warmup"]) + int(spec.get("extra_warmup", 0))):
        streams.run_round()
    _emit("ready", load_s=load_s, rss_loaded_mb=rss_loaded)
    control.go.wait()
    timed = _timed_loop(streams, int(spec["rounds"]))
    _emit("done")
    padding = 0
    while not control.stop.is_set():  # keep the others' competition until all are done
        streams.run_round()
        padding += 1
    _emit("result", **timed, **_resources(streams, torch), padding_rounds=padding,
          load_s=load_s, rss_loaded_mb=rss_loaded)
    return 0


def _resources(streams: _Streams, torch: Any) -> dict[str, Any]:
    """Threads, CPUs, memory (host and device) and notes of a child that finished its loop."""
    segmenter = streams.segmenter
    cuda_peak = None
    if segmenter.device.type == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated(segmenter.device) / 2**20
    segmenter.close()
    return {
        "streams": streams.names,
        "threads": torch.get_num_threads(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "peak_rss_mb": peak_rss_mb(),
        "rss_end_mb": status_mb("VmRSS"),
        "cuda_peak_mb": cuda_peak,
        "frames_mb": sum(clip.nbytes for clip in streams.clips) / 2**20,
        "fast_path_notes": list(segmenter.fast_path_notes),
    }


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("--worker", type=Path, required=True, help="spec JSON (internal)")
    args = parser.parse_args(argv)
    return worker(json.loads(args.worker.read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
