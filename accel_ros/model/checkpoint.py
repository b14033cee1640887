"""Checkpoints: the model config travels with the weights, so a file fully defines a model."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import DEFAULT_PRESET, PRESETS, ModelConfig, preset
from .accel import AccelNet

FORMAT = "accel_ros/1"
# The checkpoint shipped inside the package (every labelled CamVid frame; docs/training.md).
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "weights" / "accel_camvid.pt"


def resolve_checkpoint(name: str | Path | None) -> Path | None:
    """Map a checkpoint parameter to a path: "default" -> the shipped file, "none"/""/None ->
    None (random weights), anything else -> that path. Raises FileNotFoundError for a path
    that does not exist, naming it."""
    if name is None or str(name).strip().lower() in ("", "none"):
        return None
    path = DEFAULT_CHECKPOINT if str(name) == "default" else Path(name).expanduser()
    if not path.is_file():
        hint = (
            " (the shipped checkpoint is missing from this install; train one with "
            "`accel-ros train`, or use checkpoint 'none' for random weights: "
            "`--checkpoint none` on the CLI, `checkpoint:=none` in ROS)"
            if str(name) == "default"
            else ""
        )
        raise FileNotFoundError(f"checkpoint not found: {path}{hint}")
    return path


def save_checkpoint(
    path: str | Path, model: AccelNet, extra: dict[str, Any] | None = None, half: bool = False
) -> Path:
    """Write model config + weights (+ anything JSON-like in `extra`). `half` stores floating
    tensors as fp16 (half the size; they are restored to fp32 on load)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        key: (value.half() if half and value.is_floating_point() else value)
        for key, value in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "model_config": model.config.to_dict(),
        "state_dict": state,
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: an interrupted save never leaves a truncated checkpoint
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[AccelNet, dict[str, Any]]:
    """Rebuild the model a checkpoint describes. Returns (model, extra)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt/foreign files
        # torch's own message suggests weights_only=False, i.e. running the file's pickled
        # code: never pass that on for a file we cannot vouch for.
        raise ValueError(
            f"{path} is not a checkpoint of this package (unreadable: {type(error).__name__})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not an accel_ros checkpoint (expected format {FORMAT!r}); "
            "torchvision ResNet weights load with AccelNet.load_backbone()"
        )
    config = ModelConfig.from_dict(payload["model_config"])
    model = AccelNet(config)
    state = {
        _current_key(key, config): value.float() if value.is_floating_point() else value
        for key, value in payload["state_dict"].items()
    }
    model.load_state_dict(state)
    return model, dict(payload.get("extra", {}))


@dataclass
class LoadedModel:
    """A model and where it came from: `path` is the checkpoint file (None for random
    weights), `extra` what the checkpoint recorded (training data, resolution, ...)."""

    model: AccelNet
    path: Path | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def description(self) -> str:
        return f"checkpoint {self.path}" if self.path else "random weights"

    @functools.cached_property
    def fingerprint(self) -> str:
        return model_fingerprint(self.path, self.model.config)


def model_fingerprint(path: Path | None, config: ModelConfig | None) -> str:
    """sha256 of a checkpoint file (of the config for random weights, `path` None): what
    caches of derived files and manifests of finished work key on."""
    if path is None:
        if config is None:
            raise ValueError("random weights are identified by their config: pass it")
        text = json.dumps(config.to_dict(), sort_keys=True)
        return "random:" + hashlib.sha256(text.encode()).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(spec: str | Path | ModelConfig | None = "default", **overrides: Any) -> LoadedModel:
    """The one way every tool gets a model from a user's choice.

    `spec`: a preset name (random weights of that preset), "default" (the shipped checkpoint),
    a checkpoint path, a `ModelConfig` (random weights), or None/"none"/"" (random weights of
    DEFAULT_PRESET). `overrides` are ModelConfig fields; with a checkpoint they ask for a
    variant of its architecture, which starts from random weights since the stored ones no
    longer fit. A checkpoint carries its own config, so a path needs no preset."""
    if isinstance(spec, ModelConfig):
        return LoadedModel(AccelNet(dataclasses.replace(spec, **overrides)))
    if spec is not None and str(spec) in PRESETS:
        return LoadedModel(AccelNet(preset(str(spec), **overrides)))
    path = resolve_checkpoint(spec)
    if path is None:
        return LoadedModel(AccelNet(preset(DEFAULT_PRESET, **overrides)))
    model, extra = load_checkpoint(path)
    if overrides:
        return LoadedModel(AccelNet(dataclasses.replace(model.config, **overrides)))
    return LoadedModel(model, path, extra)


def load_model_or_preset(model: str | ModelConfig, checkpoint: str | Path | None) -> LoadedModel:
    """The node's and the commands' split of the choice into two options: a checkpoint
    ("default" = shipped, a path) carries its own config and wins; without one (None/"none")
    `model` (a preset name or a ModelConfig) gives random weights."""
    return load_model(checkpoint if resolve_checkpoint(checkpoint) else model)


def average_checkpoints(
    paths: Sequence[str | Path],
) -> tuple[AccelNet, dict[str, Any]]:
    """Weight average of checkpoints of one architecture (snapshots of one training lineage,
    e.g. two fine-tuning cycles of the same reference). Floating tensors, BatchNorm running
    statistics included, are averaged; integer tensors (BatchNorm step counts) come from the
    last checkpoint, and so does `extra`. Returns (model, extra)."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    models = [load_checkpoint(path) for path in paths]
    model, extra = models[-1]
    for path, (other, _) in zip(paths, models, strict=True):
        if other.config != model.config:
            raise ValueError(
                f"{path} has another architecture than {paths[-1]}: "
                "only checkpoints of one model can be averaged"
            )
    states = [other.state_dict() for other, _ in models]
    model.load_state_dict({
        key: torch.stack([state[key] for state in states]).mean(0) if value.is_floating_point()
        else value
        for key, value in states[-1].items()
    })
    return model, extra


def _current_key(key: str, config: ModelConfig) -> str:
    """State-dict key of a first-release ("mlp" head) checkpoint under today's module names."""
    if config.feature_head != "mlp":
        return key
    return key.replace(".features.", ".backbone.", 1).replace(".head.reduce.", ".head.reduce.0.", 1)


def build_model(model: str | ModelConfig, checkpoint: str | None = None) -> AccelNet:
    """A model from a checkpoint, or random weights of `model` (see `load_model_or_preset`)."""
    return load_model_or_preset(model, checkpoint).model
