"""(keyframe, current) pairs for the fusion and joint stages, with the frozen branches' outputs
computed once.

Each labelled frame becomes a synthetic 30 fps camera-motion clip (`data/clips.motion_clips`:
zoom, pan, roll; exact labels on every frame). The keyframe's N_R features are carried through
the clip by `AccelNet.warp_clip` with the pipeline's own flow (DIS), as at inference. While
the reference is frozen its warped scores never change, so the stages train on cached maps:
minutes on a CPU instead of hours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.clips import motion_clips
from ..data.frames import FrameSet, resize_pair, to_tensor
from ..data.motion import FRAME_TIME_S
from ..model import AccelNet, build_flow


@dataclass
class PairCache:
    """Frozen-branch outputs for every (keyframe, current) pair.

    warped: (P, K, h, w) reference scores of the keyframe warped to the current frame;
    update: (P, K, h, w) update-branch scores of the current frame; labels: (P, H, W) uint8;
    offsets: (P,) keyframe offsets; current: (P, 3, H, W) uint8 current frames, kept only
    for the joint stage (which recomputes the update scores as N_U trains); ages: (P,) seconds
    since the keyframe (age-aware pairs, `age_pairs.py`), None for 30 fps pairs.
    """

    warped: torch.Tensor
    update: torch.Tensor
    labels: torch.Tensor
    offsets: torch.Tensor
    current: torch.Tensor | None = None
    ages: torch.Tensor | None = None

    def ages_of(self, index: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B,) seconds since the keyframe of pairs `index` (offsets at 30 fps without ages)."""
        if self.ages is not None:
            return self.ages[index]
        return self.offsets[index].float() * FRAME_TIME_S

    def __len__(self) -> int:
        return len(self.labels)

    def frames(self, index: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
        """(B,) pair indices -> (B, 3, H, W) float current frames in [0, 1]."""
        if self.current is None:
            raise ValueError("this pair cache was built without its current frames")
        return self.current[index].to(device).float().div_(255.0)


def update_scores(model: AccelNet, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> s_U (N, K, h, w)."""
    return model.update_scores(model.update_features(images))


def fused_logits(
    model: AccelNet,
    warped: torch.Tensor,
    update: torch.Tensor,
    size: tuple[int, int],
    age_s: torch.Tensor | None = None,
) -> torch.Tensor:
    """Score fusion of warped reference scores and update scores (N, K, h, w) -> logits
    (N, K, H, W) at `size`, through `AccelNet.fuse` (`age_s` (N,): keyframe ages, read by an
    age-aware fusion). The cache keeps scores, not features: score fusion needs none, and
    the stages refuse feature-fusion models."""
    return model.upsample(model.fuse(None, None, warped, update, age_s=age_s), size)


@torch.no_grad()
def build_pair_cache(
    model: AccelNet,
    frames: FrameSet,
    offsets: tuple[int, ...],
    size: tuple[int, int],
    device: torch.device,
    flow_scale: float = 0.5,
    seed: int = 0,
    flip: bool = False,
    keep_frames: bool = False,
) -> PairCache:
    """Frozen-branch outputs for (keyframe, current) pairs at keyframe `offsets` (frames of a
    30 fps clip) of one motion clip per frame of `frames`, resized to `size` (H, W).

    `flip` mirrors half of the clips (augmentation); `keep_frames` keeps the current frames
    (uint8) for the joint stage. Pairs come clip by clip, offsets ascending.
    """
    model.eval()
    length = max(offsets) + 1
    resized = [resize_pair(frames.images[i], frames.labels[i], size) for i in range(len(frames))]
    flow = build_flow("dis", flow_scale)
    warped, update, labels, pair_offsets, current = [], [], [], [], []
    clips = motion_clips([r[0] for r in resized], [r[1] for r in resized], length, seed,
                         frames.names, flip=flip)
    for clip in clips:
        images = to_tensor(clip.frames).to(device)  # (T, 3, H, W)
        flows = torch.stack([flow(images[step - 1 : step], images[step : step + 1])[0]
                             for step in range(1, length)])  # (T-1, 2, h', w')
        features = model.warp_clip(model.reference_features(images[:1]), flows[None], size)
        current_scores = update_scores(model, images[1:])
        for step in range(1, length):
            if step not in offsets:
                continue
            warped.append(model.reference_scores(features[step - 1]).cpu())
            update.append(current_scores[step - 1 : step].cpu())
            labels.append(torch.from_numpy(np.ascontiguousarray(clip.labels[step])))
            pair_offsets.append(step)
            if keep_frames:
                current.append(torch.from_numpy(clip.frames[step]).permute(2, 0, 1).clone())
    if not warped:
        raise ValueError(f"no (keyframe, current) pairs at offsets {offsets}")
    return PairCache(torch.cat(warped), torch.cat(update), torch.stack(labels),
                     torch.tensor(pair_offsets), torch.stack(current) if keep_frames else None)
