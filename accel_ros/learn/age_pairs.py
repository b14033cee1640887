"""(keyframe, current) pairs at keyframe ages from one frame to `max_age` seconds, for the
age-aware fusion (`model.fusion.AgeScoreFusion`).

The node meets old keyframes when it drops frames (a slow CPU at k=10 warps across seconds),
so the pairs come at several frame rates, warped step by step with DIS flow as at inference:
- real labelled CamVid windows: 1 s apart in train, 1/15 s in the val clip, every window of
  consecutive frames of one sequence up to `max_age` (their real parallax and occlusions);
- synthetic camera motion (`data/motion.py`) on every labelled frame, seen by a camera that
  keeps one frame in n (n of `FRAME_STEPS`, 30 fps source), exact labels on every frame.
Each pair records its age in seconds; the frozen branches' outputs are cached as in
`pair_cache`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.camvid import parse_frame_name
from ..data.frames import FrameSet, resize_pair, to_tensor
from ..data.motion import FRAME_TIME_S, make_motion_clip, random_motion
from ..model import AccelNet, FlowEstimator, build_flow
from .pair_cache import PairCache, update_scores

# Video frames between the frames a synthetic-motion camera keeps (30 fps source): 30, 15,
# 7.5, 3.75, 2 and 1 processed frames per second.
FRAME_STEPS = (1, 2, 4, 8, 15, 30)
# A synthetic clip keeps at most this many processed frames after its keyframe.
MAX_STEPS = 6
# The val clip's windows start every this many frames (its 101 frames are 1/15 s apart).
WINDOW_STRIDE = 5


@dataclass
class _Pairs:
    """Pairs gathered so far (one entry per pair)."""

    warped: list[torch.Tensor] = field(default_factory=list)
    update: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    ages: list[float] = field(default_factory=list)

    def cache(self) -> PairCache:
        if not self.warped:
            raise ValueError("no (keyframe, current) pairs: the frames make no clip of two")
        return PairCache(torch.cat(self.warped), torch.cat(self.update), torch.stack(self.labels),
                         torch.tensor(self.steps), ages=torch.tensor(self.ages))


@torch.no_grad()
def add_clip(
    pairs: _Pairs,
    model: AccelNet,
    flow: FlowEstimator,
    frames: list[np.ndarray],
    labels: list[np.ndarray],
    ages: list[float],
    device: torch.device,
) -> None:
    """Pairs (frame 0, frame t) of one clip for t = 1..T-1: the keyframe's N_R features warped
    step by step to frame t (`AccelNet.warp_clip`), s_U of frame t, t's labels and age.

    frames: T (H, W, 3) uint8 at the network size; labels: T (H, W) uint8; ages: T seconds
    (ages[0] = 0)."""
    images = to_tensor(frames).to(device)
    flows = torch.stack([flow(images[t - 1 : t], images[t : t + 1])[0]
                         for t in range(1, len(frames))])
    size = (int(images.shape[-2]), int(images.shape[-1]))
    warped = model.warp_clip(model.reference_features(images[:1]), flows[None], size)
    current = update_scores(model, images[1:])
    for t in range(1, len(frames)):
        pairs.warped.append(model.reference_scores(warped[t - 1]).cpu())
        pairs.update.append(current[t - 1 : t].cpu())
        pairs.labels.append(torch.from_numpy(np.ascontiguousarray(labels[t])))
        pairs.steps.append(t)
        pairs.ages.append(float(ages[t]))


def real_windows(
    frames: FrameSet, size: tuple[int, int], max_age: float
) -> list[tuple[list[np.ndarray], list[np.ndarray], list[float]]]:
    """(frames, labels, ages) of every window of consecutive labelled frames of one sequence
    whose ages reach at most `max_age` (windows of the dense val clip start every
    WINDOW_STRIDE frames), resized to `size`."""
    runs: dict[str, list[int]] = {}
    for index, sequence in enumerate(frames.sequences):
        runs.setdefault(sequence, []).append(index)
    windows = []
    for indices in runs.values():
        times = _times(frames, indices)
        step = np.median(np.diff(times)) if len(times) > 1 else 1.0
        stride = WINDOW_STRIDE if step < 0.5 else 1
        for start in range(0, len(indices) - 1, stride):
            chosen = [k for k in range(start, len(indices))
                      if times[k] - times[start] <= max_age + 1e-6]
            if len(chosen) < 2:
                continue
            resized = [resize_pair(frames.images[indices[k]], frames.labels[indices[k]], size)
                       for k in chosen]
            windows.append(([r[0] for r in resized], [r[1] for r in resized],
                            [times[k] - times[start] for k in chosen]))
    return windows


def motion_windows(
    frames: FrameSet, size: tuple[int, int], max_age: float, seed: int,
    steps: tuple[int, ...] = FRAME_STEPS,
) -> list[tuple[list[np.ndarray], list[np.ndarray], list[float]]]:
    """One synthetic camera-motion clip per labelled frame, seen one frame in n (n cycling
    through `steps`), up to `max_age` seconds or MAX_STEPS kept frames; half mirrored."""
    rng = np.random.default_rng(seed)
    windows = []
    for index in range(len(frames)):
        image, labels = resize_pair(frames.images[index], frames.labels[index], size)
        if rng.random() < 0.5:
            image, labels = image[:, ::-1], labels[:, ::-1]
        step = steps[index % len(steps)]
        kept = int(min(MAX_STEPS, max_age / (step * FRAME_TIME_S) + 1e-6))
        if kept < 1:
            continue
        clip = make_motion_clip(np.ascontiguousarray(image), np.ascontiguousarray(labels),
                                step * kept + 1, random_motion(labels.shape[:2], rng))
        chosen = range(0, step * kept + 1, step)
        windows.append(([clip.frames[t] for t in chosen], [clip.labels[t] for t in chosen],
                        [t * FRAME_TIME_S for t in chosen]))
    return windows


def build_age_pair_cache(
    model: AccelNet,
    frames: FrameSet,
    size: tuple[int, int],
    device: torch.device,
    max_age: float = 2.0,
    flow_scale: float = 0.5,
    seed: int = 0,
    real: bool = True,
    steps: tuple[int, ...] = FRAME_STEPS,
) -> PairCache:
    """Pairs at ages up to `max_age` s from real windows (`real`) and synthetic motion seen
    one frame in n for n in `steps` (always), with the frozen branches' outputs;
    `PairCache.ages` holds each pair's age."""
    model.eval()
    flow = build_flow("dis", flow_scale)
    pairs = _Pairs()
    windows = motion_windows(frames, size, max_age, seed, steps)
    if real:
        windows += real_windows(frames, size, max_age)
    for clip_frames, clip_labels, ages in windows:
        add_clip(pairs, model, flow, clip_frames, clip_labels, ages, device)
    return pairs.cache()


def _times(frames: FrameSet, indices: list[int]) -> list[float]:
    """Seconds of the frames `indices` from CamVid's 30 fps video frame numbers; frames of
    other data (no numbers in their names) are taken as 1/30 s apart."""
    try:
        return [parse_frame_name(frames.names[i])[1] * FRAME_TIME_S for i in indices]
    except (ValueError, IndexError):
        return [position * FRAME_TIME_S for position in range(len(indices))]
