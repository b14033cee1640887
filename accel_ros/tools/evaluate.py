"""`accel-ros eval`: mIoU per keyframe offset and per keyframe interval, for every mode.

Modes (one checkpoint): `reference` (N_R on every frame), `deeplab` (N_U alone on every frame),
`dff` (keyframe features warped by DIS flow, no update branch) and `accel` (warped reference
scores fused with N_U's scores).

Protocol (labelled frames of a video, e.g. CamVid val = sequence 0016E5):
- Offset o: the keyframe is the labelled frame o frames before the current one in the same
  sequence; its N_R features are warped incrementally through the frames in between (DIS flow
  between consecutive frames, as the streaming node does) and scored on the current frame.
  Offset 0 is the keyframe itself, where every mode but `deeplab` is N_R's own answer. All
  offsets use the same current frames (those with at least `max_offset` frames before them in
  their sequence), so the columns are comparable.
- Keyframe interval k: a keyframe every k frames sees each offset 0..k-1 once, so mIoU(k) =
  mean over offsets 0..k-1 of the per-offset mIoU.
- Confusion matrices ignore void (label 255; CamVid's id 11 is mapped to it).

Writes `<out>/eval.json`, `<out>/results.md` (markdown tables), `<out>/fig5_offsets.png`
(mIoU vs offset and vs interval, one line per mode, after the paper's Fig. 5) and
`<out>/table3.png` (N_R only, N_U only, DFF, Accel; after the paper's Table 3).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import preset
from ..metrics import ConfusionMeter
from ..model import AccelNet, DISFlow, load_checkpoint, resize_flow, resolve_checkpoint, warp
from .train import FrameSet, load_frames, resize_pair, to_tensor

EVAL_MODES = ("reference", "deeplab", "dff", "accel")
MODE_LABELS = {
    "reference": "N_R every frame",
    "deeplab": "N_U only (DeepLab)",
    "dff": "DFF (warp only)",
    "accel": "Accel (warp + N_U, fused)",
}


@torch.no_grad()
def evaluate_offsets(
    model: AccelNet,
    frames: FrameSet,
    size: tuple[int, int],
    max_offset: int,
    device: torch.device,
    modes: tuple[str, ...] = EVAL_MODES,
    flow_scale: float = 0.5,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, list[ConfusionMeter]]:
    """Confusion meters per mode and offset: result[mode][offset], offsets 0..max_offset.

    frames: labelled frames in video order; every frame is resized to `size` (H, W). Uses the
    AccelNet building blocks in the order `AccelNet.forward` does, so the numbers equal
    `forward(frames (1, o+1, 3, H, W), flows, mode)` per pair while each frame's branches run
    only once.
    """
    unknown = set(modes) - set(EVAL_MODES)
    if unknown:
        raise ValueError(f"unknown eval modes {sorted(unknown)}; choose from {EVAL_MODES}")
    if model.update is None and {"deeplab", "accel"} & set(modes):
        raise ValueError("modes deeplab/accel need a model with an update branch")
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    model.eval()
    num_classes = model.config.num_classes
    resized = [resize_pair(frames.images[i], frames.labels[i], size) for i in range(len(frames))]
    currents = [
        j for j in range(len(frames))
        if j - max_offset >= 0 and frames.sequences[j - max_offset] == frames.sequences[j]
    ]
    if not currents:
        raise ValueError(
            f"no frame has {max_offset} earlier frames in its sequence; lower --max-offset"
        )
    needed = sorted({j - o for j in currents for o in range(max_offset + 1)})
    ref_features: dict[int, torch.Tensor] = {}
    upd_features: dict[int, torch.Tensor] = {}
    for start in range(0, len(needed), batch_size):
        chunk = needed[start : start + batch_size]
        images = to_tensor([resized[i][0] for i in chunk]).to(device)
        features = model.reference_features(images)
        updates = model.update_features(images) if model.update is not None else None
        for row, index in enumerate(chunk):
            ref_features[index] = features[row : row + 1]
            if updates is not None:
                upd_features[index] = updates[row : row + 1]
    feature_size = next(iter(ref_features.values())).shape[-2:]
    flow_net = DISFlow(scale=flow_scale)
    flows: dict[int, torch.Tensor] = {}
    for index in needed:
        if index - 1 in ref_features and frames.sequences[index - 1] == frames.sequences[index]:
            pair = to_tensor([resized[index - 1][0], resized[index][0]])
            flows[index] = resize_flow(flow_net(pair[:1], pair[1:]), feature_size).to(device)
    meters = {m: [ConfusionMeter(num_classes) for _ in range(max_offset + 1)] for m in modes}

    def add(mode: str, offset: int, scores: torch.Tensor, target: np.ndarray) -> None:
        labels = model.upsample(scores, size).argmax(1)[0].cpu().numpy()
        meters[mode][offset].update(labels, target)

    iterator = currents
    if progress:
        from tqdm import tqdm

        iterator = tqdm(currents, desc="eval", file=sys.stderr)
    for current in iterator:
        target = resized[current][1]
        reference_scores = model.reference_scores(ref_features[current])
        update_scores = (
            model.update_scores(upd_features[current]) if model.update is not None else None
        )
        if "reference" in modes:
            for offset in range(max_offset + 1):
                add("reference", offset, reference_scores, target)
        if "deeplab" in modes:
            for offset in range(max_offset + 1):
                add("deeplab", offset, update_scores, target)
        for offset in range(max_offset + 1):
            key = current - offset
            if offset == 0:
                # A keyframe is answered by N_R alone (as in forward with T == 1).
                for mode in ("dff", "accel"):
                    if mode in modes:
                        add(mode, 0, reference_scores, target)
                continue
            feature = ref_features[key]
            for step in range(key + 1, current + 1):
                feature = warp(feature, flows[step])
            if "dff" in modes:
                add("dff", offset, model.reference_scores(feature), target)
            if "accel" in modes:
                fused = model.fuse(feature, upd_features[current], update_scores=update_scores)
                add("accel", offset, fused, target)
    return meters


def summarise(
    meters: dict[str, list[ConfusionMeter]], class_names: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Per-offset and per-interval mIoU (interval k = mean of offsets 0..k-1), per-class IoU,
    pixel accuracy and the paper's claim check, as plain JSON values."""
    per_offset = {m: [v.mean_iou() for v in meter] for m, meter in meters.items()}
    per_interval = {
        m: [float(np.mean(values[:k])) for k in range(1, len(values) + 1)]
        for m, values in per_offset.items()
    }
    claims: dict[str, Any] = {}
    if "accel" in per_interval:
        for other in ("dff", "deeplab"):
            if other in per_interval:
                claims[f"accel_beats_{other}"] = {
                    str(k): bool(per_interval["accel"][k - 1] > per_interval[other][k - 1])
                    for k in range(2, len(per_interval["accel"]) + 1)
                }
    return {
        "per_offset": {
            m: {str(o): v for o, v in enumerate(vals)} for m, vals in per_offset.items()
        },
        "per_interval": {
            m: {str(k + 1): v for k, v in enumerate(vals)} for m, vals in per_interval.items()
        },
        "pixel_accuracy": {
            m: {str(o): v.pixel_accuracy() for o, v in enumerate(meter)}
            for m, meter in meters.items()
        },
        "per_class_iou": {
            m: {str(o): _nan_to_none(v.iou_per_class().tolist()) for o, v in enumerate(meter)}
            for m, meter in meters.items()
        },
        "class_names": list(class_names),
        "claims": claims,
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """Two markdown tables (mIoU % per offset, per interval), one row per mode."""
    lines = []
    for title, key, label in (("keyframe offset", "per_offset", "offset"),
                              ("keyframe interval", "per_interval", "interval")):
        modes = list(summary[key])
        columns = list(summary[key][modes[0]])
        lines.append(f"mIoU (%) per {title}:\n")
        lines.append("| mode | " + " | ".join(f"{label} {c}" for c in columns) + " |")
        lines.append("|---|" + "---:|" * len(columns))
        for mode in modes:
            values = " | ".join(_pct(summary[key][mode][c]) for c in columns)
            lines.append(f"| {MODE_LABELS.get(mode, mode)} | {values} |")
        lines.append("")
    return "\n".join(lines)


def plot_results(summary: dict[str, Any], folder: Path) -> list[Path]:
    """fig5_offsets.png (mIoU vs offset / interval per mode) and table3.png (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, xlabel in ((axes[0], "per_offset", "keyframe offset (frames since keyframe)"),
                            (axes[1], "per_interval", "keyframe interval")):
        for mode, values in summary[key].items():
            xs = [int(k) for k in values]
            ax.plot(xs, [100 * v for v in values.values()], marker="o",
                    label=MODE_LABELS.get(mode, mode))
        ax.set(xlabel=xlabel, ylabel="mIoU (%)")
        ax.set_xticks([int(k) for k in next(iter(summary[key].values()))])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("accuracy vs. keyframe offset")
    axes[1].set_title("accuracy vs. keyframe interval")
    fig.tight_layout()
    paths.append(folder / "fig5_offsets.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    intervals = summary["per_interval"]
    last = max(int(k) for k in next(iter(intervals.values())))
    bars = []
    for mode in EVAL_MODES:
        if mode not in intervals:
            continue
        if mode in ("reference", "deeplab"):
            bars.append((MODE_LABELS[mode], intervals[mode]["1"]))
        else:
            bars.append((f"{mode.upper() if mode == 'dff' else 'Accel'} (interval {last})",
                         intervals[mode][str(last)]))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([b[0] for b in bars], [100 * b[1] for b in bars],
           color=["#4c72b0", "#dd8452", "#55a868", "#c44e52"][: len(bars)])
    for i, (_, value) in enumerate(bars):
        ax.text(i, 100 * value, f"{100 * value:.1f}", ha="center", va="bottom")
    ax.set(ylabel="mIoU (%)", title="N_R only, N_U only, DFF, Accel")
    ax.set_ylim(0, 1.15 * max(100 * b[1] for b in bars) + 1e-6)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    paths.append(folder / "table3.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="mIoU per keyframe offset/interval for reference, deeplab, dff and accel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", default="default",
                        help='checkpoint path, "default" (shipped) or "none" (random weights)')
    parser.add_argument("--preset", default="camvid34", help="model for --checkpoint none")
    parser.add_argument("--data", choices=("camvid", "synthetic"), default="camvid")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--split", default="val")
    parser.add_argument("--height", type=int, default=None,
                        help="eval height (default: the checkpoint's training resolution)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--max-offset", type=int, default=4,
                        help="offsets 0..N and intervals 1..N+1 are evaluated")
    parser.add_argument("--modes", nargs="+", choices=EVAL_MODES, default=list(EVAL_MODES))
    parser.add_argument("--flow-scale", type=float, default=0.5)
    parser.add_argument("--limit", type=int, default=None, help="first N frames only")
    parser.add_argument("--out", type=Path, default=Path("runs/eval"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of synthetic data")
    parser.set_defaults(handler=main)
    return parser


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    path = resolve_checkpoint(args.checkpoint)
    extra: dict[str, Any] = {}
    if path is None:
        model = AccelNet(preset(args.preset))
    else:
        model, extra = load_checkpoint(path)
    trained_at = extra.get("resolution") or [180, 240]
    size = (args.height or int(trained_at[0]), args.width or int(trained_at[1]))
    model.to(device)
    frames = load_frames(args.data, args.data_root, args.split, model.config.num_classes,
                         args.limit, size, args.seed)
    started = time.monotonic()
    meters = evaluate_offsets(model, frames, size, args.max_offset, device, tuple(args.modes),
                              args.flow_scale, progress=True)
    summary = summarise(meters, model.config.class_names)
    summary.update({
        "checkpoint": str(path) if path else None,
        "data": args.data,
        "split": args.split,
        "num_frames": len(frames),
        "num_eval_frames": _count(frames, args.max_offset),
        "resolution": list(size),
        "max_offset": args.max_offset,
        "flow": f"DIS (OpenCV, preset fast) at {args.flow_scale} x resolution",
        "protocol": "interval k = mean of per-offset mIoU over offsets 0..k-1; offset 0 = "
                    "keyframe (N_R); void ignored",
        "seconds": round(time.monotonic() - started, 1),
        "checkpoint_extra": {k: extra[k] for k in ("resolution", "train_data", "val_miou")
                             if k in extra},
    })
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(summary, indent=1))
    table = markdown_table(summary)
    (args.out / "results.md").write_text(table)
    plots = plot_results(summary, args.out)
    print(table)
    for mode, verdicts in summary["claims"].items():
        print(f"{mode}: " + ", ".join(f"interval {k}: {'yes' if v else 'no'}"
                                      for k, v in verdicts.items()))
    print(f"wrote {args.out / 'eval.json'}, {args.out / 'results.md'}, "
          + ", ".join(str(p) for p in plots))
    return 0


def _count(frames: FrameSet, max_offset: int) -> int:
    return sum(
        1 for j in range(max_offset, len(frames))
        if frames.sequences[j - max_offset] == frames.sequences[j]
    )


def _nan_to_none(values: list[float]) -> list[float | None]:
    return [None if np.isnan(v) else v for v in values]


def _pct(value: float) -> str:
    return "n/a" if value is None or np.isnan(value) else f"{100 * value:.1f}"


if __name__ == "__main__":  # `python -m accel_ros.tools.evaluate ...` without the other tools
    _parser = argparse.ArgumentParser(prog="accel-ros")
    add_parser(_parser.add_subparsers(dest="command"))
    sys.exit(main(_parser.parse_args(["eval", *sys.argv[1:]])))
