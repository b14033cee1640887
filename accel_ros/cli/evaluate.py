"""`accel-ros eval`: mIoU per keyframe offset and per keyframe interval, for every mode.

Modes (one checkpoint): `reference` (N_R on every frame), `deeplab` (N_U alone on every frame),
`dff` (keyframe features warped by DIS flow, no update branch) and `accel` (warped reference
scores fused with N_U's scores).

Protocol: clips whose frame 0 is the keyframe are streamed through `AccelSegmenter`, the node's
own pipeline (resizing to the checkpoint's input size, DIS flow, incremental warps, fusion,
logits upsampled to the label size), with offset o scored on clip frame o.
- Clips (`--clips`): `sequence` = every window of consecutive labelled frames of a sequence
  (CamVid val: 2 video frames = 0.067 s per step; train: 1 s); `motion` = synthetic 30 fps
  camera motion (zoom, pan, roll) on each labelled frame, exact labels on every frame: short
  range motion for a street held out of training (`--split train --sequences 0001TP`).
- Single-frame modes (`reference`, `deeplab`) score every distinct frame once.
- Keyframe interval k pools one confusion matrix over offsets 0..k-1 (a stream with a keyframe
  every k frames sees each offset once per keyframe), then takes its mIoU.
- Confusion matrices ignore void (label 255; CamVid's id 11 is mapped to it). Every table
  states the seconds between offset steps.

Writes `<out>/eval.json`, `<out>/results.md` (markdown tables), `<out>/fig5_offsets.png`
(mIoU vs offset and vs interval, one line per mode, after the paper's Fig. 5) and
`<out>/table3.png` (N_R only, N_U only, DFF, Accel; after the paper's Table 3).
"""


from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..learn.config import DATA_SOURCES, EVAL_CLIPS, EVAL_MODES, EvalConfig, config_from
from .options import add_config_option

DEFAULTS = EvalConfig()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`eval` (defaults from `EvalConfig`)."""
    d = DEFAULTS
    parser = subparsers.add_parser(
        "eval",
        help="mIoU per keyframe offset/interval for reference, deeplab, dff and accel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", default=d.checkpoint,
                        help='checkpoint path, "default" (shipped) or "none" (random weights)')
    add_config_option(parser, "preset", default=d.preset, help="model for --checkpoint none")
    parser.add_argument("--data", choices=DATA_SOURCES, default=d.data)
    parser.add_argument("--data-root", type=Path, default=d.data_root)
    parser.add_argument("--split", default=d.split)
    parser.add_argument("--sequences", nargs="+", default=d.sequences, metavar="SEQ",
                        help="only these CamVid sequences of the split (e.g. a held-out one)")
    parser.add_argument("--clips", choices=EVAL_CLIPS, default=d.clips,
                        help="sequence: windows of consecutive labelled frames; motion: "
                             "synthetic 30 fps camera motion on each labelled frame")
    parser.add_argument("--height", type=int, default=d.height,
                        help="network input height (default: the checkpoint's input size)")
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--max-offset", type=int, default=d.max_offset,
                        help="offsets 0..N and intervals 1..N+1 are evaluated")
    parser.add_argument("--modes", nargs="+", choices=EVAL_MODES, default=d.modes)
    add_config_option(parser, "flow_scale", default=d.flow_scale)
    parser.add_argument("--limit", type=int, default=d.limit, help="first N frames only")
    parser.add_argument("--out", type=Path, default=d.out)
    add_config_option(parser, "device", default=d.device)
    add_config_option(parser, "backend", default=d.backend)
    add_config_option(parser, "precision", default=d.precision)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--seed", type=int, default=d.seed, help="seed of synthetic data")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    """`accel-ros eval ...`."""
    from ..learn.evaluate import run_eval

    run_eval(config_from(EvalConfig, vars(args)))
    return 0
