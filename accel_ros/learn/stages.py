"""The paper's training stages, each a setup for the one epoch loop (`loop.run_epochs`).

1. `reference`: N_R + its task head on single labelled frames.
2. `update`: N_U + its task head on single labelled frames, optionally also on a teacher
   reference's soft scores (`distill`).
3. `fusion`: the 1x1 score fusion on cached (keyframe, current) pairs (`pair_cache`), both
   branches frozen; or an age-aware fusion on pairs of every age up to seconds (`age_pairs`).
Branch stages augment each frame on the host, or whole batches on the device
(`augment_on_device`, and always when distilling: the teacher's scores follow the frames).
4. `joint` (optional): N_U and the fusion together on the same pairs, loss on the fused scores
   plus `joint_aux_weight` x N_U's own loss; the reference stays frozen, so its warped scores
   are still cached.

Each returns its summary (epochs, iterations, final validation mIoU, seconds, ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.frames import FrameSet, resize_pair, to_tensor
from ..metrics import ConfusionMeter
from ..model import AccelNet, SegmentationBranch
from ..model.fusion import AgeScoreFusion
from .age_pairs import build_age_pair_cache
from .augment import augment
from .batch_augment import augment_batch
from .config import TrainConfig
from .distill import distillation_loss, load_teacher, teacher_scores
from .loop import StagePlan, StageSteps, run_epochs
from .optim import (
    branch_param_groups,
    build_criterion,
    build_optimizer,
    train_only,
)
from .pair_cache import PairCache, build_pair_cache, fused_logits, update_scores
from .records import StageRun, begin_stage, log_line


def stage_plan(config: TrainConfig, stage: str, count: int) -> StagePlan:
    """How `stage` iterates over its `count` training samples."""
    if stage == "fusion":
        # A 1x1 conv on cached score maps: every pair is used each epoch (the last batch may be
        # partial), validating on cached maps is cheap enough for every epoch, and fp16 would
        # only cost precision.
        return StagePlan(config.fusion_epochs, count, config.fusion_batch_size,
                         config.fusion_lr, config.max_iters, drop_last=False, amp=False)
    return StagePlan(config.epochs_of(stage), count, config.batch_size,
                     config.joint_lr if stage == "joint" else config.lr, config.max_iters,
                     config.budget_of(stage), val_every=config.val_every)


# --------------------------------------------------------------------------------------------
# stages 1 and 2: one branch on single frames
# --------------------------------------------------------------------------------------------
def _backbone_mult(config: TrainConfig) -> float:
    """The backbone's learning-rate factor; unresolved (None) counts as from scratch."""
    return 1.0 if config.backbone_lr_mult is None else config.backbone_lr_mult


def _branch(model: AccelNet, branch: str) -> SegmentationBranch:
    net = model.reference if branch == "reference" else model.update
    if net is None:
        raise ValueError(f"model has no {branch} branch")
    return net


def branch_logits(model: AccelNet, branch: str, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, K, H, W) logits of the reference or update branch alone."""
    return model.upsample(_branch(model, branch)(images), images.shape[-2:])


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
    config: TrainConfig,
    folder: Path,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Train `model.<branch>` with cross-entropy (void ignored) on augmented crops; the update
    branch with `config.distill_from` also learns a teacher's soft scores (`distill.py`)."""
    net = _branch(model, branch)
    folder.mkdir(parents=True, exist_ok=True)
    optimizer = build_optimizer(branch_param_groups(net, _backbone_mult(config)),
                                config.optimizer, config.lr, config.weight_decay)
    plan = stage_plan(config, branch, len(train))
    run = begin_stage(StageRun(branch, model, optimizer, config, folder, device))
    criterion = build_criterion(weights, device)
    distil = branch == "update" and config.distill_from is not None
    log_line(folder, f"{branch}: {len(train)} frames, {plan.describe()}, size {config.size}, "
             f"device {device}" + (f", distilled from {config.distill_from} (weight "
                                   f"{config.distill_weight}, T {config.distill_temperature})"
                                   if distil else ""))

    def train_mode() -> None:
        model.eval()
        net.train()  # only the branch being trained updates its BatchNorm statistics

    if distil or config.augment_on_device:
        batch_loss = _device_batch_loss(model, branch, train, config, device, criterion, folder)
    else:
        batch_loss = _host_batch_loss(model, branch, train, config, device, criterion)

    def validate() -> tuple[float, float]:
        assert val is not None
        return evaluate_branch(model, branch, val, config.size, device)

    return run_epochs(run, plan, StageSteps(train_mode, batch_loss,
                                            validate if val is not None else None))


def _host_batch_loss(
    model: AccelNet,
    branch: str,
    train: FrameSet,
    config: TrainConfig,
    device: torch.device,
    criterion: torch.nn.Module,
) -> Callable[[np.ndarray, torch.Generator], torch.Tensor]:
    """A branch stage's batch loss with each frame augmented on the host (`augment.py`), as
    the shipped checkpoint was trained."""

    def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        batch = [
            augment(train.images[i], train.labels[i], config.crop_size, generator,
                    config.scale_range, reference_height=config.height, jitter=config.jitter)
            for i in chosen
        ]
        images = torch.stack([b[0] for b in batch]).to(device)
        targets = torch.stack([b[1] for b in batch]).to(device)
        return criterion(branch_logits(model, branch, images).float(), targets)

    return batch_loss


def _device_batch_loss(
    model: AccelNet,
    branch: str,
    train: FrameSet,
    config: TrainConfig,
    device: torch.device,
    criterion: torch.nn.Module,
    folder: Path,
) -> Callable[[np.ndarray, torch.Generator], torch.Tensor]:
    """A branch stage's batch loss with the frames held on `device` (uint8, at the input
    size) and each batch augmented there as a whole (`batch_augment`): what a GPU run
    needs, and what distillation needs anywhere (the teacher's scores follow the frame's
    geometry). With `config.distill_from` on the update branch, the teacher's scores are
    computed once (kept in `<folder>/teacher_scores.pt` for resumed runs)."""
    pairs = [resize_pair(image, labels, config.size)
             for image, labels in zip(train.images, train.labels, strict=True)]
    frames = torch.from_numpy(np.stack([p[0] for p in pairs])).permute(0, 3, 1, 2).to(device)
    labels = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
    scores = None
    if branch == "update" and config.distill_from is not None:
        cache = folder / "teacher_scores.pt"
        if cache.is_file():
            scores = torch.load(cache, weights_only=True)
        else:
            log_line(folder, f"update: teacher scores of {len(train)} frames "
                     f"({config.distill_from}) ...")
            teacher = load_teacher(config.distill_from, model)
            scores = teacher_scores(teacher, train, config.size, device)
            torch.save(scores, cache)
        scores = scores.to(device)

    def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
        index = torch.as_tensor(chosen, device=device)
        batch = augment_batch(frames[index], labels[index], config.crop_size, generator,
                              config.scale_range, config.height,
                              soft=None if scores is None else scores[index],
                              jitter=config.jitter)
        logits = branch_logits(model, branch, batch.images)
        if batch.soft is None:
            return criterion(logits.float(), batch.labels)
        return distillation_loss(logits, batch.soft, batch.labels, batch.inside, criterion,
                                 config.distill_weight, config.distill_temperature)

    return batch_loss


# --------------------------------------------------------------------------------------------
# stages 3 and 4: on (keyframe, current) pairs, reference frozen
# --------------------------------------------------------------------------------------------
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
    size = (int(cache.labels.shape[-2]), int(cache.labels.shape[-1]))
    if live_update:
        batch_size = min(batch_size, 8)  # whole frames through N_U, not score maps
    for start in range(0, len(cache), batch_size):
        index = torch.arange(start, min(start + batch_size, len(cache)))
        update = (update_scores(model, cache.frames(index, device)) if live_update
                  else cache.update[index].to(device))
        logits = fused_logits(model, cache.warped[index].to(device), update, size,
                              cache.ages_of(index).to(device))
        meter.update(logits.argmax(1).cpu(), cache.labels[index])
    return meter.mean_iou(), meter.pixel_accuracy()


def _score_fusion_parts(model: AccelNet) -> tuple[SegmentationBranch, torch.nn.Module]:
    """(N_U, fusion) of a score-fusion model; the pair stages train nothing else."""
    if model.fusion is None or model.fuses_features or model.update is None:
        raise ValueError("the fusion and joint stages train score fusion; this model has none")
    return model.update, model.fusion


def make_age_aware(model: AccelNet, ages: tuple[float, ...]) -> AccelNet:
    """Give `model` an age-aware fusion with knots `ages` (s), every knot starting from its
    present one-for-all-ages fusion (nothing to do when it has these knots already)."""
    ages = tuple(float(age) for age in ages)
    if model.config.fusion_ages == ages:
        return model
    _, fusion = _score_fusion_parts(model)
    if model.fusion_uses_age:
        raise ValueError(f"the model's fusion has age knots {model.config.fusion_ages}, not "
                         f"{ages}: train from a model with a plain fusion")
    device = next(fusion.parameters()).device
    model.fusion = AgeScoreFusion(model.config.num_classes, ages).copy_plain(fusion).to(device)
    model.config = dataclasses.replace(model.config, fusion_ages=ages)
    return model


def _age_pair_caches(
    model: AccelNet, train: FrameSet, val: FrameSet | None, config: TrainConfig,
    device: torch.device,
) -> tuple[PairCache, PairCache | None]:
    """Pairs at keyframe ages up to `config.max_age` (real windows and synthetic motion at
    several frame rates) for training, and of the validation frames."""
    def build(frames: FrameSet, seed: int) -> PairCache:
        return build_age_pair_cache(model, frames, config.size, device, config.max_age,
                                    config.flow_scale, seed, steps=config.motion_steps)

    return build(train, config.seed), build(val, config.seed + 1) if val else None


def _pair_caches(
    model: AccelNet,
    train: FrameSet,
    val: FrameSet | None,
    config: TrainConfig,
    device: torch.device,
    keep_frames: bool,
) -> tuple[PairCache, PairCache | None]:
    """Training pairs (half the clips mirrored) and validation pairs (their own motion)."""
    offsets = config.offsets
    train_cache = build_pair_cache(model, train, offsets, config.size, device, config.flow_scale,
                                   seed=config.seed, flip=True, keep_frames=keep_frames)
    val_cache = (
        build_pair_cache(model, val, offsets, config.size, device, config.flow_scale,
                         seed=config.seed + 1, keep_frames=keep_frames)
        if val else None
    )
    return train_cache, val_cache


def _log_start_miou(run: StageRun, cache: PairCache | None, live: bool, what: str) -> None:
    """Log the validation mIoU the stage starts from (fresh starts only)."""
    if cache is not None and run.epoch == 0:
        before, _ = evaluate_fusion(run.model, cache, run.device, live_update=live)
        log_line(run.folder, f"{run.stage}: val mIoU {what} {before:.4f}")


def train_fusion(
    model: AccelNet,
    train: FrameSet,
    val: FrameSet | None,
    config: TrainConfig,
    folder: Path,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Train the 1x1 fusion conv (initialised to the average) on cached pair outputs; with
    `config.fusion_ages`, an age-aware fusion (every knot starting from the present fusion)
    on pairs of every age up to `config.max_age`."""
    folder.mkdir(parents=True, exist_ok=True)
    if config.fusion_ages:
        make_age_aware(model, config.fusion_ages)
        log_line(folder, f"fusion: age knots {config.fusion_ages} s; caching frozen-branch "
                 f"outputs of real windows and synthetic motion up to {config.max_age} s ...")
        cache, val_cache = _age_pair_caches(model, train, val, config, device)
    else:
        log_line(folder, f"fusion: caching frozen-branch outputs for offsets {config.offsets} "
                 "of synthetic 30 fps camera-motion clips ...")
        cache, val_cache = _pair_caches(model, train, val, config, device, keep_frames=False)
    _, fusion = _score_fusion_parts(model)
    log_line(folder, f"fusion: {len(cache)} train pairs, "
             f"{len(val_cache) if val_cache is not None else 0} val pairs")
    with train_only(model, fusion):
        optimizer = build_optimizer(fusion.parameters(), config.optimizer, config.fusion_lr, 0.0)
        run = begin_stage(StageRun("fusion", model, optimizer, config, folder, device))
        criterion = build_criterion(weights, device)
        plan = stage_plan(config, "fusion", len(cache))
        _log_start_miou(run, val_cache, live=False,
                        what="before training (every knot as the present fusion)"
                        if config.fusion_ages else "with the average initialisation")

        def train_mode() -> None:
            model.eval()
            fusion.train()

        def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
            logits = fused_logits(model, cache.warped[chosen].to(device),
                                  cache.update[chosen].to(device), config.size,
                                  cache.ages_of(chosen).to(device))
            return criterion(logits, cache.labels[chosen].long().to(device))

        def validate() -> tuple[float, float]:
            assert val_cache is not None
            return evaluate_fusion(model, val_cache, device)

        summary = run_epochs(run, plan, StageSteps(train_mode, batch_loss,
                                                   validate if val_cache is not None else None))
    if config.fusion_ages:
        return {**summary, "ages": list(config.fusion_ages), "max_age": config.max_age,
                "pairs": len(cache)}
    return {**summary, "offsets": list(config.offsets)}


def train_joint(
    model: AccelNet,
    train: FrameSet,
    val: FrameSet | None,
    config: TrainConfig,
    folder: Path,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Fine-tune N_U and the score fusion end to end on cached warped reference scores.

    Loss: cross-entropy of the fused scores + `config.joint_aux_weight` x that of N_U's own
    scores. N_U's BatchNorm statistics adapt; the reference branch is untouched.
    """
    update, fusion = _score_fusion_parts(model)
    aux = config.joint_aux_weight
    folder.mkdir(parents=True, exist_ok=True)
    log_line(folder, f"joint: caching warped reference scores for offsets {config.offsets} ...")
    cache, val_cache = _pair_caches(model, train, val, config, device, keep_frames=True)
    with train_only(model, update, fusion):
        groups = branch_param_groups(update, _backbone_mult(config))
        # The 1x1 fusion is tiny and starts trained; it moves at the fusion stage's 10x step.
        groups.append({"params": list(fusion.parameters()), "lr_mult": 10.0})
        optimizer = build_optimizer(groups, config.optimizer, config.joint_lr,
                                    config.weight_decay)
        run = begin_stage(StageRun("joint", model, optimizer, config, folder, device))
        criterion = build_criterion(weights, device)
        plan = stage_plan(config, "joint", len(cache))
        log_line(folder, f"joint: {len(cache)} train pairs, {plan.describe()}, aux weight {aux}")
        _log_start_miou(run, val_cache, live=True, what="before fine-tuning")

        def train_mode() -> None:
            model.eval()
            update.train()

        def batch_loss(chosen: np.ndarray, generator: torch.Generator) -> torch.Tensor:
            targets = cache.labels[chosen].long().to(device)
            own = update_scores(model, cache.frames(chosen, device))
            fused = fused_logits(model, cache.warped[chosen].to(device), own, config.size,
                                 cache.ages_of(chosen).to(device))
            loss = criterion(fused.float(), targets)
            if aux > 0:
                loss = loss + aux * criterion(model.upsample(own, config.size).float(), targets)
            return loss

        def validate() -> tuple[float, float]:
            assert val_cache is not None
            return evaluate_fusion(model, val_cache, device, live_update=True)

        summary = run_epochs(run, plan, StageSteps(train_mode, batch_loss,
                                                   validate if val_cache is not None else None))
    return {**summary, "offsets": list(config.offsets), "aux_weight": aux}

