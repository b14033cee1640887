"""Pictures of the demo: titled panels, the class legend, the caption and the comparison grid.
Every function takes and returns (H, W, 3) uint8 RGB arrays."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ..config import MODES
from ..palette import get_palette, render_labels

FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT = (235, 235, 235)
DIM = (170, 170, 170)
FOOTER_GREY = 32


def font_scale(height: int) -> float:
    """Text scale of a panel `height` pixels tall (0.3 .. 0.8)."""
    return max(0.3, min(0.8, height / 400.0))


def banner_height(height: int) -> int:
    """Height of the title banner across the top of a panel `height` pixels tall."""
    return round(26 * font_scale(height)) + 4


def text_width(text: str, scale: float) -> int:
    """Pixels `text` spans at `scale`."""
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


def label_panel(image: np.ndarray, title: str, subtitle: str = "") -> np.ndarray:
    """Copy of an (H, W, 3) uint8 RGB panel with a dark title banner across the top: title and
    subtitle on one line where they fit, else the subtitle on a second line (and smaller type
    only where a line alone is wider than the panel), so neighbouring panels' titles never
    run into each other."""
    panel = np.ascontiguousarray(image).copy()
    scale = font_scale(panel.shape[0])
    room = panel.shape[1] - 8
    lines = [f"{title}  {subtitle}" if subtitle else title]
    if subtitle and text_width(lines[0], scale) > room:
        lines = [title, subtitle]
    widest = max(text_width(line, scale) for line in lines)
    if widest > room:
        scale *= room / widest
    row = banner_height(panel.shape[0])
    banner = row * len(lines)
    panel[:banner] = (panel[:banner].astype(np.float32) * 0.35).astype(np.uint8)
    for index, line in enumerate(lines):
        cv2.putText(panel, line, (4, row * (index + 1) - 5), FONT, scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return panel


def age_label(run: Any, index: int, keyframe: str = "key") -> str:
    """Frame `index`'s keyframe state in `run` (a demo ModeRun): `keyframe`, or its keyframe
    age, in seconds from the stamps ("+1.5s") where the frame time is known."""
    age = run.keyframe_ages[index]
    if age == 0:
        return keyframe
    seconds = age * getattr(run, "frame_time_s", 0.0)
    return f"+{seconds:.1f}s" if seconds > 0 else f"+{age}"


def legend_strip(width: int, panel_height: int, names: tuple[str, ...],
                 palette: str) -> np.ndarray:
    """(h, `width`, 3) uint8 strip of colour swatches with class names, as many to a row as
    fit, sized like the titles of panels `panel_height` tall; h is even."""
    colors = get_palette(palette)
    scale = font_scale(panel_height)
    row_h = banner_height(panel_height)
    swatch = max(2, row_h - 6)
    widths = [swatch + 6 + cv2.getTextSize(name, FONT, scale, 1)[0][0] + 12 for name in names]
    places, x, row = [], 4, 0
    for item_w in widths:
        if x > 4 and x + item_w > width:
            x, row = 4, row + 1
        places.append((x, row))
        x += item_w
    height = row_h * (row + 1) + 4
    height += height % 2
    panel = np.full((height, width, 3), FOOTER_GREY, dtype=np.uint8)
    for i, (name, (x0, r)) in enumerate(zip(names, places, strict=True)):
        y0 = 3 + r * row_h
        color = tuple(int(c) for c in colors[i % len(colors)])
        cv2.rectangle(panel, (x0, y0 + 2), (x0 + swatch, y0 + 2 + swatch), color, -1)
        cv2.putText(panel, name, (x0 + swatch + 5, y0 + row_h - 6), FONT, scale, TEXT, 1,
                    cv2.LINE_AA)
    return panel


def wrap_text(text: str, width: int, scale: float) -> list[str]:
    """`text` broken into lines no wider than `width` pixels at `scale` (a word wider than
    the width gets a line of its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and cv2.getTextSize(candidate, FONT, scale, 1)[0][0] > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


def caption_panel(width: int, panel_height: int, lines: list[tuple[str, tuple]]) -> np.ndarray:
    """(h, `width`, 3) uint8 strip of wrapped text lines, [(text, RGB colour)], sized like the
    titles of panels `panel_height` tall; h is even (video encoders want even sizes)."""
    scale = font_scale(panel_height)
    line_h = banner_height(panel_height)
    wrapped = [(part, color) for text, color in lines
               for part in wrap_text(text, width - 8, scale)]
    height = line_h * len(wrapped) + 6
    height += height % 2
    panel = np.full((height, width, 3), FOOTER_GREY, dtype=np.uint8)
    for row, (text, color) in enumerate(wrapped):
        cv2.putText(panel, text, (4, line_h * (row + 1) - 2), FONT, scale, color, 1,
                    cv2.LINE_AA)
    return panel


def mode_panel(image: np.ndarray, run: Any, index: int, palette: str,
               alpha: float) -> np.ndarray:
    """One mode's overlay of frame `index`, titled with its keyframe state and clip scores:
    mIoU against the generator's labels, agreement with the reference, ms per frame."""
    # The reference and DeepLab run one network on every frame: no keyframe state to show.
    state = "" if MODES[run.mode].every_frame else age_label(run, index)
    scores = f"mIoU {100 * run.miou:.1f}"
    if run.mode != "reference":
        scores += f" ref {100 * run.agreement:.0f}%"
    scores += f" {run.ms_per_frame:.0f}ms"
    title = f"{run.title} {state}".strip()
    _, blended = render_labels(run.labels[index], palette, image, alpha)
    return label_panel(blended, title, scores)


def comparison_frame(
    index: int,
    image: np.ndarray,
    truth: np.ndarray,
    runs: list[Any],
    *,
    palette: str,
    alpha: float,
    footer: np.ndarray,
) -> np.ndarray:
    """(2H + f, 3W, 3) uint8 grid: input | generator's labels | first mode (the reference)
    over the next three modes, above the `footer` strip (legend and caption, f rows)."""
    top = [
        label_panel(image, "Input", f"frame {index}"),
        label_panel(render_labels(truth, palette, image, alpha)[1], "Generator's labels"),
    ]
    panels = [mode_panel(image, run, index, palette, alpha) for run in runs[:4]]
    panels += [np.zeros_like(image)] * (4 - len(panels))
    grid = np.concatenate([np.concatenate([*top, panels[0]], 1),
                           np.concatenate(panels[1:], 1)], 0)
    return np.concatenate([grid, footer], 0)


def showcase_index(ages: list[int]) -> int:
    """Frame for the still image: farthest from its keyframe (where warping drifts most and
    Accel's update branch matters), nearest the clip's middle among those."""
    peak = max(ages)
    middle = len(ages) / 2
    return min((i for i, age in enumerate(ages) if age == peak), key=lambda i: abs(i - middle))
