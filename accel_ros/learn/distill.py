"""Distillation of the update branch N_U from a reference N_R: N_U learns the reference's soft
class scores (what it sees, with its doubts between classes) besides the labels.

The teacher's scores are computed once per frame at the network's input size (averaged with
those of the mirrored frame) and kept at its output stride, (K, h, w) per frame: a few MB for
CamVid. Each training batch then resamples them with the same affine map as the frame
(`batch_augment`), so distillation adds no teacher pass to a step: the CPU cost of N_U alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.frames import FrameSet, resize_pair, to_tensor
from ..model import AccelNet, SegmentationBranch, load_model


def load_teacher(spec: str, model: AccelNet) -> SegmentationBranch:
    """The reference branch to distil from: "self" = `model`'s own (already trained), else a
    checkpoint (path or "default", through `load_model`) with the same classes."""
    if spec == "self":
        return model.reference
    teacher = load_model(spec).model
    if teacher.config.num_classes != model.config.num_classes:
        raise ValueError(f"teacher {spec} has {teacher.config.num_classes} classes, the model "
                         f"{model.config.num_classes}")
    return teacher.reference


@torch.no_grad()
def teacher_scores(
    teacher: SegmentationBranch,
    frames: FrameSet,
    size: tuple[int, int],
    device: torch.device,
    batch_size: int = 4,
) -> torch.Tensor:
    """(N, K, h, w) float16 scores of `teacher` on every frame resized to `size` (H, W), the
    mean of the frame's and its mirror's (mirrored back), on the host."""
    was_training = teacher.training
    teacher.eval().to(device)
    out = []
    for start in range(0, len(frames), batch_size):
        chosen = range(start, min(start + batch_size, len(frames)))
        images = to_tensor([resize_pair(frames.images[i], frames.labels[i], size)[0]
                            for i in chosen]).to(device)
        scores = teacher(images) + teacher(images.flip(-1)).flip(-1)
        out.append((scores / 2).half().cpu())
    teacher.train(was_training)
    return torch.cat(out)


def distillation_loss(
    logits: torch.Tensor,
    teacher: torch.Tensor,
    labels: torch.Tensor,
    inside: torch.Tensor,
    criterion: torch.nn.Module,
    weight: float = 0.5,
    temperature: float = 2.0,
) -> torch.Tensor:
    """(1 - weight) x cross-entropy on the labels + weight x T^2 x KL(teacher || student) at
    temperature T, the KL averaged over the pixels `inside` the source frame (void pixels
    included: the teacher has an opinion there too).

    logits, teacher: (N, K, h, w) at one size; labels (N, h, w) int64; inside (N, h, w) bool.
    """
    loss = criterion(logits.float(), labels) if weight < 1 else logits.new_zeros(())
    if weight <= 0:
        return loss
    log_student = F.log_softmax(logits.float() / temperature, dim=1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    kl = (kl * inside).sum() / inside.sum().clamp_min(1)
    return (1 - weight) * loss + weight * temperature**2 * kl
