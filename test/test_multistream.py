"""AccelSegmenter with several streams: per-stream caches, batched inference, staggered
keyframes, per-stream resets and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.model import AccelNet
from accel_ros.stream import AccelSegmenter, StreamFrame
from accel_ros.stream.segmenter import run_batched

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _streams(count: int, frames: int = 6, size: tuple[int, int] = (64, 96)) -> list[list]:
    """`count` visibly different clips: each a smooth texture of its own seed sliding by its
    own step (px per frame)."""
    import cv2

    clips = []
    for index in range(count):
        rng = np.random.default_rng(100 + index)
        step = 1 + index
        base = rng.integers(0, 255, size=(size[0], size[1] + step * frames, 3), dtype=np.uint8)
        base = cv2.GaussianBlur(base, (0, 0), 2.0 + index)
        clips.append([np.ascontiguousarray(base[:, step * t : step * t + size[1]])
                      for t in range(frames)])
    return clips


def _segmenter(model: AccelNet, **pipeline) -> AccelSegmenter:
    pipeline.setdefault("device", "cpu")
    return AccelSegmenter(model, PipelineConfig(**pipeline))


@pytest.mark.parametrize("mode", ["accel", "dff", "deeplab", "reference"])
def test_a_batch_gives_what_separate_segmenters_give(tiny_config, mode) -> None:
    """Three streams through one segmenter in batches == each stream through its own
    segmenter: so no stream's frame is ever warped with another stream's cache."""
    model = AccelNet(tiny_config)
    clips = _streams(3)
    names = ["front", "left", "right"]
    shared = _segmenter(model, mode=mode, keyframe_interval=3, stagger_keyframes=False)
    shared.configure_streams(names)
    alone = {name: _segmenter(model, mode=mode, keyframe_interval=3) for name in names}
    for t in range(6):
        batch = [StreamFrame(name, clips[i][t], stamp=0.1 * t) for i, name in enumerate(names)]
        results = shared.process_batch(batch)
        for name, frame, result in zip(names, [b.frame for b in batch], results, strict=True):
            expected = alone[name].process(frame, stamp=0.1 * t)
            assert result.stream == name and result.batch_size == 3
            assert result.frame_index == expected.frame_index == t
            assert result.is_keyframe == expected.is_keyframe
            agreement = float(np.mean(result.labels == expected.labels))
            assert agreement >= 0.999, (name, t, agreement)
            assert result.confidence == pytest.approx(expected.confidence, abs=1e-4)


def test_streams_content_differs_so_routing_is_observable(tiny_config) -> None:
    """Guard for the test above: the streams' labels really differ from each other."""
    model = AccelNet(tiny_config)
    seg = _segmenter(model, keyframe_interval=3)
    seg.configure_streams(["a", "b"])
    clips = _streams(2)
    a, b = seg.process_batch([StreamFrame("a", clips[0][0]), StreamFrame("b", clips[1][0])])
    assert float(np.mean(a.labels == b.labels)) < 0.99  # vs >= 0.999 agreement above


def test_keyframes_are_staggered_across_streams(tiny_config) -> None:
    """Four streams, k = 4: after the first batch (every stream starts on a keyframe) each
    batch carries exactly one reference-network run; every stream still keyframes every k
    frames after its shortened first interval."""
    seg = _segmenter(AccelNet(tiny_config), keyframe_interval=4)
    names = ["s0", "s1", "s2", "s3"]
    seg.configure_streams(names)
    clips = _streams(4, frames=12, size=(32, 48))
    keyframes = {name: [] for name in names}
    per_batch = []
    for t in range(12):
        results = seg.process_batch([StreamFrame(n, clips[i][t]) for i, n in enumerate(names)])
        per_batch.append(sum(r.is_keyframe for r in results))
        for result in results:
            if result.is_keyframe:
                keyframes[result.stream].append(t)
    assert per_batch[0] == 4, keyframes
    assert per_batch[1:] == [1] * 11, keyframes
    assert keyframes == {"s0": [0, 4, 8], "s1": [0, 3, 7, 11], "s2": [0, 2, 6, 10],
                         "s3": [0, 1, 5, 9]}


def test_without_stagger_every_stream_keyframes_together(tiny_config) -> None:
    seg = _segmenter(AccelNet(tiny_config), keyframe_interval=3, stagger_keyframes=False)
    seg.configure_streams(["a", "b"])
    clips = _streams(2, frames=6, size=(32, 48))
    flags = [[r.is_keyframe for r in seg.process_batch(
        [StreamFrame("a", clips[0][t]), StreamFrame("b", clips[1][t])])] for t in range(6)]
    assert flags == [[t % 3 == 0] * 2 for t in range(6)]


def test_a_malformed_frame_names_its_stream_and_changes_no_cache(tiny_config) -> None:
    seg = _segmenter(AccelNet(tiny_config))
    seg.configure_streams(["a", "b"])
    clips = _streams(2)
    seg.process_batch([StreamFrame("a", clips[0][0]), StreamFrame("b", clips[1][0])])
    bad = np.zeros((64, 96), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"stream 'b'.*expected an \(H, W, 3\)"):
        seg.process_batch([StreamFrame("a", clips[0][1]), StreamFrame("b", bad)])
    assert seg.stream_state("a").frame_index == 0 and seg.stream_state("b").frame_index == 0
    with pytest.raises(ValueError, match="at most one frame per stream"):
        seg.process_batch([StreamFrame("a", clips[0][1]), StreamFrame("a", clips[0][2])])
    with pytest.raises(ValueError, match="stream 'b'"):
        seg.process_batch([StreamFrame("b", bad)])
    with pytest.raises(ValueError, match="expected an \\(H, W, 3\\)"):
        seg.check_frame(bad)


def test_a_resolution_change_resets_only_its_own_stream(tiny_config) -> None:
    seg = _segmenter(AccelNet(tiny_config), keyframe_interval=10)
    seg.configure_streams(["a", "b"])
    small, large = _streams(1, size=(64, 96))[0], _streams(1, size=(96, 128))[0]
    first = seg.process_batch([StreamFrame("a", small[0]), StreamFrame("b", small[0])])
    assert all(r.is_keyframe for r in first)
    a, b = seg.process_batch([StreamFrame("a", small[1]), StreamFrame("b", large[1])])
    assert not a.is_keyframe and a.reset_reason is None and a.keyframe_age == 1
    assert b.is_keyframe and "resolution changed" in b.reset_reason
    assert a.labels.shape == (64, 96) and b.labels.shape == (96, 128)


def test_a_time_gap_or_reset_touches_one_stream(tiny_config) -> None:
    seg = _segmenter(AccelNet(tiny_config), keyframe_interval=10, max_time_gap=0.5)
    seg.configure_streams(["a", "b"])
    clip = _streams(1)[0]
    seg.process_batch([StreamFrame("a", clip[0], 0.0), StreamFrame("b", clip[0], 0.0)])
    a, b = seg.process_batch([StreamFrame("a", clip[1], 0.1), StreamFrame("b", clip[1], 2.0)])
    assert not a.is_keyframe and b.is_keyframe and "time gap" in b.reset_reason
    seg.reset("operator asked", stream="a")
    a, b = seg.process_batch([StreamFrame("a", clip[2], 0.2), StreamFrame("b", clip[2], 2.1)])
    assert a.is_keyframe and a.reset_reason == "operator asked" and not b.is_keyframe
    seg.reset(stream=None)
    results = seg.process_batch([StreamFrame("a", clip[3], 0.3), StreamFrame("b", clip[3], 2.2)])
    assert all(r.is_keyframe for r in results)


def test_a_silent_stream_is_simply_absent_from_the_batch(tiny_config) -> None:
    """Streams need not all be in every batch: one that stopped does not hold the others."""
    seg = _segmenter(AccelNet(tiny_config), keyframe_interval=3, stagger_keyframes=False)
    seg.configure_streams(["a", "b"])
    clips = _streams(2)
    seg.process_batch([StreamFrame("a", clips[0][0]), StreamFrame("b", clips[1][0])])
    indices = [seg.process_batch([StreamFrame("a", clips[0][t])])[0].frame_index
               for t in range(1, 6)]
    assert indices == [1, 2, 3, 4, 5]
    b = seg.process_batch([StreamFrame("b", clips[1][1])])[0]
    assert b.frame_index == 1 and not b.is_keyframe  # b resumes where it was


def test_run_batched_groups_by_shape_and_keeps_order() -> None:
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return x * 2

    inputs = [(torch.full((1, 2, 3), float(i)),) for i in range(3)]
    inputs.insert(1, (torch.full((1, 2, 5), 7.0),))
    outputs = run_batched(double, inputs)
    assert sorted(calls) == [(1, 2, 5), (3, 2, 3)]
    for (x,), y in zip(inputs, outputs, strict=True):
        torch.testing.assert_close(y, x * 2)
    keyed = run_batched(lambda x, key: x + key, [(torch.zeros(1, 1),)] * 2, keys=[1.0, 2.0])
    assert [float(y) for y in keyed] == [1.0, 2.0]


def test_configure_streams_checks_names(tiny_config: ModelConfig) -> None:
    seg = _segmenter(AccelNet(tiny_config))
    with pytest.raises(ValueError, match="unique"):
        seg.configure_streams(["a", "a"])
    seg.configure_streams(["a", "b"])
    assert seg.streams == ("a", "b")
