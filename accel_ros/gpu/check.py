"""The prepared GPU check: run it the moment a session is lent a GPU.

On the GPU machine (about 15 minutes of device time in all, machine start-up included; 10
minutes per command; at most 8 files come back), from the repository root:

    PYTHONPATH=$PWD timeout 560 python3 -m accel_ros.gpu.check --budget-s 300 --out $OUT

with the device tool's command limit (`timeout_s`) at 560 s. The check keeps to its budget by
itself: every step gets a time box (a share of what is left, in proportion to `STEPS`' weights,
so time an early step does not use flows to later ones), its loops stop at the box's end
(between frames, configurations and set-ups; subprocesses get the box as their timeout), and a
watchdog ends the process `hard_grace_s` (15 s at 300 s) after the budget if a single
uninterruptible call (a compile, a first frame) overruns, writing what it has first. So the
command ends by about 300 + 15 s plus Python's and CUDA's start-up: 560 s leaves room for a
slow machine, and two runs (a first one and a rerun) plus the machine's start fit a 15-minute
slot. On the CPU a dry run checks every step at toy size (what CI runs):

    python -m accel_ros.gpu.check --device cpu --tiny --out /tmp/dc

Steps, in order (each records what it ran, what it skipped and why):

1. parity (real weights, `--checkpoint`, default the shipped one) on a synthetic clip at the
   model's input size: the CPU fp32 pipeline is the truth; on the device fp32 (TF32 off, and
   restored exactly afterwards, also on error), fp16 autocast, fp32 + CUDA graphs, fp16 + CUDA
   graphs, and the torch flow; per configuration the share of equal labels (min over frames)
   and the mean |difference| of the per-pixel max probability, against `TOLERANCES`. Graph
   configurations are also compared with eager at the same precision, and on CUDA they pass
   only if graphs were really captured and replayed (no capture failure): a fallback would make
   "graphs vs eager" compare eager with eager. Failing makes the exit status 1.
2. the CUDA tests (test/test_cuda.py, every test of which needs a GPU; not the CPU dry run):
   passed only if at least one test executed and none skipped or failed (counted from pytest's
   JUnit XML), so a GPU run where CUDA is not visible cannot pass by skipping them all.
3. flow end-point error of zero / DIS / torch flow against the synthetic exact flow.
4. benchmark at 1024x2048 (`--height/--width`; the network runs at that size): reference,
   DFF, DeepLab-x and Accel of the `--checkpoint`'s configuration at k = 1, 5, 10 and the four
   torchvision peers; plain fp32, fp16, CUDA graphs, both (latency unsynchronised, stage
   columns from a synchronised pass). Each row records what really ran (`fast_paths_ran`);
   rows whose requested fast path did not run are listed under `fallbacks`. Every segmenter,
   peers included, is freed before the next is built, so peak memory is each row's own.
5. DFF / Accel k=5 with the on-device torch flow instead of DIS.
6. several cameras (`bench-streams` 1,2,4 at 360x480, 4 CPU threads): one process serving N
   streams with one model against N separate processes; on CUDA device memory is compared
   through each process's CUDA peak, not only host RSS.
7. torch.compile of Accel k=5 (and the reference for the ratio), last: it needs the most time.

Outputs under --out, at most 3 files (the tool returns 8): `device_check.json` (every step's
full report, rewritten after every step and when the watchdog fires), `device_check.log`
(everything printed, warnings and the pytest output included), `device_check.png` (the
benchmark's times per keyframe interval beside the several-camera throughput and p99).
Exit status: 0 passed, 1 failed or incomplete (a judged step did not finish), 3 stopped by the
watchdog.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench.common import (
    NO_DEADLINE,
    Deadline,
    fast_path_outcome,
    free_segmenter,
    new_figure,
    save_figure,
)

# Tolerances against the CPU fp32 pipeline (labels: share of equal pixels, worst frame;
# max_probability: mean |difference|). Warped frames carry DIS flow computed from frames that
# were resized on the device, so fp32 is allowed a little more than kernel rounding.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"labels": 0.995, "max_probability": 2e-3},
    "fp16": {"labels": 0.985, "max_probability": 1e-2},
    "fp32_graphs": {"labels": 0.995, "max_probability": 2e-3},
    "fp16_graphs": {"labels": 0.985, "max_probability": 1e-2},
    "fp32_torch_flow": {"labels": 0.995, "max_probability": 2e-3},
}
# CUDA graphs against eager at the same precision: the same kernels, replayed.
GRAPH_TOLERANCE = {"labels": 0.999, "max_probability": 1e-4}
# Every test in this file needs a GPU (the CPU dry run lives in test_bench.py).
CUDA_TEST_FILES = ("test/test_cuda.py",)
OUTPUT_FILES = ("device_check.json", "device_check.log", "device_check.png")


@dataclasses.dataclass(frozen=True)
class Step:
    """A step's share of the time left (`weight`, relative to the steps after it) and the
    least time worth starting it with (`min_s`)."""

    name: str
    weight: float
    min_s: float
    judged: bool = False  # a judged step that does not finish makes the check fail


# The judged steps come first and get generous shares (on an H200 they need a fraction of
# them; the unused time flows on to the benchmarks).
STEPS = (
    Step("parity", 2.0, 15.0, judged=True),
    Step("cuda_tests", 1.5, 20.0, judged=True),
    Step("flow_epe", 0.3, 5.0),
    Step("bench", 3.5, 30.0),
    Step("bench_torch_flow", 1.0, 15.0),
    Step("bench_streams", 2.0, 30.0),
    Step("bench_compile", 2.0, 60.0),
)


@dataclasses.dataclass
class Check:
    """Settings of one device check run."""

    out: Path
    device: str = "cuda"
    tiny: bool = False
    checkpoint: str = "default"
    budget_s: float = 300.0
    height: int = 1024
    width: int = 2048
    frames: int = 8

    def __post_init__(self) -> None:
        if self.tiny:
            self.height, self.width, self.frames = 32, 64, 4

    @property
    def on_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def hard_grace_s(self) -> float:
        """How long after the budget the watchdog lets an overrunning call go on."""
        return max(5.0, min(30.0, 0.05 * self.budget_s))


# -- the runner --------------------------------------------------------------------------------
class Runner:
    """Runs the steps in their time boxes, logs, and keeps device_check.json current. A
    watchdog thread ends the process `hard_grace_s` after the budget, after writing the
    report with the running step marked as stopped."""

    def __init__(self, check: Check) -> None:
        self.check = check
        check.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.deadline = Deadline(self.started + check.budget_s)
        self.report: dict[str, Any] = {"steps": {}, "failures": [], "not_finished": []}
        self.current: str | None = None
        self.lock = threading.RLock()
        self._log = open(check.out / "device_check.log", "w", encoding="utf-8")  # noqa: SIM115
        self._watchdog = threading.Timer(check.budget_s + check.hard_grace_s, self._stop_hard)
        self._watchdog.daemon = True
        self.children: list[subprocess.Popen] = []  # killed by the watchdog
        self._step_lines: list[str] = []  # the running step's log, for the watchdog

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def log(self, message: str) -> None:
        with self.lock:
            print(message, flush=True)
            self._log.write(message + "\n")
            self._log.flush()
            self._step_lines = (self._step_lines + message.splitlines())[-60:]

    def save(self) -> None:
        with self.lock:
            self.report["elapsed_s"] = round(self.elapsed(), 1)
            path = self.check.out / "device_check.json"
            temporary = path.with_name(path.name + ".tmp")
            temporary.write_text(json.dumps(self.report, indent=1, default=str), "utf-8")
            temporary.replace(path)

    def box(self, step: Step, remaining: list[Step]) -> Deadline | str:
        """The step's time box, or why it is not started."""
        left = self.deadline.left()
        if left < step.min_s:
            return f"{max(left, 0):.0f} s of the budget left < {step.min_s:.0f} s it needs"
        share = left * step.weight / sum(s.weight for s in remaining)
        return self.deadline.within(max(share, step.min_s))

    def run_step(self, step: Step, remaining: list[Step], fn: Callable[[Deadline], Any]) -> None:
        """Run `fn(deadline)` in the step's time box; record its result, error or skip."""
        box = self.box(step, remaining)
        if isinstance(box, str):
            self._record(step.name, {"skipped": box})
            self.log(f"[{self.elapsed():6.1f} s] {step.name}: not run ({box})")
            return
        self.log(f"[{self.elapsed():6.1f} s] {step.name} (time box {box.left():.0f} s) ...")
        with self.lock:
            self.current = step.name
            self._step_lines = []
            self.report["steps"][step.name] = {"running": True}
        started = time.monotonic()
        try:
            result = fn(box)
        except Exception as error:  # record and go on: the other steps still tell something
            result = {"error": f"{type(error).__name__}: {error}"}
            self.log(traceback.format_exc())
            with self.lock:
                self.report["failures"].append(f"{step.name}: {result['error']}")
        result["seconds"] = round(time.monotonic() - started, 1)
        self._record(step.name, result)
        self.log(f"[{self.elapsed():6.1f} s] {step.name} done in {result['seconds']} s")

    def _record(self, name: str, result: dict[str, Any]) -> None:
        with self.lock:
            self.report["steps"][name] = result
            self.current = None
            self.save()

    def start_watchdog(self) -> None:
        self._watchdog.start()

    def finish(self) -> int:
        """Judge, write, print the verdict; the exit status."""
        self._watchdog.cancel()
        with self.lock:
            code = self._verdict()
            self.save()
        self._log.close()
        return code

    def _verdict(self) -> int:
        failed, unfinished = judge(self.report["steps"], self.check.on_cuda)
        failed = list(self.report["failures"]) + failed
        self.report["not_finished"] = unfinished
        self.report["passed"] = not failed and not any(
            step.judged and step.name in unfinished for step in STEPS
        )
        verdict = "PASSED" if self.report["passed"] else "FAILED: " + "; ".join(
            failed + [f"{name} did not finish" for name in unfinished
                      if any(s.judged and s.name == name for s in STEPS)])
        if unfinished:
            verdict += f" (not finished: {', '.join(unfinished)})"
        self.log(f"device check: {verdict} in {self.elapsed():.0f} s; "
                 f"results in {self.check.out}")
        return 0 if self.report["passed"] else 1

    def _stop_hard(self) -> None:
        """The watchdog: a call ran past the budget and its grace. Write what there is (the
        running step marked as stopped, the steps after it as not run) and exit."""
        with self.lock:
            for child in self.children:
                with contextlib.suppress(OSError):
                    child.kill()
            running = self.current
            if running is not None:
                self.report["steps"][running] = {
                    "stopped": f"still running {self.check.hard_grace_s:.0f} s after the "
                               f"{self.check.budget_s:.0f} s budget: ended by the watchdog",
                    "log_tail": list(self._step_lines),  # what it had done by then
                }
            for step in STEPS:
                if "pending" in self.report["steps"].get(step.name, {"pending": True}):
                    self.report["steps"][step.name] = {"skipped": "the budget ran out"}
            self.report["failures"].append(f"{running or 'the check'}: ended by the watchdog")
            self._verdict()
            self.save()
            self._log.flush()
        os._exit(3)


def judge(steps: dict[str, Any], on_cuda: bool) -> tuple[list[str], list[str]]:
    """(failures, steps not finished) from the recorded steps: a step fails with
    `passed: False`; it is unfinished when it was skipped, stopped, or left parts out."""
    failures, unfinished = [], []
    for name, step in steps.items():
        if step.get("passed") is False:
            failures.append(f"{name}: {step.get('reason', 'failed')}")
        if "skipped" in step or "stopped" in step or step.get("not_run"):
            unfinished.append(name)
    if not on_cuda and "cuda_tests" in unfinished:
        unfinished.remove("cuda_tests")  # a CPU dry run cannot run them: not a shortfall
    return failures, unfinished


# -- 1. parity ---------------------------------------------------------------------------------
PARITY_RUNS: dict[str, dict[str, Any]] = {
    "fp32": {},
    "fp16": {"precision": "half"},
    "fp32_graphs": {"cuda_graphs": True},
    "fp16_graphs": {"precision": "half", "cuda_graphs": True},
    "fp32_torch_flow": {"flow_method": "torch"},
}


def _tf32_state() -> dict[str, Any]:
    backends = torch.backends
    state: dict[str, Any] = {"matmul": backends.cuda.matmul.allow_tf32}
    with contextlib.suppress(RuntimeError):  # raises when the new API set conv != rnn
        state["cudnn"] = backends.cudnn.allow_tf32
    # The legacy setters rewrite the newer per-backend precision strings: keep those too.
    for key, owner in _precision_owners():
        state[key] = owner.fp32_precision
    return state


def _precision_owners() -> list[tuple[str, Any]]:
    backends = torch.backends
    owners = [("global", backends), ("cuda.matmul", backends.cuda.matmul),
              ("cudnn", backends.cudnn), ("cudnn.conv", getattr(backends.cudnn, "conv", None)),
              ("cudnn.rnn", getattr(backends.cudnn, "rnn", None))]
    return [(f"precision:{key}", owner) for key, owner in owners
            if owner is not None and hasattr(owner, "fp32_precision")]


def _restore_tf32(state: dict[str, Any]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = state["matmul"]
    if "cudnn" in state:
        torch.backends.cudnn.allow_tf32 = state["cudnn"]
    for key, owner in _precision_owners():
        if key in state and owner.fp32_precision != state[key]:
            owner.fp32_precision = state[key]


@contextlib.contextmanager
def tf32_disabled() -> Iterator[dict[str, Any]]:
    """TF32 off for matmul and cuDNN inside; afterwards every flag is exactly what it was
    (the legacy allow_tf32 flags and the newer fp32_precision strings), also on an error.
    Yields the state found on entry."""
    state = _tf32_state()
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield state
    finally:
        _restore_tf32(state)


def _run_pipeline(
    model: torch.nn.Module, frames: list[np.ndarray], deadline: Deadline, **pipeline: Any
) -> tuple[list[Any], dict[str, Any]]:
    """The results of the frames the deadline allowed, and what the fast paths really did."""
    from ..config import PipelineConfig
    from ..stream import AccelSegmenter

    pipeline.setdefault("keyframe_interval", 3)
    segmenter = AccelSegmenter(model, PipelineConfig(**pipeline), return_max_probability=True)
    results = []
    try:
        for frame in frames:
            if deadline.expired():
                break
            results.append(segmenter.process(frame))
        return results, fast_path_outcome(segmenter)
    finally:
        free_segmenter(segmenter)


def compare(truth: list[Any], other: list[Any]) -> dict[str, float]:
    """Worst-frame label agreement and mean |max-probability difference| of two runs."""
    agreement = [float((a.labels == b.labels).mean()) for a, b in zip(truth, other, strict=True)]
    difference = [
        float(np.abs(a.max_probability - b.max_probability).mean())
        for a, b in zip(truth, other, strict=True)
    ]
    return {"labels": min(agreement), "max_probability": max(difference)}


def _within(measured: dict[str, float], limit: dict[str, float]) -> bool:
    return (measured["labels"] >= limit["labels"]
            and measured["max_probability"] <= limit["max_probability"])


def judge_config(
    name: str, vs_cpu: dict[str, float], vs_eager: dict[str, float] | None,
    ran: dict[str, Any], on_cuda: bool,
) -> dict[str, Any]:
    """One parity configuration's entry: its measurements, what ran, and the verdict. On
    CUDA a graph configuration passes only if its graphs really replayed and none failed to
    capture (else "graphs vs eager" would compare eager with eager)."""
    entry: dict[str, Any] = {"vs_cpu_fp32": vs_cpu, "ran": ran,
                             "passed": _within(vs_cpu, TOLERANCES[name])}
    if vs_eager is not None:
        entry["vs_eager"] = vs_eager
        entry["passed"] = entry["passed"] and _within(vs_eager, GRAPH_TOLERANCE)
    graphs = ran.get("cuda_graphs")
    if graphs is not None:
        failures = {op: record["failures"] for op, record in graphs["ops"].items()
                    if record["failures"]}
        entry["graphs_ran"] = bool(graphs["active"]) and not failures
        if on_cuda and not entry["graphs_ran"]:
            entry["passed"] = False
            entry["reason"] = (f"CUDA graphs did not run ({graphs['replays']} replays, "
                               f"capture failures: {failures or 'none'}): the numbers are eager")
    if not on_cuda and "fp16" in name:
        # CPU autocast is bf16 (8-bit mantissa), not the fp16 the tolerances are set for:
        # the dry run reports it but does not judge it.
        entry["judged"] = False
    return entry


def parity(check: Check, deadline: Deadline = NO_DEADLINE) -> dict[str, Any]:
    """Step 1 (see the module docstring)."""
    from ..data.synthetic import generate_clip
    from ..model import load_model

    model = load_model(check.checkpoint).model.eval()
    size = (64, 96) if check.tiny else (model.config.input_size or (360, 480))
    frames = [f.image for f in generate_clip(check.frames, size[0], size[1], seed=3)]
    results: dict[str, Any] = {
        "frame_size": list(size), "frames": len(frames), "device": check.device,
        "cpu_threads": torch.get_num_threads(), "tf32": False,
        "half_precision": "fp16" if check.on_cuda else "bf16",  # CPU autocast: bf16
        "tolerances": TOLERANCES, "graph_tolerance": GRAPH_TOLERANCE, "configs": {},
        "not_run": [],
    }
    with tf32_disabled() as state:
        results["tf32_on_entry"] = state
        truth, _ = _run_pipeline(copy.deepcopy(model), frames, deadline, device="cpu")
        outputs: dict[str, list[Any]] = {}
        for name, fields in PARITY_RUNS.items():
            entry = _parity_config(check, model, frames, name, fields, truth, outputs, deadline)
            if entry is None:
                results["not_run"].append(name)
            else:
                results["configs"][name] = entry
    failed = [name for name, c in results["configs"].items()
              if c.get("judged", True) and not c["passed"]]
    # Nothing judged, or configurations left out, is no pass: it would be one by omission.
    results["passed"] = not failed and not results["not_run"] and any(
        c.get("judged", True) for c in results["configs"].values())
    if not results["passed"]:
        results["reason"] = "; ".join(
            [f"{name} outside its tolerance or its fast path did not run" for name in failed]
            + [f"not run before the deadline: {', '.join(results['not_run'])}"]
            * bool(results["not_run"]))
    return results


def _parity_config(
    check: Check, model: torch.nn.Module, frames: list[np.ndarray], name: str,
    fields: dict[str, Any], truth: list[Any], outputs: dict[str, list[Any]], deadline: Deadline,
) -> dict[str, Any] | None:
    """Run one configuration on the device and judge it; None if the deadline cut it."""
    fields = dict(fields)
    if fields.get("precision") == "half":
        fields["precision"] = "fp16" if check.on_cuda else "bf16"
    if len(truth) < len(frames):
        return None
    outputs[name], ran = _run_pipeline(model, frames, deadline, device=check.device, **fields)
    reference = truth
    if name == "fp32_torch_flow":
        reference, _ = _run_pipeline(copy.deepcopy(model).cpu(), frames, deadline,
                                     device="cpu", flow_method="torch")
    if len(outputs[name]) < len(frames) or len(reference) < len(frames):
        return None
    vs_eager = None
    if name.endswith("_graphs"):
        eager = outputs.get(name.removesuffix("_graphs"))
        if eager is None or len(eager) < len(frames):
            return None
        vs_eager = compare(eager, outputs[name])
    return judge_config(name, compare(reference, outputs[name]), vs_eager, ran, check.on_cuda)


# -- 2. CUDA tests -----------------------------------------------------------------------------
def count_junit(path: Path) -> dict[str, int]:
    """Tests, executed, skipped, failed (failures and errors) from a JUnit XML report."""
    import xml.etree.ElementTree as ElementTree

    counts = {"tests": 0, "executed": 0, "skipped": 0, "failed": 0}
    if not path.is_file():
        return counts
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        counts["tests"] += 1
        kinds = {child.tag for child in case}
        if "skipped" in kinds:
            counts["skipped"] += 1
            continue
        counts["executed"] += 1
        if kinds & {"failure", "error"}:
            counts["failed"] += 1
    return counts


def judge_tests(counts: dict[str, int], returncode: int) -> dict[str, Any]:
    """A GPU run's CUDA tests pass only if some ran, none was skipped and none failed: with
    no GPU visible they all skip, and pytest's exit status alone would still say 0."""
    reasons = []
    if counts["executed"] == 0:
        reasons.append(f"no CUDA test executed ({counts['skipped']} skipped)")
    elif counts["skipped"]:
        reasons.append(f"{counts['skipped']} CUDA test(s) skipped on a GPU run")
    if counts["failed"] or returncode not in (0, 5):
        reasons.append(f"{counts['failed']} failed (pytest exit status {returncode})")
    result: dict[str, Any] = {**counts, "returncode": returncode, "passed": not reasons}
    if reasons:
        result["reason"] = "; ".join(reasons)
    return result


def cuda_tests(
    check: Check, deadline: Deadline = NO_DEADLINE, log: Callable[[str], None] = print,
    children: list[subprocess.Popen] | None = None,
) -> dict[str, Any]:
    """Step 2: the CUDA tests in a pytest subprocess bounded by the deadline."""
    root = Path(__file__).resolve().parents[2]
    if not check.on_cuda:
        return {"skipped": "CPU run: the CUDA tests need a GPU (CI runs the rest)"}
    if not (root / CUDA_TEST_FILES[0]).is_file():
        return {"skipped": f"no {CUDA_TEST_FILES[0]} in this install", "passed": False,
                "reason": "the CUDA tests are missing"}
    with tempfile.TemporaryDirectory(prefix="accel-cuda-tests-") as folder:
        junit = Path(folder) / "cuda_tests.xml"
        command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                   f"--junitxml={junit}", *CUDA_TEST_FILES]
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        if children is not None:
            children.append(process)
        try:
            left = deadline.left()
            output, _ = process.communicate(timeout=None if left == float("inf")
                                            else max(1.0, left))
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
            log(output)
            return {"stopped": "pytest still running at the step's deadline: killed",
                    "passed": False, "reason": "the CUDA tests did not finish in time",
                    **count_junit(junit)}
        log(output)
        result = judge_tests(count_junit(junit), process.returncode)
    result["command"] = " ".join(command)
    result["summary"] = (output.strip().splitlines() or [""])[-1]
    return result


# -- 3. flow -----------------------------------------------------------------------------------
def flow(check: Check, deadline: Deadline = NO_DEADLINE) -> dict[str, Any]:
    """Step 3: end-point error of zero / DIS / torch flow on synthetic clips."""
    from ..bench.single_stream import flow_epe

    size = (48, 96) if check.tiny else (256, 512)
    result = flow_epe(("zero", "dis", "torch"), pairs=2 if check.tiny else 10,
                      height=size[0], width=size[1], seeds=(0,) if check.tiny else (0, 1),
                      device=check.device, deadline=deadline)
    result["not_run"] = result.pop("skipped")
    return result


# -- 4, 5, 7. benchmark ------------------------------------------------------------------------
def bench_settings(check: Check, kind: str) -> Any:
    """kind "main": every variant and peer, plain / half / CUDA graphs / both; "compile":
    torch.compile of Accel k=5 against the plain reference; "torch_flow": DFF and Accel at
    k=5 with the on-device torch flow instead of DIS, plain and half."""
    from ..bench.single_stream import BenchSettings

    tiny = check.tiny
    half = "fp16" if check.on_cuda else "bf16"
    common: dict[str, Any] = {
        "height": check.height, "width": check.width, "device": check.device,
        "model": check.checkpoint, "reference_backbone": None,
        "frames": 2 if tiny else 30, "warmup": 1 if tiny else 3,
        "clip_frames": 4 if tiny else 24, "breakdown": check.on_cuda,
    }
    if kind == "compile":
        return BenchSettings(variants=("reference", "accel"), intervals=(5,), compile=True,
                             fast_variants=("accel",), **common)
    if kind == "torch_flow":
        return BenchSettings(variants=("reference", "dff", "accel"), intervals=(5,),
                             flow="torch", precision=half, **common)
    peers = ("tv_lraspp_mobilenet_v3_large",) if tiny else (
        "tv_deeplabv3_resnet101", "tv_deeplabv3_resnet50",
        "tv_deeplabv3_mobilenet_v3_large", "tv_lraspp_mobilenet_v3_large",
    )
    return BenchSettings(
        variants=("reference", "dff", "deeplab", "accel", *peers),
        intervals=(1, 2) if tiny else (1, 5, 10),
        precision=half, cuda_graphs=check.on_cuda, **common,
    )


def fallbacks(report: dict[str, Any]) -> list[str]:
    """Rows whose requested fast path did not really run (graphs never replayed, compile
    failed or never returned compiled code)."""
    found = []
    for row in report["results"]:
        for path, record in row.get("fast_paths_ran", {}).items():
            if not record.get("active"):
                found.append(f"{row['fastpath']} {row['variant']} "
                             f"k={row['keyframe_interval']}: {path} did not run")
    return found


def benchmark(
    check: Check, kind: str = "main", deadline: Deadline = NO_DEADLINE,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Steps 4, 5 and 7: the single-stream benchmark of `kind` (see `bench_settings`)."""
    from ..bench.single_stream import format_table, run_benchmark

    report = run_benchmark(bench_settings(check, kind), log, deadline)
    table = format_table(report)
    log(table)
    return {"report": report, "table": table.splitlines(), "fallbacks": fallbacks(report),
            "not_run": report["skipped"]}


# -- 6. several cameras ------------------------------------------------------------------------
def streams(
    check: Check, deadline: Deadline = NO_DEADLINE, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """One process serving 1, 2, 4 cameras (`process_batch`, one model) against as many
    separate single-camera processes, at the shipped input size on the device."""
    from ..bench.streams import StreamsSettings, format_table, run_streams_benchmark

    tiny = check.tiny
    settings = StreamsSettings(
        streams=(1, 2) if tiny else (1, 2, 4),
        height=check.height if tiny else 360, width=check.width if tiny else 480,
        frames=2 if tiny else 30, warmup=1 if tiny else None,
        threads=1 if tiny else 4, device=check.device, model=check.checkpoint,
        clip_frames=4 if tiny else 16, timeout_s=120.0 if tiny else 240.0,
    )
    report = run_streams_benchmark(settings, log, deadline=deadline)
    table = format_table(report)
    log(table)
    return {"report": report, "table": table.splitlines(), "not_run": report["skipped"]}


# -- the figure --------------------------------------------------------------------------------
def write_figure(steps: dict[str, Any], path: Path) -> Path | None:
    """One PNG: the benchmark's per-frame time per keyframe interval, and the several-camera
    throughput and p99 (whichever of the two steps produced rows)."""
    from ..bench import single_stream
    from ..bench import streams as streams_module

    bench = steps.get("bench", {}).get("report")
    several = steps.get("bench_streams", {}).get("report")
    panels = int(bool(bench and bench["results"])) + 2 * int(bool(several and several["rows"]))
    if panels == 0:
        return None
    figure = new_figure(6.0 * panels, 4.6)
    column = 1
    footer = []
    if bench and bench["results"]:
        single_stream.draw_times(figure.add_subplot(1, panels, column), bench)
        footer.append("bench: " + single_stream.plot_footer(bench))
        column += 1
    if several and several["rows"]:
        streams_module.draw_streams(figure.add_subplot(1, panels, column),
                                    figure.add_subplot(1, panels, column + 1), several)
        footer.append("streams: " + streams_module.plot_footer(several))
    return save_figure(figure, path, "; ".join(footer))


# -- the run -----------------------------------------------------------------------------------
def _environment(check: Check) -> dict[str, Any]:
    device = torch.device(check.device)
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiny": check.tiny,
        "checkpoint": check.checkpoint,
        "budget_s": check.budget_s,
        "hard_grace_s": check.hard_grace_s,
        "tf32": _tf32_state(),
    }


def _step_functions(check: Check, runner: Runner) -> dict[str, Callable[[Deadline], Any]]:
    log = runner.log
    functions: dict[str, Callable[[Deadline], Any]] = {
        "parity": lambda box: parity(check, box),
        "cuda_tests": lambda box: cuda_tests(check, box, log, runner.children),
        "flow_epe": lambda box: flow(check, box),
        "bench": lambda box: benchmark(check, "main", box, log),
        "bench_torch_flow": lambda box: benchmark(check, "torch_flow", box, log),
        "bench_streams": lambda box: streams(check, box, log),
        "bench_compile": lambda box: benchmark(check, "compile", box, log),
    }
    if check.tiny:
        functions["bench_compile"] = lambda box: {"skipped": "tiny run (inductor is slow)"}
    return functions


def run(check: Check) -> int:
    runner = Runner(check)
    runner.report["environment"] = _environment(check)
    runner.report["steps"] = {step.name: {"pending": True} for step in STEPS}
    runner.save()
    runner.start_watchdog()
    functions = _step_functions(check, runner)
    with _warnings_to(runner.log):
        for index, step in enumerate(STEPS):
            runner.run_step(step, list(STEPS[index:]), functions[step.name])
            if step.name in ("bench", "bench_streams"):
                with contextlib.suppress(Exception):  # a figure must not cost the report
                    write_figure(runner.report["steps"], check.out / "device_check.png")
            if check.on_cuda:
                torch.cuda.empty_cache()
    return runner.finish()


@contextlib.contextmanager
def _warnings_to(log: Callable[[str], None]) -> Iterator[None]:
    """Warnings (fast-path fallbacks among them) go to the log as well as the console."""
    original = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, *rest: Any) -> None:
        log(f"warning: {category.__name__}: {message} ({Path(filename).name}:{lineno})")

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m accel_ros.gpu.check", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (dry run)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU dry run)")
    parser.add_argument("--checkpoint", default="default",
                        help="weights for parity and configuration for the benchmark")
    parser.add_argument("--budget-s", type=float, default=300.0,
                        help="time box of the whole check; steps share it and stop at it")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args(argv)
    check = Check(out=args.out, device=args.device, tiny=args.tiny, checkpoint=args.checkpoint,
                  budget_s=args.budget_s, height=args.height, width=args.width)
    return run(check)


if __name__ == "__main__":
    sys.exit(main())
