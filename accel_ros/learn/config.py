"""Training and evaluation options as data: `TrainConfig` (`accel-ros train`) and `EvalConfig`
(`accel-ros eval`). The command line builds one from its arguments once; code and tests build
them directly. Light on purpose (no torch), so the CLI can read defaults and choices cheaply."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ..config import DEFAULT_PRESET, MODES, PipelineConfig
from ..data.camvid import HELD_OUT_SEQUENCES
from ..registry import check_choice

STAGE_ORDER = ("reference", "update", "fusion")
STAGES = (*STAGE_ORDER, "joint")  # stage "all" runs STAGE_ORDER; `joint` is asked for by name
DATA_SOURCES = ("camvid", "synthetic")
OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTINGS = ("none", "sqrt-median", "median")
IMAGENET_STARTS = ("auto", "yes", "no")
# The pipeline's modes in the order evaluation tables and plots list them (cheapest idea first).
EVAL_MODES = MODES.ordered(("reference", "deeplab", "dff", "accel"))
EVAL_CLIPS = ("sequence", "motion")
# The labelled splits a run may train on (CamVid's val clip lies inside training sequence 0016E5).
DATA_SPLITS = ("train", "val")
AMP_DTYPES = ("fp16", "bf16")
# Pipeline settings an evaluation shares take the pipeline's defaults (one owner per default).
_PIPELINE_DEFAULTS = PipelineConfig()


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a training run (field names are the `accel-ros train` options).

    None means "derived": `update_epochs` = `epochs`; the backbone and head overrides = the
    preset's; `backbone_lr_mult` = 0.2 with ImageNet weights, 1 from scratch or `init`;
    `crop` = the input size (`height`, `width`). `time_budget`: wall-clock minutes of the
    reference and update stages (one value for both, or two).
    """

    # what to train, on what
    stage: str = "all"
    data: str = "camvid"
    data_root: Path | None = None
    data_splits: tuple[str, ...] = ("train",)
    holdout: tuple[str, ...] = HELD_OUT_SEQUENCES
    limit: int | None = None
    # the model
    preset: str = DEFAULT_PRESET
    reference_backbone: str | None = None
    update_backbone: str | None = None
    update_input_scale: float | None = None
    head_channels: int | None = None
    init: Path | None = None
    imagenet: str = "auto"
    backbone_weights: Path | None = None
    update_backbone_weights: Path | None = None
    # input and augmentation
    height: int = 360
    width: int = 480
    crop: tuple[int, int] | None = None
    scale_range: tuple[float, float] = (0.75, 1.5)
    # colour jitter: brightness, contrast and saturation factors in 1 +- jitter
    jitter: float = 0.25
    # schedule
    epochs: int = 30
    update_epochs: int | None = None
    fusion_epochs: int = 20
    joint_epochs: int = 8
    batch_size: int = 8
    fusion_batch_size: int = 32
    max_iters: int | None = None
    time_budget: tuple[float, ...] | None = None
    joint_budget: float | None = None
    val_every: int = 1
    # optimisation
    optimizer: str = "adamw"
    lr: float = 2e-3
    fusion_lr: float = 1e-2
    joint_lr: float = 3e-4
    joint_aux_weight: float = 0.4
    weight_decay: float = 1e-4
    backbone_lr_mult: float | None = None
    class_weights: str = "sqrt-median"
    # distillation of N_U (update stage): a checkpoint whose reference is the teacher
    # ("default": the shipped one; "self": this model's own reference), None: labels only
    distill_from: str | None = None
    distill_weight: float = 0.5
    distill_temperature: float = 2.0
    # the (keyframe, current) pairs of the fusion and joint stages
    offsets: tuple[int, ...] = (1, 2, 3, 4)
    flow_scale: float = _PIPELINE_DEFAULTS.flow_scale  # train on the flow the pipeline computes
    # age-aware fusion: keyframe ages (s) of its weight knots; () keeps the plain 1x1 fusion
    # and its 30 fps pairs at `offsets`. With knots, pairs span ages up to `max_age` s.
    fusion_ages: tuple[float, ...] = ()
    max_age: float = 2.0
    # the synthetic-motion pairs keep one video frame in n, n cycling through these (30 fps)
    motion_steps: tuple[int, ...] = (1, 2, 4, 8, 15, 30)
    # the run
    out: Path = Path("runs/train")
    resume: bool = False
    seed: int = 0
    device: str = _PIPELINE_DEFAULTS.device
    threads: int = 2
    no_amp: bool = False
    # CUDA mixed precision: fp16 (with loss scaling) or bf16 (no scaling needed)
    amp_dtype: str = "fp16"
    # hold the frames on the device and augment whole batches there (GPU runs)
    augment_on_device: bool = False
    half: bool = False

    def __post_init__(self) -> None:
        check_choice("stage", self.stage, (*STAGES, "all"))
        check_choice("amp_dtype", self.amp_dtype, AMP_DTYPES)
        check_choice("data", self.data, DATA_SOURCES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("class_weights", self.class_weights, CLASS_WEIGHTINGS)
        check_choice("imagenet", self.imagenet, IMAGENET_STARTS)
        if min(self.batch_size, self.fusion_batch_size, self.val_every) < 1:
            raise ValueError("batch sizes and val_every must be >= 1")
        if self.time_budget is not None and len(self.time_budget) not in (1, 2):
            raise ValueError(f"time_budget takes one or two values, got {self.time_budget}")
        for split in self.data_splits:
            check_choice("data split", split, DATA_SPLITS)
        if not self.data_splits:
            raise ValueError("data_splits needs at least one split")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if not 0.0 <= self.distill_weight <= 1.0 or self.distill_temperature <= 0:
            raise ValueError("distill_weight must be in [0, 1] and distill_temperature > 0")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width): the network input size, also the evaluation size."""
        return (self.height, self.width)

    @property
    def crop_size(self) -> tuple[int, int]:
        """(h, w) of the training crops."""
        return (self.crop[0], self.crop[1]) if self.crop else self.size

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run trains, in order."""
        return STAGE_ORDER if self.stage == "all" else (self.stage,)

    def epochs_of(self, stage: str) -> int:
        return {"reference": self.epochs, "update": self.update_epochs or self.epochs,
                "fusion": self.fusion_epochs, "joint": self.joint_epochs}[stage]

    def budget_of(self, stage: str) -> float | None:
        """Wall-clock minutes of `stage` (None: no limit); the fusion stage has none."""
        if stage == "joint":
            return self.joint_budget
        if stage in ("reference", "update") and self.time_budget:
            return self.time_budget[0 if stage == "reference" else -1]
        return None

    def recipe(self) -> dict[str, Any]:
        """The options as plain JSON values (stored in every checkpoint)."""
        return {key: _plain(value) for key, value in dataclasses.asdict(self).items()}


@dataclass(frozen=True)
class EvalConfig:
    """Every option of an evaluation run (field names are the `accel-ros eval` options).

    `checkpoint`: a path, "default" (the shipped one) or "none" (random weights of `preset`).
    `height`/`width` None: the checkpoint's input size. Offsets 0..`max_offset` and keyframe
    intervals 1..`max_offset` + 1 are scored.
    """

    checkpoint: str = "default"
    preset: str = DEFAULT_PRESET
    data: str = "camvid"
    data_root: Path | None = None
    split: str = "val"
    sequences: tuple[str, ...] = ()
    clips: str = "sequence"
    height: int | None = None
    width: int | None = None
    max_offset: int = 4
    modes: tuple[str, ...] = EVAL_MODES
    flow_scale: float = _PIPELINE_DEFAULTS.flow_scale
    limit: int | None = None
    out: Path = Path("runs/eval")
    device: str = _PIPELINE_DEFAULTS.device
    # config.BACKENDS: where the networks run (labels match torch's); defaults: the pipeline's
    backend: str = _PIPELINE_DEFAULTS.backend
    precision: str = _PIPELINE_DEFAULTS.precision
    threads: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice("data", self.data, DATA_SOURCES)
        check_choice("clips", self.clips, EVAL_CLIPS)
        PipelineConfig(backend=self.backend, precision=self.precision)  # checks both
        for mode in self.modes:
            MODES.check(mode)


Config = TypeVar("Config", "TrainConfig", "EvalConfig")


def config_from(cls: type[Config], options: Mapping[str, Any]) -> Config:
    """A `TrainConfig` or `EvalConfig` from option values by field name (e.g. the `vars()` of
    parsed arguments): other keys are left out, missing fields keep their defaults, lists
    become tuples."""
    names = [field.name for field in dataclasses.fields(cls) if field.name in options]
    return cls(**{
        name: tuple(options[name]) if isinstance(options[name], list) else options[name]
        for name in names
    })


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
