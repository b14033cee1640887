"""The prepared GPU check: run it the moment a session is lent a GPU.

    PYTHONPATH=$PWD python3 -m accel_ros.bench.device_check --out $OUT          # on the GPU
    python -m accel_ros.bench.device_check --device cpu --tiny --out /tmp/dc    # CPU dry run (CI)

One command, about 6-8 minutes on one H100 (`--budget-s`, default 450, skips what no longer
fits and says so), in this order, each step writing its JSON before the next starts:

1. parity (real weights, `--checkpoint`, default the shipped one) on a synthetic clip at the
   model's input size: the CPU fp32 pipeline is the truth; on the device fp32 (TF32 off), fp16
   autocast, fp32 + CUDA graphs, fp16 + CUDA graphs, and the torch flow; per configuration the
   share of equal labels (min over frames) and the mean |difference| of the per-pixel max
   probability, against the tolerances in `TOLERANCES` (graphs are also compared with eager at
   the same precision). Failing a tolerance makes the exit status 1, the rest still runs.
2. `pytest -k cuda` over the test suite (the tests that skip without a GPU).
3. flow end-point error of zero / DIS / torch flow against the synthetic exact flow, torch
   flow on the device.
4. benchmark at 1024x2048 (`--height/--width`): reference, DFF, DeepLab-x and Accel of the
   `--checkpoint`'s configuration at k = 1, 5, 10 and the four torchvision peers; plain fp32,
   fp16, CUDA graphs, both (latency unsynchronised, stage columns from a synchronised pass);
   then DFF / Accel k=5 with the on-device torch flow; then torch.compile for Accel k=5 (and
   the reference for the ratio) if time is left. JSON + PNG.
5. several cameras (`bench --streams 1,2,4` at 360x480, 4 CPU threads): one process serving
   N streams with one model against N separate processes (each with its own CUDA context and
   weights), before torch.compile, which needs the most time.

Outputs under --out: device_check.json (everything, rewritten after every step),
bench.json, bench.png, bench_torch_flow.json, bench_streams.json, bench_streams.png,
bench_compile.json, pytest.txt. On the CPU
(`--device cpu --tiny`) every step runs at toy size with CUDA-only parts falling back, which
is what CI checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..report import write_json

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


@dataclasses.dataclass
class Check:
    """Settings of one device check run."""

    out: Path
    device: str = "cuda"
    tiny: bool = False
    checkpoint: str = "default"
    budget_s: float = 450.0
    height: int = 1024
    width: int = 2048
    frames: int = 8

    def __post_init__(self) -> None:
        if self.tiny:
            self.height, self.width, self.frames = 32, 64, 4


class Runner:
    def __init__(self, check: Check) -> None:
        self.check = check
        self.start = time.perf_counter()
        self.report: dict[str, Any] = {"steps": {}, "failures": []}
        check.out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.check.budget_s - self.elapsed()

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        path = self.check.out / "device_check.json"
        path.write_text(json.dumps(self.report, indent=1, default=str), encoding="utf-8")

    def step(self, name: str, needs_s: float, fn: Any) -> None:
        """Run `fn()` if `needs_s` seconds are left; record its result or its error."""
        if self.left() < needs_s:
            self.report["steps"][name] = {"skipped": f"{self.left():.0f} s left < {needs_s} s"}
            print(f"[{self.elapsed():6.1f} s] {name}: skipped (time)", flush=True)
            self.save()
            return
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        started = time.perf_counter()
        try:
            result = fn()
        except Exception as error:  # record and go on: the other steps still tell something
            result = {"error": f"{type(error).__name__}: {error}"}
            self.report["failures"].append(f"{name}: {result['error']}")
        if isinstance(result, dict):
            result["seconds"] = round(time.perf_counter() - started, 1)
        self.report["steps"][name] = result
        print(f"[{self.elapsed():6.1f} s] {name} done", flush=True)
        self.save()


# -- 1. parity ---------------------------------------------------------------------------------
def _run_pipeline(
    model: torch.nn.Module, frames: list[np.ndarray], **pipeline: Any
) -> list[Any]:
    from ..config import PipelineConfig
    from ..model import AccelSegmenter

    pipeline.setdefault("keyframe_interval", 3)
    segmenter = AccelSegmenter(model, PipelineConfig(**pipeline), return_max_probability=True)
    try:
        return [segmenter.process(frame) for frame in frames]
    finally:
        segmenter.close()


def compare(truth: list[Any], other: list[Any]) -> dict[str, float]:
    """Worst-frame label agreement and mean |max-probability difference| of two runs."""
    agreement = [float((a.labels == b.labels).mean()) for a, b in zip(truth, other, strict=True)]
    difference = [
        float(np.abs(a.max_probability - b.max_probability).mean())
        for a, b in zip(truth, other, strict=True)
    ]
    return {"labels": min(agreement), "max_probability": max(difference)}


def parity(check: Check) -> dict[str, Any]:
    import copy

    from ..config import DEFAULT_PRESET
    from ..data.synthetic import generate_clip
    from ..model import build_model

    model = build_model(DEFAULT_PRESET, check.checkpoint).eval()
    size = getattr(model.config, "input_size", None) or (360, 480)
    if check.tiny:
        size = (64, 96)
    frames = [f.image for f in generate_clip(check.frames, size[0], size[1], seed=3)]
    cpu_threads = torch.get_num_threads()
    truth = _run_pipeline(copy.deepcopy(model), frames, device="cpu")
    device = torch.device(check.device)
    on_cuda = device.type == "cuda"
    half = "fp16" if on_cuda else "bf16"  # CPU autocast: bf16
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    runs = {
        "fp32": {},
        "fp16": {"precision": half},
        "fp32_graphs": {"cuda_graphs": True},
        "fp16_graphs": {"precision": half, "cuda_graphs": True},
        "fp32_torch_flow": {"flow_method": "torch"},
    }
    results: dict[str, Any] = {
        "frame_size": list(size), "frames": len(frames), "device": str(device),
        "cpu_threads": cpu_threads, "tf32": False, "half_precision": half,
        "tolerances": TOLERANCES, "graph_tolerance": GRAPH_TOLERANCE, "configs": {},
    }
    outputs: dict[str, list[Any]] = {}
    cpu_torch_flow = None
    for name, fields in runs.items():
        outputs[name] = _run_pipeline(model, frames, device=str(device), **fields)
        reference = truth
        if name == "fp32_torch_flow":
            cpu_torch_flow = _run_pipeline(
                copy.deepcopy(model).cpu(), frames, device="cpu", flow_method="torch"
            )
            reference = cpu_torch_flow
        measured = compare(reference, outputs[name])
        limit = TOLERANCES[name]
        passed = (
            measured["labels"] >= limit["labels"]
            and measured["max_probability"] <= limit["max_probability"]
        )
        entry: dict[str, Any] = {"vs_cpu_fp32": measured, "passed": passed}
        if name.endswith("_graphs"):
            eager = outputs[name.removesuffix("_graphs")]
            against = compare(eager, outputs[name])
            entry["vs_eager"] = against
            entry["passed"] = passed and (
                against["labels"] >= GRAPH_TOLERANCE["labels"]
                and against["max_probability"] <= GRAPH_TOLERANCE["max_probability"]
            )
        if not on_cuda and "precision" in fields:
            # CPU autocast is bf16 (8-bit mantissa), not the fp16 the tolerances are set for:
            # the dry run reports it but does not judge it.
            entry["judged"] = False
        results["configs"][name] = entry
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    results["passed"] = all(
        c["passed"] for c in results["configs"].values() if c.get("judged", True)
    )
    return results


# -- 2. CUDA tests -----------------------------------------------------------------------------
def cuda_tests(check: Check, timeout: float) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    if check.device == "cpu" or not (root / "test").is_dir():
        return {"skipped": "CPU run (CI runs the suite) or no test folder"}
    # Only files whose imports the GPU machine has (torch, numpy, OpenCV; no ROS, no rosbags).
    files = ["test/test_cuda.py", "test/test_fastpath.py", "test/test_pipeline.py",
             "test/test_warp.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
               "-k", "cuda or gpu", *files]
    done = subprocess.run(
        command, cwd=root, capture_output=True, text=True, timeout=timeout, check=False
    )
    (check.out / "pytest.txt").write_text(done.stdout + done.stderr, encoding="utf-8")
    tail = (done.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(command), "returncode": done.returncode, "summary": tail,
            "passed": done.returncode in (0, 5)}  # 5: nothing selected


# -- 3. flow -----------------------------------------------------------------------------------
def flow(check: Check) -> dict[str, Any]:
    from .single_stream import flow_epe

    size = (48, 96) if check.tiny else (256, 512)
    pairs = 2 if check.tiny else 10
    return flow_epe(("zero", "dis", "torch"), pairs=pairs, height=size[0], width=size[1],
                    seeds=(0,) if check.tiny else (0, 1), device=check.device)


# -- 4. benchmark ------------------------------------------------------------------------------
def benchmark(check: Check, kind: str = "main") -> dict[str, Any]:
    """kind "main": every variant and peer, plain / half / CUDA graphs / both; "compile":
    torch.compile of Accel k=5 against the plain reference; "torch_flow": DFF and Accel at
    k=5 with the on-device torch flow instead of DIS, plain and half."""
    from .single_stream import BenchSettings, format_table, run_benchmark, write_plot

    tiny = check.tiny
    on_cuda = check.device != "cpu"
    half = "fp16" if on_cuda else "bf16"
    common: dict[str, Any] = {
        "height": check.height, "width": check.width, "device": check.device,
        "model": check.checkpoint, "reference_backbone": None,
        "frames": 2 if tiny else 30, "warmup": 1 if tiny else 3,
        "clip_frames": 4 if tiny else 24, "breakdown": on_cuda,
    }
    if kind == "compile":
        settings = BenchSettings(
            variants=("reference", "accel"), intervals=(5,), compile=True,
            fast_variants=("accel",), **common,
        )
    elif kind == "torch_flow":
        settings = BenchSettings(
            variants=("reference", "dff", "accel"), intervals=(5,), flow="torch",
            precision=half, **common,
        )
    else:
        peers = ("tv_lraspp_mobilenet_v3_large",) if tiny else (
            "tv_deeplabv3_resnet101", "tv_deeplabv3_resnet50",
            "tv_deeplabv3_mobilenet_v3_large", "tv_lraspp_mobilenet_v3_large",
        )
        settings = BenchSettings(
            variants=("reference", "dff", "deeplab", "accel", *peers),
            intervals=(1, 2) if tiny else (1, 5, 10),
            precision=half, cuda_graphs=on_cuda, **common,
        )
    name = "bench" if kind == "main" else f"bench_{kind}"
    report = run_benchmark(settings, lambda message: print(message, flush=True))
    write_json(report, check.out / f"{name}.json")
    if kind == "main":
        write_plot(report, check.out / "bench.png")
    table = format_table(report)
    print(table, flush=True)
    return {"table": table.splitlines(), "json": f"{name}.json"}


# -- 5. several cameras ------------------------------------------------------------------------
def streams(check: Check) -> dict[str, Any]:
    """One process serving 1, 2, 4 cameras (`process_batch`, one model) against as many
    separate single-camera processes, at the shipped input size on the device."""
    from .streams import StreamsSettings, format_table, run_streams_benchmark, write_plot

    tiny = check.tiny
    settings = StreamsSettings(
        streams=(1, 2) if tiny else (1, 2, 4),
        height=check.height if tiny else 360, width=check.width if tiny else 480,
        frames=2 if tiny else 30, warmup=1 if tiny else None,
        threads=1 if tiny else 4, device=check.device, model=check.checkpoint,
        clip_frames=4 if tiny else 16, timeout_s=120.0 if tiny else 240.0,
    )
    report = run_streams_benchmark(settings, lambda message: print(message, flush=True))
    write_json(report, check.out / "bench_streams.json")
    write_plot(report, check.out / "bench_streams.png")
    table = format_table(report)
    print(table, flush=True)
    return {"table": table.splitlines(), "json": "bench_streams.json"}


def run(check: Check) -> int:
    runner = Runner(check)
    device = torch.device(check.device)
    runner.report["environment"] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiny": check.tiny,
        "checkpoint": check.checkpoint,
        "budget_s": check.budget_s,
    }
    runner.save()
    runner.step("parity", 20, lambda: parity(check))
    runner.step("cuda_tests", 60, lambda: cuda_tests(check, max(30.0, min(120.0, runner.left()))))
    runner.step("flow_epe", 15, lambda: flow(check))
    runner.step("bench", 60, lambda: benchmark(check))
    runner.step("bench_torch_flow", 20, lambda: benchmark(check, "torch_flow"))
    runner.step("bench_streams", 90, lambda: streams(check))
    if check.tiny:
        runner.report["steps"]["bench_compile"] = {"skipped": "tiny run (inductor is slow)"}
    else:
        runner.step("bench_compile", 180, lambda: benchmark(check, "compile"))
    steps = runner.report["steps"]
    failed = list(runner.report["failures"])
    failed += [name for name, step in steps.items() if step.get("passed") is False]
    runner.report["passed"] = not failed
    runner.save()
    print(f"device check: {'PASSED' if not failed else 'FAILED: ' + ', '.join(failed)} "
          f"in {runner.elapsed():.0f} s; results in {check.out}", flush=True)
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m accel_ros.bench.device_check", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the results")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (dry run)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (CPU dry run)")
    parser.add_argument("--checkpoint", default="default",
                        help="weights for parity and configuration for the benchmark")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="skip steps that no longer fit in this many seconds")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args(argv)
    check = Check(out=args.out, device=args.device, tiny=args.tiny, checkpoint=args.checkpoint,
                  budget_s=args.budget_s, height=args.height, width=args.width)
    return run(check)


if __name__ == "__main__":
    sys.exit(main())
