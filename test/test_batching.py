"""The one batching policy for several cameras (accel_ros.stream.batching), used by the node's
BatchProcessor and by `accel-ros segment`: a refused frame costs only its own stream, any
other failure fails the batch's streams and resets their caches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.io import rosbag
from accel_ros.model import AccelNet
from accel_ros.replay import runner as replay
from accel_ros.stream import AccelSegmenter, SegmentationResult, StreamFrame
from accel_ros.stream.batching import FrameOutcome, refusal, segment_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeSegmenter:
    """Records batches and resets. `refuse`: streams whose frames process_batch refuses (a
    ValueError for the whole batch, as the real one raises before any cache changes);
    `fail`: an exception for the next process_batch; `reverse`: results in the wrong order."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.resets: list[str | None] = []
        self.refuse: set[str] = set()
        self.fail: Exception | None = None
        self.reverse = False

    def check_frame(self, frame) -> None:
        AccelSegmenter.check_frame(frame)

    def reset(self, reason=None, stream="default") -> None:
        self.resets.append(stream)

    def process_batch(self, frames):
        self.batches.append([f.stream for f in frames])
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        refused = [f.stream for f in frames if f.stream in self.refuse]
        if refused:
            raise ValueError(f"stream {refused[0]!r}: refused")
        results = [SegmentationResult(labels=np.zeros(f.frame.shape[:2], np.uint8),
                                      confidence=0.5, is_keyframe=True, keyframe_age=0,
                                      frame_index=0, timings={"total": 1.0}, stream=f.stream,
                                      batch_size=len(frames)) for f in frames]
        return results[::-1] if self.reverse else results


def frames(*streams: str) -> list[StreamFrame]:
    return [StreamFrame(s, np.full((8, 12, 3), i, np.uint8)) for i, s in enumerate(streams)]


def test_a_batch_gives_one_result_per_frame_in_order():
    segmenter = FakeSegmenter()
    outcomes = segment_batch(segmenter, frames("a", "b", "c"))
    assert segmenter.batches == [["a", "b", "c"]]  # one call for every stream
    assert [(o.stream, o.result.stream, o.error, o.failed) for o in outcomes] == [
        ("a", "a", "", False), ("b", "b", "", False), ("c", "c", "", False)]
    assert segment_batch(segmenter, []) == [] and segmenter.batches == [["a", "b", "c"]]
    with pytest.raises(ValueError, match="at most one frame per stream"):
        segment_batch(segmenter, frames("a", "a"))


def test_a_frame_the_segmenter_refuses_costs_only_its_own_stream():
    segmenter = FakeSegmenter()
    bad = frames("a", "b", "c")
    bad[1] = StreamFrame("b", np.zeros((0, 4, 3), np.uint8))  # check_frame refuses it
    outcomes = segment_batch(segmenter, bad)
    assert segmenter.batches == [["a", "c"]]
    assert [o.result is None for o in outcomes] == [False, True, False]
    assert outcomes[1].error and not outcomes[1].failed and segmenter.resets == []
    assert refusal(segmenter, bad[1].frame) == outcomes[1].error
    assert refusal(segmenter, bad[0].frame) is None
    # Refused by process_batch itself: the batch is run again frame by frame.
    segmenter = FakeSegmenter()
    segmenter.refuse = {"b"}
    outcomes = segment_batch(segmenter, frames("a", "b", "c"))
    assert segmenter.batches == [["a", "b", "c"], ["a"], ["b"], ["c"]]
    assert [o.result is None for o in outcomes] == [False, True, False]
    assert outcomes[1] == FrameOutcome("b", None, "stream 'b': refused", False)
    assert segmenter.resets == []  # nothing reached a cache


def test_any_other_failure_fails_the_batch_and_resets_its_streams():
    segmenter = FakeSegmenter()
    segmenter.fail = RuntimeError("CUDA out of memory")
    outcomes = segment_batch(segmenter, frames("a", "c"))
    assert [(o.result, o.error, o.failed) for o in outcomes] == [
        (None, "RuntimeError: CUDA out of memory", True)] * 2
    assert segmenter.resets == ["a", "c"]  # their caches may be half-updated
    assert all(o.result is not None for o in segment_batch(segmenter, frames("a", "c")))
    # Results for the wrong streams are a failure too: never another stream's labels.
    segmenter.reverse = True
    outcomes = segment_batch(segmenter, frames("a", "b"))
    assert all(o.failed for o in outcomes)
    assert "returned results for streams ['b', 'a']" in outcomes[0].error


# --- `accel-ros segment` under the same policy ------------------------------------------------


class FailingSecondBatch:
    """A real segmenter whose second process_batch raises (as CUDA out of memory would)."""

    def __init__(self, segmenter: AccelSegmenter) -> None:
        self.segmenter = segmenter
        self.model_config = segmenter.model_config
        self.pipeline_config = segmenter.pipeline_config
        self.check_frame = segmenter.check_frame
        self.configure_streams = segmenter.configure_streams
        self.calls = 0
        self.resets: list[str | None] = []

    def reset(self, reason=None, stream="default"):
        self.resets.append(stream)
        self.segmenter.reset(reason, stream=stream)

    def process_batch(self, batch):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory")
        return self.segmenter.process_batch(batch)


def test_segment_survives_a_failing_batch_like_the_node(tmp_path):
    """The batch fails, its frames are skipped and their cameras restart from a keyframe; the
    run goes on (it used to end with the exception)."""
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 255, (48, 64, 3), np.uint8) for _ in range(4)]
    cameras = {"/front/image_raw": clip, "/rear/image_raw": [f[::-1] for f in clip]}
    rosbag.write_cameras_bag(tmp_path / "rig", cameras)
    torch.manual_seed(0)
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                                 head_channels=16)).eval()
    segmenter = FailingSecondBatch(AccelSegmenter(model, PipelineConfig(
        keyframe_interval=3, device="cpu", stagger_keyframes=False)))
    summary = replay.segment(tmp_path / "rig", tmp_path / "out", segmenter, all_topics=True,
                             quiet=True)
    assert summary.frames == 6 and len(summary.skipped) == 2
    assert all("segmentation failed (RuntimeError: CUDA out of memory)" in line
               for line in summary.skipped)
    assert segmenter.resets == ["/front/image_raw", "/rear/image_raw"]
    tallies = summary.extra["topics"]
    assert {t: (n.frames, n.skipped) for t, n in tallies.items()} == {
        "/front/image_raw": (3, 1), "/rear/image_raw": (3, 1)}
    stats = {topic: [] for topic in cameras}
    from rosbags.highlevel import AnyReader

    typestore = rosbag.make_typestore()
    with AnyReader([tmp_path / "out"], default_typestore=typestore) as reader:
        for connection, _, raw in reader.messages():
            if connection.topic.endswith("/stats"):
                stats[connection.topic.removesuffix("/stats")].append(
                    reader.deserialize(raw, connection.msgtype))
    for topic in cameras:  # frame 1 failed: frame 2 is a keyframe again, not frame 3
        assert [s.is_keyframe for s in stats[topic]] == [True, True, False], topic
