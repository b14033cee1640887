"""Labels at image size from low-resolution scores, without upsampling every class score.

`upsample(scores).argmax(dim=1)` interpolates K scores at each of H x W pixels and reduces them;
at 360x480 with 11 classes that is ~4 ms of a CPU thread per frame, the largest single step of
a warped frame once the networks run through an exported backend. Most of that work decides
nothing: bilinear upsampling blends two low-resolution rows, and where both rows' column-
interpolated scores have the same winning class, every blend of them has that winner too (a
convex combination of score vectors that all peak at class k peaks at k, first maximum
included). `BilinearLabels` therefore

1. interpolates along the width only, on the h low-resolution rows: (K, h, W), a small matrix
   product;
2. takes the winner of each of those h x W cells;
3. for each band of output rows that blends the same two source rows, copies the winner down
   where the two rows agree, and interpolates and reduces the K scores only where they differ
   (about 15 % of the pixels on CamVid frames).

The labels are those of `ScoreUpsampler("bilinear")` + argmax up to float rounding (the order
of the additions differs), so only exact ties can go the other way.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from ..model.resampling import resize_matrix

# Source/destination sizes whose tables stay built (a handful of camera sizes in one node).
MAX_TABLES = 8


def class_argmax(logits: torch.Tensor) -> torch.Tensor:
    """Full-resolution scores (N, K, H, W) -> labels (N, H, W) uint8, the first maximum as
    argmax keeps it. On a CPU, argmax over the channels of a contiguous tensor is a strided
    reduction (~22 ms of ~26 ms for 11 classes at 256x512); a channels-last max takes a few."""
    return logits.contiguous(memory_format=torch.channels_last).max(dim=1).indices.to(torch.uint8)


def _two_taps(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A bilinear resampling matrix (out, in) as, per output index, its two source indices
    (equal at the borders) and their weights: (first (out,), second (out,), weights (out, 2))."""
    size_out = matrix.shape[0]
    first = torch.empty(size_out, dtype=torch.long)
    second = torch.empty(size_out, dtype=torch.long)
    for index, row in enumerate(matrix):
        taps = torch.nonzero(row).flatten()
        first[index], second[index] = taps[0], taps[-1]
    rows = torch.arange(size_out)
    weights = torch.stack(
        (matrix[rows, first], torch.where(second != first, matrix[rows, second], 0.0)), dim=1
    )
    return first, second, weights.float()


class BilinearLabels:
    """Labels (N, H, W) uint8 of bilinearly upsampled scores (N, K, h, w) for one pair of
    sizes, on the CPU. Build once per (h, w, H, W); calls allocate only their outputs."""

    def __init__(self, low: tuple[int, int], high: tuple[int, int]) -> None:
        (h, w), (height, width) = low, high
        self.low, self.high = (h, w), (height, width)
        rows_first, rows_second, row_weights = _two_taps(resize_matrix(h, height))
        # Column interpolation as one (w, W) matrix: (K*h, w) @ (w, W).
        self.column_matrix = resize_matrix(w, width).T.float().contiguous()
        # Output rows in bands that blend the same two source rows; each band padded to the
        # tallest so that a band is one slice of a (bands, tallest, W) tensor.
        pair = rows_first * h + rows_second
        _, band_of_row, band_heights = torch.unique_consecutive(
            pair, return_inverse=True, return_counts=True
        )
        bands, tallest = int(band_heights.numel()), int(band_heights.max())
        starts = torch.cumsum(band_heights, 0) - band_heights
        offset_in_band = torch.arange(height) - starts[band_of_row]
        self.band_first = rows_first[starts]  # (bands,) source rows of each band
        self.band_second = rows_second[starts]
        band_weights = torch.zeros(bands, tallest, 2)
        band_weights[band_of_row, offset_in_band] = row_weights
        # (bands, tallest) each: the weights of a band's first and second source row.
        self.upper_weights = band_weights[..., 0].contiguous()
        self.lower_weights = band_weights[..., 1].contiguous()
        self.row_in_padded = band_of_row * tallest + offset_in_band  # (H,) into bands*tallest
        self.bands, self.tallest = bands, tallest

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """(N, K, h, w) float on the CPU -> (N, H, W) uint8."""
        return torch.stack([self._one(frame) for frame in scores.float()])

    def _one(self, scores: torch.Tensor) -> torch.Tensor:
        classes, (h, _), width = scores.shape[0], self.low, self.high[1]
        # (K, h, w) -> per class, source row and output column: (K, h, W). Classes stay the
        # outer axis throughout: a max over it reads contiguous rows (about twice as fast on
        # a CPU as an argmax over a short last axis).
        columns = (scores.reshape(classes * h, -1) @ self.column_matrix).view(classes, h, width)
        winners = columns.max(dim=0).indices  # (h, W), the first maximum as argmax keeps it
        first, second = winners[self.band_first], winners[self.band_second]  # (bands, W)
        padded = first.to(torch.uint8)[:, None, :].expand(-1, self.tallest, -1).contiguous()
        band, column = torch.nonzero(first != second, as_tuple=True)
        if band.numel():
            upper = columns[:, self.band_first[band], column]  # (K, P)
            lower = columns[:, self.band_second[band], column]
            weights = self.upper_weights[band]  # (P, tallest)
            # upper * w1 + lower * w2 in one buffer: (K, P, tallest); two in-place passes
            # instead of three temporaries (1.5 ms against 2.5 ms for 3000 pixel columns).
            blended = torch.empty((classes, *weights.shape))
            torch.mul(upper[:, :, None], weights, out=blended)
            blended.addcmul_(lower[:, :, None], self.lower_weights[band])
            padded[band, :, column] = blended.max(dim=0).indices.to(torch.uint8)
        return padded.view(self.bands * self.tallest, width)[self.row_in_padded]


class LabelUpsampler:
    """`BilinearLabels` for whatever sizes come, their tables kept for the last MAX_TABLES
    size pairs (one node may serve cameras of several sizes)."""

    def __init__(self) -> None:
        self._tables: OrderedDict[tuple[int, ...], BilinearLabels] = OrderedDict()

    def __call__(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, K, h, w) CPU scores -> (N, H, W) uint8 labels at `size` = (H, W)."""
        key = (int(scores.shape[-2]), int(scores.shape[-1]), int(size[0]), int(size[1]))
        table = self._tables.get(key)
        if table is None:
            table = BilinearLabels(key[:2], key[2:])
            self._tables[key] = table
            while len(self._tables) > MAX_TABLES:
                self._tables.popitem(last=False)
        self._tables.move_to_end(key)
        return table(scores)
