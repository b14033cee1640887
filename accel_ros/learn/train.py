"""A training run: build the model, load the data, train the stages a `TrainConfig` names
(`stages.py`) and write `<out>/accel_camvid.pt`.

Every stage writes `<out>/<stage>/{last.pt, last_state.pt, final.pt, metrics.csv, metrics.json,
curves.png}`; `resume` continues an interrupted run, skipping finished stages.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import preset
from ..data.frames import FrameSet, load_frames
from ..model import AccelNet, load_checkpoint, load_model, save_checkpoint
from ..stream import resolve_device
from .config import STAGES, TrainConfig
from .optim import class_weights
from .records import log_line, plot_curves, stage_finished
from .stages import make_age_aware, train_branch, train_fusion, train_joint

FINAL_NAME = "accel_camvid.pt"


@dataclass
class TrainData:
    """The frames a run trains and validates on, and how to name them."""

    train: FrameSet
    val: FrameSet
    val_name: str
    holdout: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train",)

    @property
    def train_name(self) -> str:
        without = f", without {'+'.join(self.holdout)}" if self.holdout else ""
        return f"{'+'.join(self.splits)} ({len(self.train)} frames{without})"

    def manifest(self) -> dict[str, Any]:
        """What the run trained on, as data (kept in the checkpoint's `extra`): splits,
        held-out sequences, frames per sequence."""
        counts: dict[str, int] = {}
        for sequence in self.train.sequences:
            name = sequence.split("#")[0]
            counts[name] = counts.get(name, 0) + 1
        return {"splits": list(self.splits), "holdout": list(self.holdout),
                "frames": len(self.train), "frames_per_sequence": counts}


def run_training(config: TrainConfig) -> Path:
    """Train the stages `config` names; returns the path of the final checkpoint."""
    torch.manual_seed(config.seed)
    if config.data == "camvid" and config.data_root is None:
        raise ValueError("--data camvid needs --data-root (folder with train/ trainannot/ ...)")
    device = resolve_device(config.device)
    config.out.mkdir(parents=True, exist_ok=True)
    model, config = build_model(config)
    data = load_data(config, model.config.num_classes)
    return train_model(model, data, config, device)


def train_model(
    model: AccelNet, data: TrainData, config: TrainConfig, device: torch.device
) -> Path:
    """Train the stages `config` names on `data`, starting from `model` (its backbones
    already loaded as the run wants them); returns the path of the final checkpoint."""
    config.out.mkdir(parents=True, exist_ok=True)
    log_line(config.out, f"data {config.data}: {len(data.train)} train, {len(data.val)} "
             f"validation ({data.val_name}) frames; model {model.config.reference_backbone}/"
             f"{model.config.update_backbone}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters")
    weights = class_weights(data.train, model.config.num_classes, config.class_weights)
    if weights is not None:
        log_line(config.out, f"class weights ({config.class_weights}): "
                 f"{np.round(weights.numpy(), 2).tolist()}")
    model.to(device)
    summary = _run_stages(model, data, config, device, weights)
    return _save_final(model, data, config, summary)


def build_model(config: TrainConfig) -> tuple[AccelNet, TrainConfig]:
    """The model the run starts from (the `init` checkpoint, or the preset with the config's
    overrides and ImageNet backbones as asked), and the config with `backbone_lr_mult`
    resolved: 0.2 when a backbone starts from ImageNet weights, else 1 (a checkpoint's
    backbones are already trained)."""
    if config.init is not None:
        model, pretrained = _from_checkpoint(config), False
    else:
        model = AccelNet(preset(config.preset, **_model_overrides(config)))
        pretrained = _load_imagenet(model, config)
    if config.backbone_lr_mult is None:
        config = dataclasses.replace(config, backbone_lr_mult=0.2 if pretrained else 1.0)
    return model, config


def _from_checkpoint(config: TrainConfig) -> AccelNet:
    model = load_model(config.init).model
    if config.update_input_scale is None:
        return model
    # Weights do not depend on the update branch's input scale: same tensors, new config.
    rescaled = AccelNet(dataclasses.replace(
        model.config, update_input_scale=config.update_input_scale))
    rescaled.load_state_dict(model.state_dict())
    return rescaled


def _model_overrides(config: TrainConfig) -> dict[str, Any]:
    """ModelConfig fields the config overrides in its preset."""
    overrides: dict[str, Any] = {}
    if config.update_input_scale is not None:
        overrides["update_input_scale"] = config.update_input_scale
    if config.head_channels is not None:
        overrides["head_channels"] = config.head_channels
    if config.reference_backbone is not None:
        overrides["reference_backbone"] = config.reference_backbone
    if config.update_backbone is not None:
        overrides["update_backbone"] = (
            None if config.update_backbone.lower() == "none" else config.update_backbone
        )
    overrides["input_size"] = config.size
    return overrides


def _load_imagenet(model: AccelNet, config: TrainConfig) -> bool:
    """Start the backbones from ImageNet weights as `config.imagenet` asks ("auto": when
    found); returns whether any did."""
    pretrained = False
    for branch, path in (("reference", config.backbone_weights),
                         ("update", config.update_backbone_weights)):
        if getattr(model, branch) is None or config.imagenet == "no":
            continue
        try:
            missing = model.load_backbone(branch, path)
        except FileNotFoundError as error:
            if config.imagenet == "yes" or path is not None:
                raise
            print(f"{branch} backbone: from scratch ({error})", file=sys.stderr)
            continue
        pretrained = True
        if missing:
            print(f"{branch} backbone: {len(missing)} tensors not in the file", file=sys.stderr)
    return pretrained


def load_data(config: TrainConfig, num_classes: int) -> TrainData:
    """Training frames (every split of `data_splits`, less the held-out sequences), and
    validation frames: the held-out sequences when there are any, else the val split (which a
    run that trains on it only remembers)."""
    holdout = (tuple(s for s in config.holdout if s.lower() != "none")
               if config.data == "camvid" else ())

    def frames(split: str, **which: Any) -> FrameSet:
        return load_frames(config.data, config.data_root, split, num_classes, config.limit,
                           config.size, config.seed, **which)

    train = join_frames({split: frames(split, exclude=holdout) for split in config.data_splits})
    if holdout:
        # Model selection on a street the model never sees (val lies inside training
        # sequence 0016E5, so it measures memory, not generalisation).
        return TrainData(train, frames("train", sequences=holdout),
                         f"held-out {'+'.join(holdout)}", holdout, config.data_splits)
    trained_on = " (trained on)" if "val" in config.data_splits else ""
    return TrainData(train, frames("val"), f"{config.data} val{trained_on}", (),
                     config.data_splits)


def join_frames(parts: dict[str, FrameSet]) -> FrameSet:
    """One FrameSet of several splits, in order; sequence ids get their split as a prefix
    when there are several, so windows and pairs never join frames of two splits."""
    if len(parts) == 1:
        return next(iter(parts.values()))
    joined = FrameSet([], [], [], [])
    for split, part in parts.items():
        joined.images += part.images
        joined.labels += part.labels
        joined.sequences += [f"{split}:{sequence}" for sequence in part.sequences]
        joined.names += part.names
    return joined


def _run_stages(
    model: AccelNet,
    data: TrainData,
    config: TrainConfig,
    device: torch.device,
    weights: torch.Tensor | None,
) -> dict[str, Any]:
    """Train each stage in turn (skipping finished ones when resuming); returns the summary
    of every stage, also kept in `<out>/summary.json`."""
    summary: dict[str, Any] = {}
    summary_path = config.out / "summary.json"
    if config.resume and summary_path.is_file():
        summary = json.loads(summary_path.read_text())
    for stage in config.stages:
        folder = config.out / stage
        if config.resume and stage_finished(folder, config.epochs_of(stage)):
            loaded, extra = load_checkpoint(folder / "final.pt")
            if loaded.config.fusion_ages:
                make_age_aware(model, loaded.config.fusion_ages)
            model.load_state_dict(loaded.state_dict())
            log_line(config.out, f"{stage}: already finished (resume), loaded "
                     f"{folder / 'final.pt'}")
            summary.setdefault(stage, {"val_miou": extra.get("val_miou")})
            continue
        if stage != "reference" and model.update is None:
            log_line(config.out, f"{stage}: skipped (model has no update branch)")
            continue
        if stage in ("fusion", "joint"):
            trainer = train_fusion if stage == "fusion" else train_joint
            summary[stage] = trainer(model, data.train, data.val, config, folder, device, weights)
        else:
            summary[stage] = train_branch(model, stage, data.train, data.val, config, folder,
                                          device, weights)
        summary_path.write_text(json.dumps(summary, indent=1))
    return summary


def _save_final(
    model: AccelNet, data: TrainData, config: TrainConfig, summary: dict[str, Any]
) -> Path:
    """Plot every stage's curves together and write the final checkpoint."""
    rows = []
    for stage in STAGES:
        path = config.out / stage / "metrics.json"
        if path.is_file():
            rows += json.loads(path.read_text())
    if rows:
        plot_curves(rows, config.out / "curves.png")
    extra = {
        "recipe": config.recipe(),
        "resolution": list(config.size),
        "train_data": f"{config.data} {data.train_name}",
        "train_frames": data.manifest(),
        "validation": data.val_name,
        "val_miou": {stage: info.get("val_miou") for stage, info in summary.items()},
        "stages": summary,
    }
    model.config.input_size = config.size
    final = save_checkpoint(config.out / FINAL_NAME, model.cpu(), extra=extra, half=config.half)
    log_line(config.out, f"saved {final} ({final.stat().st_size / 1e6:.1f} MB); summary "
             f"{json.dumps(summary)}")
    return final

