"""The demo's scores by keyframe age: a table of every mode's mIoU per keyframe offset (its age
in seconds from the frames' stamps), Accel against DFF at each age, what the checkpoint's
record says on real video at those ages, a verdict that says which of the two the clip shows,
and the plot."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MODES
from ..metrics import mean_iou

# The modes whose frames warp a keyframe: their offset is the result's keyframe age.
FLOW_MODES = ("dff", "accel")
# One colour per mode in both panels of the plot.
COLORS = {"reference": "tab:blue", "dff": "tab:orange", "deeplab": "tab:green",
          "accel": "tab:red"}


@dataclass
class AgeTable:
    """mIoU (fractions; None where no frame was scored) per keyframe offset 0..k-1, per mode
    in run order. `ages_s`: each offset's keyframe age in seconds (offset / camera rate)."""

    ages_s: list[float]
    miou: dict[str, list[float | None]]
    titles: dict[str, str]

    def gain(self) -> list[float | None]:
        """Accel - DFF per offset (fractions), None where either is missing."""
        accel, dff = self.miou.get("accel"), self.miou.get("dff")
        if accel is None or dff is None:
            return [None] * len(self.ages_s)
        return [None if a is None or d is None else a - d
                for a, d in zip(accel, dff, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        return {"keyframe_age_s": self.ages_s, "miou": self.miou,
                "accel_minus_dff": self.gain()}


@dataclass
class RealAges:
    """What the checkpoint recorded on real video by keyframe age (`miou_by_keyframe_age_s`
    of its `heldout_estimate`): `where` names the held-out split, `note` how each age was
    made (camera motion or real frames)."""

    ages_s: list[float]
    dff: list[float]
    accel: list[float]
    where: str
    note: str

    def at(self, ages: list[float]) -> list[int]:
        """Indices of the recorded ages the clip has too (ages > 0); else those within the
        clip's range of ages; else all of them."""
        same = [i for i, age in enumerate(self.ages_s)
                if any(clip > 0 and abs(age - clip) < 1e-6 for clip in ages)]
        top = max(ages, default=0.0) + 1e-6
        inside = [i for i, age in enumerate(self.ages_s) if 0 < age <= top]
        return same or inside or list(range(len(self.ages_s)))


def frame_offset(mode: str, keyframe_age: int, index: int, interval: int) -> int:
    """The keyframe offset a frame is scored under: DFF and Accel frames by their own keyframe
    age; the reference and DeepLab (no keyframes to count) by the flow modes' schedule, frame
    `index` at offset index mod `interval`, so that each column compares the same frames."""
    return keyframe_age if mode in FLOW_MODES else index % interval


def age_table(runs: list[Any], interval: int, fps: float) -> AgeTable:
    """The table of `runs` (demo ModeRuns with `offset_confusion`)."""
    ages = [offset / fps for offset in range(interval)]
    miou = {}
    for run in runs:
        values = []
        for offset in range(interval):
            confusion = run.offset_confusion.get(offset)
            values.append(None if confusion is None else float(mean_iou(confusion)))
        miou[run.mode] = values
    return AgeTable(ages, miou, {run.mode: run.title for run in runs})


def real_ages(extra: dict[str, Any]) -> RealAges | None:
    """The checkpoint's record by keyframe age (None when it has none)."""
    estimate = extra.get("heldout_estimate")
    record = estimate.get("miou_by_keyframe_age_s") if isinstance(estimate, dict) else None
    if not isinstance(record, dict) or not {"ages", "dff", "accel"} <= set(record):
        return None
    validation = str(estimate.get("validation", "held-out video"))
    street = re.search(r"\b(\d{4}[A-Z0-9]{2})\b", validation)
    where = f"held-out CamVid street {street.group(1)}" if street else validation
    return RealAges([float(a) for a in record["ages"]], [float(v) for v in record["dff"]],
                    [float(v) for v in record["accel"]], where, str(estimate.get("note", "")))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}"


def format_age_table(table: AgeTable, real: RealAges | None) -> list[str]:
    """Text lines: mIoU per keyframe age on the clip (every mode, Accel - DFF), then the
    checkpoint's real-video record at the ages in the clip's range."""
    head = "  keyframe age (s)  " + "".join(f"{age:>7.2f}" for age in table.ages_s)
    lines = ["  mIoU (%) by keyframe age on this clip:", head]
    for mode, values in table.miou.items():
        lines.append(f"  {table.titles[mode]:<18}" + "".join(f"{_pct(v):>7}" for v in values))
    if "accel" in table.miou and "dff" in table.miou:
        lines.append(f"  {'Accel - DFF':<18}" + "".join(f"{_signed(v):>7}"
                                                       for v in table.gain()))
    if real is not None:
        picks = real.at(table.ages_s)
        lines.append(f"  On real video ({real.where}; {real.note}), recorded with the "
                     "checkpoint, mIoU (%):")
        lines.append("  keyframe age (s)  " + "".join(f"{real.ages_s[i]:>7.2f}" for i in picks))
        for name, values in (("DFF", real.dff), ("Accel", real.accel)):
            lines.append(f"  {name:<18}" + "".join(f"{_pct(values[i]):>7}" for i in picks))
    return lines


def verdict(table: AgeTable, real: RealAges | None) -> list[str]:
    """What the clip shows of Accel against DFF at keyframe ages > 0, from the numbers
    measured; when it does not show Accel ahead at every age, the checkpoint's real-video
    figures beside it."""
    gains = [(age, gain) for age, gain in zip(table.ages_s, table.gain(), strict=True)
             if age > 0 and gain is not None]
    if not gains:
        return []
    ahead = [age for age, gain in gains if gain > 0]
    behind = [age for age, gain in gains if gain <= 0]
    span = f"{100 * min(g for _, g in gains):+.1f} to {100 * max(g for _, g in gains):+.1f}"
    if not behind:
        lines = [f"This clip shows Accel above DFF at every keyframe age ({span} mIoU)."]
    elif ahead:
        lines = [f"This clip shows Accel above DFF only at keyframe ages "
                 f"{_ages(ahead)} s, not at {_ages(behind)} s ({span} mIoU): on its "
                 "synthetic frames the update branch is weak (the domain gap)."]
    else:
        lines = [f"This clip does not show Accel's advantage: Accel is at or below DFF at "
                 f"every keyframe age ({span} mIoU); on its synthetic frames the update "
                 "branch is weak (the domain gap)."]
    if behind and real is not None:
        picks = real.at(table.ages_s)
        pairs = ", ".join(f"{100 * real.accel[i]:.1f} vs {100 * real.dff[i]:.1f} at "
                          f"{real.ages_s[i]:g} s" for i in picks)
        how = f"; {real.note}" if real.note else ""
        lines.append(f"On real video ({real.where}{how}), Accel vs DFF: {pairs} (the "
                     "checkpoint's record; docs/results.md).")
    return lines


def _ages(ages: list[float]) -> str:
    return ", ".join(f"{age:g}" for age in ages)


def plot_ages(table: AgeTable, real: RealAges | None, path: Path) -> Path:
    """mIoU against keyframe age: this clip's modes (left) and the checkpoint's real-video
    record (right, when it has one), as a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.6 if real else 5.2, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if real else 1, squeeze=False)[0]
    for mode, values in table.miou.items():
        points = [(a, 100 * v) for a, v in zip(table.ages_s, values, strict=True)
                  if v is not None]
        style = "--" if MODES[mode].every_frame else "-"  # no keyframes: flat in age
        axes[0].plot(*zip(*points, strict=True), style, marker="o", label=table.titles[mode],
                     color=COLORS.get(mode))
    axes[0].set(title="this synthetic clip", xlabel="keyframe age (s)", ylabel="mIoU (%)")
    if real is not None:
        for mode, values in (("dff", real.dff), ("accel", real.accel)):
            axes[1].plot(real.ages_s, [100 * v for v in values], marker="o",
                         label=table.titles.get(mode, mode), color=COLORS[mode])
        axes[1].set(title=f"real video: {real.where}", xlabel="keyframe age (s)")
        figure.text(0.99, 0.01, real.note, fontsize=7, ha="right")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout(rect=(0, 0.04 if real else 0, 1, 1))
    figure.savefig(path)
    return path
