"""Labels straight from low-resolution scores (model/labels.py) against upsample + argmax."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from accel_ros.stream.labels import MAX_TABLES, BilinearLabels, LabelUpsampler


def _plain(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    logits = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def _smooth_scores(seed: int, classes: int, low: tuple[int, int]) -> torch.Tensor:
    """Scores shaped like a segmentation net's: regions of one winner with boundaries."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, classes, max(2, low[0] // 4), max(2, low[1] // 4), generator=generator)
    smooth = F.interpolate(coarse, size=low, mode="bilinear", align_corners=False)
    return 4 * smooth + 0.3 * torch.randn(1, classes, *low, generator=generator)


@pytest.mark.parametrize(
    ("low", "high"),
    [((23, 30), (360, 480)), ((23, 30), (361, 479)), ((45, 60), (720, 960)),
     ((12, 15), (180, 240)), ((1, 1), (7, 9)), ((1, 6), (5, 40)), ((9, 1), (70, 3)),
     ((23, 30), (20, 25))],
)
def test_labels_equal_upsample_then_argmax(low, high) -> None:
    """Same labels as interpolating every score; a pixel may differ only at a float near-tie
    (the additions run in another order)."""
    for seed in range(3):
        scores = _smooth_scores(seed, 11, low)
        expected = _plain(scores, high)[0]
        labels = BilinearLabels(low, high)(scores)
        assert labels.dtype == torch.uint8 and labels.shape == (1, *high)
        differ = labels[0].long() != expected
        logits = F.interpolate(scores, size=high, mode="bilinear", align_corners=False)[0]
        top2 = logits.topk(2, dim=0).values
        if differ.any():
            assert (top2[0] - top2[1])[differ].max().item() < 1e-4
        assert differ.float().mean().item() <= 1e-4


def test_ties_keep_the_first_class_and_batches_are_per_frame() -> None:
    """All-equal scores give class 0 (argmax's first maximum); each frame of a batch has its
    own labels."""
    scores = torch.zeros(3, 5, 6, 8)
    scores[1, 3] = 1.0
    scores[2, :, :3] = torch.arange(5.0).view(5, 1, 1)  # class 4 wins the top rows only
    labels = BilinearLabels((6, 8), (48, 64))(scores)
    assert labels.shape == (3, 48, 64)
    assert labels[0].eq(0).all() and labels[1].eq(3).all()
    torch.testing.assert_close(labels[2].long(), _plain(scores[2:], (48, 64))[0], rtol=0, atol=0)


def test_the_upsampler_keeps_a_bounded_number_of_tables() -> None:
    upsampler = LabelUpsampler()
    scores = torch.randn(1, 4, 5, 6)
    for extra in range(MAX_TABLES + 3):
        size = (40 + extra, 48)
        torch.testing.assert_close(upsampler(scores, size)[0].long(), _plain(scores, size)[0],
                                   rtol=0, atol=0)
    assert len(upsampler._tables) == MAX_TABLES
