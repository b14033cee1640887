"""How a camera frame of one aspect ratio meets a network input of another (`resize_mode`).

- `stretch`: the whole frame is resized to the network size, distorting shapes (a 16:9 camera
  squeezed into a 4:3 network).
- `crop`: the network sees the largest centred region of the frame with its aspect ratio;
  pixels outside it get the ignore label (255), since nothing looked at them.
- `pad`: the frame is centred on a black canvas of the network's aspect ratio (letterbox); every
  pixel is labelled and shapes keep their proportions.

In every mode the labels come back at the frame's own size, aligned with its pixels, so a
camera_info of the input describes the labels too. The "canvas" is the rectangle of the frame's
pixel grid that is resized to the network size: inside the frame (crop), the frame itself
(stretch), or around it (pad).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE_LABEL = 255


class Canvas(NamedTuple):
    """The canvas in frame pixels: top-left corner (may be negative with `pad`) and size."""

    top: int
    left: int
    height: int
    width: int

    def is_frame(self, size: tuple[int, int]) -> bool:
        return (self.top, self.left, self.height, self.width) == (0, 0, *size)


def canvas(frame: tuple[int, int], network: tuple[int, int] | None, mode: str) -> Canvas:
    """The canvas of a (H, W) frame for a (h, w) network input under `mode`."""
    height, width = frame
    if network is None or mode == "stretch":
        return Canvas(0, 0, height, width)
    aspect = network[1] / network[0]  # width / height
    if (mode == "crop") == (width / height > aspect):
        canvas_h, canvas_w = height, round(height * aspect)  # crop the sides / pad top-bottom
    else:
        canvas_h, canvas_w = round(width / aspect), width  # crop top-bottom / pad the sides
    return Canvas((height - canvas_h) // 2, (width - canvas_w) // 2, canvas_h, canvas_w)


def frame_to_canvas(image: torch.Tensor, box: Canvas) -> torch.Tensor:
    """(N, C, H, W) frame -> (N, C, box.height, box.width): cropped and/or zero-padded."""
    height, width = image.shape[-2:]
    if box.is_frame((height, width)):
        return image
    bottom = box.top + box.height - height
    right = box.left + box.width - width
    # F.pad with negative amounts crops: one call covers both crop and pad.
    return F.pad(image, (-box.left, right, -box.top, bottom))


def canvas_to_frame(values: torch.Tensor, box: Canvas, frame: tuple[int, int],
                    fill: float) -> torch.Tensor:
    """(..., box.height, box.width) -> (..., H, W): the inverse placement; frame pixels the
    canvas does not cover get `fill`."""
    if box.is_frame(frame):
        return values
    bottom = frame[0] - box.top - box.height
    right = frame[1] - box.left - box.width
    return F.pad(values, (box.left, right, box.top, bottom), value=fill)
