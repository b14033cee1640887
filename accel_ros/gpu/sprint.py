"""The GPU sprint: every training stage of the shipped architecture on one GPU in one command,
then its evaluation, parity and speed, for a short lent GPU slot.

Here, once (writes `.carry/sprint/`, ~29 MB, ignored by git; CamVid frames never enter the
tracked tree):

    python -m accel_ros.gpu.sprint pack --data-root ../shared/camvid

On the GPU machine (device tool: `carry` [".carry"], `timeout_s` 600):

    PYTHONPATH=$PWD python3 -m accel_ros.gpu.sprint run --out $OUT --minutes 6

What it does, on one GPU (bf16 autocast, frames held on the GPU, augmentation on the GPU):
1. unpacks CamVid and builds preset `lite` (N_R EfficientNet-Lite2, N_U Lite0 at half size,
   1024/256-wide N_feat) at output stride 8 (`--output-stride`: the grid of the paper's 720x960
   at stride 16, on CamVid's 360x480) from the packed ImageNet trunks;
2. trains N_R (60 % of `--minutes`), N_U distilled from that N_R (25 %), then the age-aware
   fusion on pairs up to 2 s old (the rest), on CamVid train without the held-out street
   0001TP (`--splits`, `--holdout`; `--holdout none` trains on every frame of the splits);
3. writes the checkpoint (fp16; split into parts of at most 15 MiB, `join` puts them back);
4. evaluates with the streaming pipeline on the held-out street (real frames 1 s apart, and
   synthetic 30 fps motion) and the val clip (inside training sequence 0016E5), as
   `accel-ros eval` does, while `--eval-minutes` last;
5. runs the device check's parity step on the new checkpoint and times reference and Accel
   k=5 per frame.
`$OUT` gets at most 5 files: `sprint_summary.json` (the GPU, every stage, every number,
rewritten after each phase), `sprint.log`, and the checkpoint (1-3 parts).

Device budget (15 minutes per lent slot, start-up included): the machine starts in about 1.5-2
minutes; `--minutes 6` takes about 6 min of training + 0.5 min of set-up + up to 1.5 min of
evaluation + about 0.5 min of parity and timing = about 8.5 min, under the 600 s command
limit; that leaves about 4.5 min: a short rerun (`--minutes 2`) if the first run fails early.
Give the machine back at once after the run.

The CPU dry run (a CI test) trains and evaluates at toy size on a generated pack:

    python -m accel_ros.gpu.sprint run --out /tmp/sprint --device cpu --tiny --pack DIR
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PipelineConfig, preset
from ..data.frames import FrameSet
from ..learn.config import TrainConfig
from ..learn.train import TrainData, load_data, train_model
from ..model import AccelNet, load_checkpoint
from ..stream import AccelSegmenter, resolve_device
from .sprint_pack import load_trunk_weights, pack_camvid, pack_trunks, unpack_camvid

PACK_DIR = Path(".carry/sprint")
SUMMARY_FILE = "sprint_summary.json"
LOG_FILE = "sprint.log"
CHECKPOINT_FILE = "accel_sprint.pt"
PART_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
# Shares of --minutes: reference, update (the fusion stage takes the rest).
STAGE_SHARES = (0.60, 0.25)
# The shipped CPU model on the same protocol (docs/results.md): what a sprint must beat.
CPU_MODEL = {"heldout_1s_reference": 0.497, "heldout_1s_deeplab": 0.359,
             "heldout_motion_accel_k5": 0.497, "val_reference": 0.644}


@dataclass
class SprintConfig:
    """One sprint. `tiny`: toy sizes and a few iterations per stage (the CPU dry run)."""

    out: Path
    pack: Path = PACK_DIR
    minutes: float = 6.0
    eval_minutes: float = 1.5
    device: str = "cuda"
    tiny: bool = False
    output_stride: int = 8
    splits: tuple[str, ...] = ("train",)
    holdout: tuple[str, ...] = ("0001TP",)
    fusion_ages: tuple[float, ...] = (0.033, 0.1, 0.3, 1.0, 2.0)
    batch_size: int = 16
    seed: int = 0

    @property
    def size(self) -> tuple[int, int]:
        return (48, 64) if self.tiny else (360, 480)


class SprintLog:
    """Timestamped lines to stdout and `<out>/sprint.log`, and the summary JSON rewritten
    after every phase (so a run stopped at the command limit still reports what it did)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.summary: dict[str, Any] = {"phases": {}}

    def line(self, message: str) -> None:
        text = f"[{time.monotonic() - self.started:7.1f} s] {message}"
        print(text, flush=True)
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as handle:
            handle.write(text + "\n")

    def append_logs(self, run: Path) -> None:
        """Copy a training run's own logs (the run's, then each stage's) into sprint.log."""
        with open(self.out / LOG_FILE, "a", encoding="utf-8") as handle:
            for path in [run / "log.txt", *sorted(run.glob("*/log.txt"))]:
                handle.write(f"--- {path.relative_to(run)}\n{path.read_text(encoding='utf-8')}")

    def phase(self, name: str, result: Any, started: float) -> None:
        self.summary["phases"][name] = {"seconds": round(time.monotonic() - started, 1),
                                        "result": result}
        self.summary["elapsed_s"] = round(time.monotonic() - self.started, 1)
        (self.out / SUMMARY_FILE).write_text(json.dumps(self.summary, indent=1))
        self.line(f"{name}: done in {self.summary['phases'][name]['seconds']} s")


def environment(device: torch.device) -> dict[str, Any]:
    """The machine, named: GPU, its memory, torch and CUDA versions."""
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__,
                            "python": platform.python_version(), "cpu_count": _cpus()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, multiprocessors=props.multi_processor_count)
    else:
        info["gpu"] = None
    return info


def build_sprint_model(config: SprintConfig) -> AccelNet:
    """Preset `lite` at the sprint's output stride and input size, backbones from the packed
    ImageNet trunks (toy widths when `tiny`)."""
    overrides: dict[str, Any] = {"output_stride": config.output_stride,
                                 "input_size": config.size}
    if config.tiny:
        overrides.update(head_channels=16, update_head_channels=16)
    model = AccelNet(preset("lite", **overrides))
    for branch in (model.reference, model.update):
        assert branch is not None
        load_trunk_weights(branch.backbone, config.pack)
    return model


def train_config(config: SprintConfig, data_root: Path, work: Path) -> TrainConfig:
    """The stages' options: the CPU recipe's optimiser and augmentation, at the GPU's batch,
    precision and time budgets."""
    reference_min, update_min = (config.minutes * share for share in STAGE_SHARES)
    tiny = config.tiny
    return TrainConfig(
        data_root=data_root, data_splits=config.splits, holdout=config.holdout,
        height=config.size[0], width=config.size[1], epochs=2 if tiny else 10_000,
        time_budget=(reference_min, update_min), fusion_epochs=1 if tiny else 40,
        batch_size=2 if tiny else config.batch_size, fusion_batch_size=64,
        max_iters=2 if tiny else None, val_every=1 if tiny else 25, backbone_lr_mult=0.2,
        distill_from="self", fusion_ages=config.fusion_ages, max_age=2.0,
        out=work / "run", seed=config.seed, device=config.device, amp_dtype="bf16",
        augment_on_device=True, half=True,
    )


def write_checkpoint(source: Path, out: Path) -> list[str]:
    """Copy the fp16 checkpoint into `out`, in parts of at most PART_BYTES when larger
    (`<name>.000`, `.001`, ...: `join` concatenates them); returns the file names."""
    data = source.read_bytes()
    if len(data) <= PART_BYTES:
        (out / CHECKPOINT_FILE).write_bytes(data)
        return [CHECKPOINT_FILE]
    names = []
    for number, start in enumerate(range(0, len(data), PART_BYTES)):
        names.append(f"{CHECKPOINT_FILE}.{number:03d}")
        (out / names[-1]).write_bytes(data[start : start + PART_BYTES])
    return names


def join_checkpoint(folder: Path, out: Path) -> Path:
    """The checkpoint a sprint wrote into `folder` (whole or in parts) as one file `out`."""
    whole = folder / CHECKPOINT_FILE
    parts = sorted(folder.glob(f"{CHECKPOINT_FILE}.[0-9][0-9][0-9]"))
    if not whole.is_file() and not parts:
        raise FileNotFoundError(f"no {CHECKPOINT_FILE} or its parts in {folder}")
    data = whole.read_bytes() if whole.is_file() else b"".join(p.read_bytes() for p in parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    load_checkpoint(out)  # refuse a truncated or foreign file now, not at first use
    return out


def evaluate_sets(
    model: AccelNet, data: TrainData, val: FrameSet | None, config: SprintConfig,
    device: torch.device, deadline: float, log: SprintLog,
) -> dict[str, Any]:
    """mIoU per offset / interval of the four modes on the held-out street (real 1 s frames,
    synthetic 30 fps motion) and the val clip, through the streaming pipeline; each set only
    while time is left before `deadline` (time.monotonic())."""
    from ..data.clips import motion_clips, sequence_clips
    from ..learn.evaluate import evaluate_clips, frame_step_seconds, summarise

    held = data.val if data.holdout else None
    sets: list[tuple[str, Callable[[int], list[Any]], int]] = []
    if held is not None:
        name = "+".join(data.holdout)
        held_step = frame_step_seconds(held)
        sets.append((f"heldout_{name}_real", lambda length: list(sequence_clips(
            held.images, held.labels, held.sequences, length, held_step, held.names)), 2))
        sets.append((f"heldout_{name}_motion", lambda length: list(motion_clips(
            held.images, held.labels, length, config.seed, held.names)), 9))
    if val is not None:
        val_step = frame_step_seconds(val)
        sets.append(("val_clip", lambda length: list(sequence_clips(
            val.images, val.labels, val.sequences, length, val_step, val.names)), 9))
    pipeline = PipelineConfig(device=str(device), input_size=config.size)
    results: dict[str, Any] = {}
    for name, clips_of, max_offset in sets:
        if time.monotonic() > deadline:
            results[name] = "skipped: the evaluation time was spent"
            continue
        if config.tiny:
            max_offset = 1
        clips = clips_of(max_offset + 1)[: 2 if config.tiny else None]
        started = time.monotonic()
        meters = evaluate_clips(model, clips, max_offset, pipeline=pipeline)
        summary = summarise(meters, model.config.class_names)
        results[name] = {
            "clips": len(clips), "offset_step_s": round(clips[0].frame_time_s, 4),
            "per_offset": summary["per_offset"], "per_interval": summary["per_interval"],
            "seconds": round(time.monotonic() - started, 1)}
        log.line(f"eval {name}: " + ", ".join(
            f"{mode} {100 * values['1']:.1f}" for mode, values in summary["per_offset"].items()
            if "1" in values))
    return results


def time_modes(
    model: AccelNet, config: SprintConfig, device: torch.device, frames: int = 40
) -> dict[str, Any]:
    """Median ms per frame of the reference on every frame and of Accel k=5 (flow, warp, N_U,
    fusion; keyframes included) on a synthetic clip at the input size, after a warm-up."""
    from ..data.synthetic import generate_clip

    if config.tiny:
        frames = 6
    clip = [f.image for f in generate_clip(frames, config.size[0], config.size[1], seed=5)]
    result: dict[str, Any] = {"frames": frames, "size": list(config.size)}
    for mode in ("reference", "accel"):
        segmenter = AccelSegmenter(model, PipelineConfig(mode=mode, keyframe_interval=5,
                                                         device=str(device)))
        for frame in clip[:5]:
            segmenter.process(frame)
        segmenter.reset()
        times = [segmenter.process(frame).timings["total"] for frame in clip]
        segmenter.close()
        result[f"{mode}_ms"] = round(float(np.median(times)), 2)
        result[f"{mode}_mean_ms"] = round(float(np.mean(times)), 2)
    result["accel_k5_over_reference"] = round(result["accel_mean_ms"] / result["reference_mean_ms"],
                                              3)
    return result


def parity_check(checkpoint: Path, config: SprintConfig, work: Path) -> dict[str, Any]:
    """The device check's parity step (accel_ros.gpu.check, called, not copied) on the
    new checkpoint: CPU fp32 against the device's fp32, fp16, CUDA graphs and torch flow."""
    from ..bench.common import Deadline
    from .check import Check, parity

    check = Check(out=work / "device_check", device=config.device, tiny=config.tiny,
                  checkpoint=str(checkpoint), budget_s=90.0)
    report = parity(check, Deadline.after(30.0 if config.tiny else 90.0))
    return {"passed": report.get("passed"), "reason": report.get("reason"),
            "not_run": report.get("not_run"),
            "configs": {name: {key: entry.get(key) for key in ("vs_cpu_fp32", "passed")}
                        for name, entry in report.get("configs", {}).items()}}


def run_sprint(config: SprintConfig) -> dict[str, Any]:
    """Everything the module docstring lists; returns the summary it wrote."""
    log = SprintLog(config.out)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log.summary["environment"] = environment(device)
    log.summary["config"] = {k: str(v) if isinstance(v, Path) else v
                             for k, v in dataclasses.asdict(config).items()}
    log.summary["cpu_model"] = CPU_MODEL
    work = Path(tempfile.mkdtemp(prefix="accel_sprint_"))
    try:
        started = time.monotonic()
        root = unpack_camvid(config.pack, work / "camvid")
        model = build_sprint_model(config)
        options = train_config(config, root, work)
        data = load_data(options, model.config.num_classes)
        val_clip = _val_clip(options, data)
        log.phase("setup", {"train_frames": data.manifest(), "validation": data.val_name,
                            "model": model.config.to_dict()}, started)

        started = time.monotonic()
        final = train_model(model, data, options, device)
        log.append_logs(options.out)
        _, extra = load_checkpoint(final)
        files = write_checkpoint(final, config.out)
        log.summary["checkpoint"] = {"files": files, "bytes": final.stat().st_size,
                                     "sha256": hashlib.sha256(final.read_bytes()).hexdigest()}
        log.phase("train", {"stages": extra.get("stages"), "train_data": extra.get("train_data")},
                  started)

        started = time.monotonic()
        model = load_checkpoint(final)[0].to(device)
        deadline = time.monotonic() + 60 * config.eval_minutes
        log.phase("eval", evaluate_sets(model, data, val_clip, config, device, deadline, log),
                  started)
        started = time.monotonic()
        log.phase("speed", time_modes(model, config, device), started)
        started = time.monotonic()
        log.phase("parity", parity_check(final, config, work), started)
        return log.summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _val_clip(options: TrainConfig, data: TrainData) -> FrameSet:
    """The val clip for evaluation: the run's validation frames when it validates on val,
    else the val split loaded on its own."""
    from ..data.frames import load_frames

    if not data.holdout:
        return data.val
    return load_frames("camvid", options.data_root, "val", 11, options.limit, options.size)


def _cpus() -> int:
    import os

    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m accel_ros.gpu.sprint",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pack = commands.add_parser("pack", help="write CamVid and the ImageNet trunks for carrying")
    pack.add_argument("--data-root", type=Path, required=True, help="CamVid (SegNet layout)")
    pack.add_argument("--out", type=Path, default=PACK_DIR)
    pack.add_argument("--quality", type=int, default=80, help="JPEG quality of the frames")
    run = commands.add_parser("run", help="train, evaluate and check on one GPU")
    defaults = SprintConfig(out=Path("."))
    run.add_argument("--out", type=Path, required=True, help="folder for the <= 5 files")
    run.add_argument("--pack", type=Path, default=defaults.pack)
    run.add_argument("--minutes", type=float, default=defaults.minutes,
                     help="training minutes (all stages)")
    run.add_argument("--eval-minutes", type=float, default=defaults.eval_minutes)
    run.add_argument("--device", default=defaults.device)
    run.add_argument("--tiny", action="store_true", help="toy sizes (the CPU dry run)")
    run.add_argument("--output-stride", type=int, choices=(8, 16),
                     default=defaults.output_stride)
    run.add_argument("--splits", nargs="+", choices=("train", "val"), default=defaults.splits)
    run.add_argument("--holdout", nargs="+", default=defaults.holdout,
                     help='held-out sequences ("none": train on every frame of the splits)')
    run.add_argument("--batch-size", type=int, default=defaults.batch_size)
    run.add_argument("--seed", type=int, default=defaults.seed)
    join = commands.add_parser("join", help="one checkpoint file from a sprint's parts")
    join.add_argument("folder", type=Path)
    join.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "pack":
        written = [pack_camvid(args.data_root, args.out, args.quality), *pack_trunks(args.out)]
        for path in written:
            print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    if args.command == "join":
        print(join_checkpoint(args.folder, args.out))
        return 0
    config = SprintConfig(
        out=args.out, pack=args.pack, minutes=args.minutes, eval_minutes=args.eval_minutes,
        device=args.device, tiny=args.tiny, output_stride=args.output_stride,
        splits=tuple(args.splits), batch_size=args.batch_size, seed=args.seed,
        holdout=tuple(s for s in args.holdout if s.lower() != "none"))
    summary = run_sprint(config)
    parity = summary["phases"].get("parity", {}).get("result", {})
    return 0 if parity.get("passed") or config.tiny else 1


if __name__ == "__main__":
    sys.exit(main())
