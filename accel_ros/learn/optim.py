"""Losses, optimizers and what trains: the pieces every stage sets up before its loop."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..data.frames import FrameSet
from ..metrics import IGNORE_INDEX


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


def build_criterion(weights: torch.Tensor | None, device: torch.device) -> torch.nn.Module:
    """Cross-entropy over the current frame's labels, void ignored, optional class weights."""
    return torch.nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), ignore_index=IGNORE_INDEX
    )


def build_optimizer(
    params: Iterable[Any], kind: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over parameters or parameter groups; frozen parameters
    (requires_grad False) are left out. Groups may carry an `lr_mult` the loop applies."""
    params = list(params)
    if params and not isinstance(params[0], dict):
        params = [p for p in params if p.requires_grad]
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def branch_param_groups(net: torch.nn.Module, backbone_mult: float) -> list[dict[str, Any]]:
    """Backbone at `backbone_mult` x the learning rate (an ImageNet start must not be washed
    out by the new head's large early gradients), N_feat and N_task at the full rate."""
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    own = {id(p) for p in backbone}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in own]
    return [{"params": backbone, "lr_mult": backbone_mult}, {"params": rest, "lr_mult": 1.0}]


@contextmanager
def train_only(model: torch.nn.Module, *modules: torch.nn.Module) -> Iterator[None]:
    """Freeze every parameter of `model` except those of `modules`; on leaving, every
    parameter trains again (what the next stage expects)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(True)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(True)
