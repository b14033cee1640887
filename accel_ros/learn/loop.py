"""The one epoch loop every training stage runs.

Each epoch shuffles the stage's samples with a generator seeded by (seed, stage, epoch), so a
resumed run draws what an uninterrupted one would have; the poly learning rate follows the
iterations or the wall-clock budget, whichever runs out first (a time-limited CPU run still
anneals); every epoch ends with a metrics row and resumable state, and the stage with
`final.pt`. A stage says what it does through `StageSteps` and how it iterates through
`StagePlan`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..model import save_checkpoint
from ..stream.fastpath import AUTOCAST_DTYPES
from .config import STAGES
from .records import StageRun, log_line, save_state


@dataclass(frozen=True)
class StagePlan:
    """How a stage iterates: `count` samples per epoch in batches of `batch_size` (with
    `drop_last` the last partial batch is left out, as `torch.utils.data.DataLoader` does) for
    `epochs` epochs or `max_iters` iterations, whichever ends first; the learning rate anneals
    from `base_lr` over those iterations or `budget_min` minutes, whichever run out first.
    Validation runs every `val_every` epochs and after the last; `amp` allows CUDA mixed
    precision (unless the run's `no_amp` forbids it)."""

    epochs: int
    count: int
    batch_size: int
    base_lr: float
    max_iters: int | None = None
    budget_min: float | None = None
    drop_last: bool = True
    val_every: int = 1
    amp: bool = True

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_last:
            return max(1, self.count // self.batch_size)
        return max(1, math.ceil(self.count / self.batch_size))

    @property
    def total_iters(self) -> int:
        total = self.steps_per_epoch * self.epochs
        return total if self.max_iters is None else min(total, self.max_iters)

    def describe(self) -> str:
        return (f"{self.steps_per_epoch} it/epoch, up to {self.total_iters} iterations, "
                f"budget {self.budget_min or '-'} min")


@dataclass(frozen=True)
class StageSteps:
    """What a stage does inside the loop.

    train_mode(): put the model in training mode (what trains, whose BatchNorm statistics
    move). batch_loss(indices, generator): the loss of the batch of samples `indices` (numpy,
    into the stage's `count` samples); `generator` is the epoch's (augmentation draws).
    validate(): (mIoU, pixel accuracy) on the validation data, or None without any.
    """

    train_mode: Callable[[], None]
    batch_loss: Callable[[np.ndarray, torch.Generator], torch.Tensor]
    validate: Callable[[], tuple[float, float]] | None = None


def poly_lr(base_lr: float, progress: float, power: float = 0.9) -> float:
    """Poly schedule: base_lr * (1 - progress) ** power, progress in [0, 1]."""
    return base_lr * max(0.0, 1.0 - min(progress, 1.0)) ** power


def schedule_progress(
    iteration: int, total: int, elapsed_s: float, budget_min: float | None
) -> float:
    """How far the schedule is, in [0, 1+): iterations done, or budget spent if further."""
    progress = iteration / max(total, 1)
    if budget_min:
        progress = max(progress, elapsed_s / (60.0 * budget_min))
    return progress


def shuffle_seed(seed: int, stage: str, epoch: int) -> int:
    """Seed of one epoch's shuffle and augmentation draws: (seed, stage, epoch) alone decide
    it. The fusion stage keeps the formula it was first released with (no stage term), so its
    earlier runs reproduce."""
    if stage == "fusion":
        return seed * 7919 + epoch
    return seed * 7919 + epoch * 31 + STAGES.index(stage)


def run_epochs(run: StageRun, plan: StagePlan, steps: StageSteps) -> dict[str, Any]:
    """Train from where `run` stands to the end of `plan`; returns the stage summary
    (epochs, iterations, final validation mIoU, seconds)."""
    use_amp = plan.amp and run.device.type == "cuda" and not run.config.no_amp
    # bf16 keeps fp32's exponent range: no loss scaling.
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and run.config.amp_dtype == "fp16")
    total = plan.total_iters
    done = (run.iteration >= total
            or schedule_progress(run.iteration, total, run.elapsed, plan.budget_min) >= 1)
    while not done and run.epoch < plan.epochs:
        losses, stopped = _train_epoch(run, plan, steps, scaler, use_amp)
        if not losses:
            break
        run.epoch += 1
        last = stopped or run.epoch == plan.epochs
        validate = steps.validate is not None and (run.epoch % plan.val_every == 0 or last)
        _end_epoch(run, float(np.mean(losses)), steps.validate if validate else None)
        done = stopped or run.iteration >= total
    return _finish_stage(run, steps)


def _train_epoch(
    run: StageRun,
    plan: StagePlan,
    steps: StageSteps,
    scaler: torch.amp.GradScaler,
    use_amp: bool,
) -> tuple[list[float], bool]:
    """One epoch's steps; returns their losses and whether the schedule ran out within it."""
    from tqdm import tqdm

    steps.train_mode()
    generator = torch.Generator().manual_seed(shuffle_seed(run.config.seed, run.stage, run.epoch))
    order = torch.randperm(plan.count, generator=generator).numpy()
    losses: list[float] = []
    stopped = False
    started = time.monotonic()
    bar = tqdm(range(plan.steps_per_epoch), desc=f"{run.stage} epoch {run.epoch + 1}/{plan.epochs}",
               file=sys.stderr, mininterval=30 if not sys.stderr.isatty() else 0.5, leave=False)
    for step in bar:
        progress = schedule_progress(run.iteration, plan.total_iters,
                                     run.elapsed + time.monotonic() - started, plan.budget_min)
        if progress >= 1:
            stopped = True
            break
        lr = poly_lr(plan.base_lr, progress)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        chosen = order[step * plan.batch_size : (step + 1) * plan.batch_size]
        with torch.autocast(run.device.type, dtype=AUTOCAST_DTYPES[run.config.amp_dtype],
                            enabled=use_amp):
            loss = steps.batch_loss(chosen, generator)
        run.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(run.optimizer)
        scaler.update()
        losses.append(loss.item())
        run.iteration += 1
        bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{lr:.2e}")
    bar.close()
    run.elapsed += time.monotonic() - started
    return losses, stopped


def _end_epoch(
    run: StageRun, train_loss: float, validate: Callable[[], tuple[float, float]] | None
) -> None:
    """Validate (when given a validator), record the epoch's row and save resumable state."""
    val_miou, val_acc = validate() if validate is not None else (None, None)
    row = {"stage": run.stage, "epoch": run.epoch, "iteration": run.iteration,
           "lr": run.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
           "val_miou": val_miou, "val_pixel_acc": val_acc, "elapsed_s": round(run.elapsed, 1)}
    run.log.add(row)
    log_line(run.folder, json.dumps(row))
    save_state(run)


def _finish_stage(run: StageRun, steps: StageSteps) -> dict[str, Any]:
    """Write `final.pt` with the last validation mIoU (validating now if the last epoch did
    not) and return the stage summary."""
    final_miou = run.log.rows[-1]["val_miou"] if run.log.rows else None
    if steps.validate is not None and final_miou is None:
        final_miou, _ = steps.validate()
    save_checkpoint(run.folder / "final.pt", run.model, extra=run.extra(final_miou))
    log_line(run.folder, f"{run.stage}: finished after {run.epoch} epochs / {run.iteration} "
             f"iterations, val mIoU {final_miou}")
    return {"epochs": run.epoch, "iterations": run.iteration, "val_miou": final_miou,
            "elapsed_s": round(run.elapsed, 1)}
