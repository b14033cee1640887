"""The time-gap rule (accel_ros/stream/timegaps.py), one rule for every path: the same
recording gives the same keyframes, stamp by stamp, through the node's processing, through
`accel-ros segment` on a bag and through `AccelSegmenter.process`, and several streams
batched together keep their own stamps."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from recording_logger import RecordingLogger
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from accel_ros.cli import segment as segment_cli
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.data.synthetic import generate_clip
from accel_ros.io import rosbag
from accel_ros.io.messages import stamp_to_seconds
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.ros.parameters import NodeOptions
from accel_ros.ros.processing import BatchProcessor
from accel_ros.ros.slots import StreamSlots
from accel_ros.stream import AccelSegmenter, StreamFrame
from accel_ros.stream.timegaps import StampGapMonitor

HEIGHT, WIDTH, FRAMES, INTERVAL = 64, 96, 20, 5
CAMERA = "/camera/image_raw"
START_S = 1_700_000_000.0


def _ten_hz() -> list[float]:
    return [START_S + 0.1 * i for i in range(FRAMES)]


def _gap_before(index: int, seconds: float) -> list[float]:
    return [t + (seconds if i >= index else 0.0) for i, t in enumerate(_ten_hz())]


# {name: (stamps in seconds, the frames that must be keyframes with k = 5, default
# max_time_gap 1 s)}. A 1 Hz camera with 1.02 s periods: every gap is over max_time_gap but
# none over twice the period, so only the interval makes keyframes. A real 5 s gap, and time
# going back 3 s (a bag that loops), each make a keyframe at once and restart the interval.
RECORDINGS = {
    "slow_1.02s": ([START_S + 1.02 * i for i in range(FRAMES)], [0, 5, 10, 15]),
    "gap_5s": (_gap_before(8, 5.0), [0, 5, 8, 13, 18]),
    "backwards_3s": (_gap_before(12, -3.0), [0, 5, 10, 12, 17]),
}


def _flags(keyframes: list[int]) -> list[bool]:
    return [i in keyframes for i in range(FRAMES)]


@pytest.fixture(scope="module")
def tiny_model() -> AccelNet:
    config = ModelConfig(num_classes=5, reference_backbone="resnet18",
                         update_backbone="resnet18", head_channels=16)
    return AccelNet(config).eval()


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    return [frame.image for frame in generate_clip(FRAMES, HEIGHT, WIDTH, seed=5)]


def _segmenter(model: AccelNet, **pipeline: object) -> AccelSegmenter:
    return AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=INTERVAL,
                                                **pipeline))


def _message(typestore, rgb: np.ndarray, stamp: float):
    """A CDR round-tripped sensor_msgs/Image, as a subscription delivers it."""
    header = rosbag.make_header(typestore, round(stamp * 1e9), "camera")
    msg = rosbag.camera_message(typestore, rgb, "rgb8", header)
    raw = typestore.serialize_cdr(msg, rosbag.IMAGE_TYPE)
    return typestore.deserialize_cdr(raw, rosbag.IMAGE_TYPE)


def node_keyframes(segmenter: AccelSegmenter, streams: dict[str, list]) -> dict[str, list]:
    """What the node does with the messages of `streams` ({stream: [message, ...]}, frame i of
    every stream arriving together): `AccelSegmentationNode._on_image` judges each arrival's
    gap and puts the message in its stream's slot; the worker takes the newest frame of every
    ready stream and segments them as one batch (`BatchProcessor.process`). Returns {stream:
    [(stamp, is_keyframe, reset_reason), ...]}."""
    names = list(streams)
    segmenter.configure_streams(names)  # as the node's _create_streams does
    slots = StreamSlots(names)
    processor = BatchProcessor(segmenter, names, NodeOptions(), logger=RecordingLogger(),
                               label_streams=len(names) > 1)
    seen: dict[str, list] = {name: [] for name in names}
    for messages in zip(*streams.values(), strict=True):
        for name, msg in zip(names, messages, strict=True):
            stamp = stamp_to_seconds(msg.header.stamp)
            slots.put(name, msg, segmenter.note_arrival(stamp or None, name))
        for outcome in processor.process(slots.take_ready(timeout=0)):
            result = outcome.outputs.result
            seen[outcome.stream].append(
                (stamp_to_seconds(outcome.msg.header.stamp), result.is_keyframe,
                 result.reset_reason))
    return seen


def write_bag(path: Path, clip: list[np.ndarray], stamps: list[float]) -> None:
    """One camera topic whose header stamps are `stamps`; bag time runs forward 10 ms a frame
    (a recorder's clock), whatever the stamps do."""
    typestore = rosbag.make_typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection(CAMERA, rosbag.IMAGE_TYPE, typestore=typestore)
        for index, (rgb, stamp) in enumerate(zip(clip, stamps, strict=True)):
            header = rosbag.make_header(typestore, round(stamp * 1e9), f"cam_{index}")
            msg = rosbag.camera_message(typestore, rgb, "rgb8", header)
            writer.write(camera, round(START_S * 1e9) + index * 10_000_000,
                         typestore.serialize_cdr(msg, rosbag.IMAGE_TYPE))


def segment_cli_keyframes(tmp_path: Path, model: AccelNet, clip: list[np.ndarray],
                          stamps: list[float]) -> list[tuple[float, bool, str]]:
    """`accel-ros segment` on a bag of `clip` stamped `stamps`: [(stamp, is_keyframe,
    reset_reason), ...] from its /stats topic, in recording order."""
    bag, out = tmp_path / "in_bag", tmp_path / "out_bag"
    write_bag(bag, clip, stamps)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", model)
    parser = argparse.ArgumentParser()
    segment_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["segment", str(bag), "--out", str(out), "--checkpoint",
                              str(checkpoint), "--device", "cpu", "--keyframe-interval",
                              str(INTERVAL), "--quiet"])
    assert args.handler(args) == 0
    typestore = rosbag.make_typestore()
    seen = []
    with Reader(out) as reader:
        stats = [c for c in reader.connections if c.topic == f"{CAMERA}/stats"]
        for connection, _, raw in reader.messages(connections=stats):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            seen.append((stamp_to_seconds(msg.header.stamp), msg.is_keyframe,
                         msg.reset_reason or None))
    return seen


@pytest.mark.parametrize("name", list(RECORDINGS))
def test_one_recording_gives_the_same_keyframes_on_every_path(tmp_path, tiny_model, clip, name):
    stamps, keyframes = RECORDINGS[name]
    api = _segmenter(tiny_model)
    through_api = [(stamp, r.is_keyframe, r.reset_reason) for stamp, r in
                   ((stamp, api.process(rgb, stamp=stamp))
                    for rgb, stamp in zip(clip, stamps, strict=True))]
    typestore = rosbag.make_typestore()
    messages = [_message(typestore, rgb, stamp) for rgb, stamp in zip(clip, stamps, strict=True)]
    through_node = node_keyframes(_segmenter(tiny_model), {"default": messages})["default"]
    through_cli = segment_cli_keyframes(tmp_path, tiny_model, clip, stamps)

    assert [flag for _, flag, _ in through_api] == _flags(keyframes)
    for path in (through_node, through_cli):
        assert len(path) == FRAMES
        assert [stamp for stamp, _, _ in path] == pytest.approx(stamps, abs=1e-6)
        assert [flag for _, flag, _ in path] == [flag for _, flag, _ in through_api]
        # A reset is reported on the same frame, for the same reason.
        assert [reason for _, _, reason in path] == [reason for _, _, reason in through_api]
    reasons = [reason for _, _, reason in through_api if reason]
    if name == "gap_5s":
        assert reasons == ["time gap of 5.100 s > max_time_gap 1 s (median period 0.100 s)"]
    elif name == "backwards_3s":
        assert reasons == ["time went backwards by 2.900 s"]
    else:
        assert reasons == []


def test_streams_batched_together_keep_their_own_stamps(tiny_model, clip):
    """The three recordings as three cameras of one segmenter, a batch per tick: each keeps
    the keyframes it has alone, in the node and through `process_batch`."""
    names = list(RECORDINGS)
    api = _segmenter(tiny_model, stagger_keyframes=False)
    api.configure_streams(names)
    through_api: dict[str, list[bool]] = {name: [] for name in names}
    for index, rgb in enumerate(clip):
        batch = [StreamFrame(name, rgb, RECORDINGS[name][0][index]) for name in names]
        for result in api.process_batch(batch):
            assert result.batch_size == len(names)
            through_api[result.stream].append(result.is_keyframe)
    typestore = rosbag.make_typestore()
    streams = {name: [_message(typestore, rgb, stamp)
                      for rgb, stamp in zip(clip, RECORDINGS[name][0], strict=True)]
               for name in names}
    through_node = node_keyframes(_segmenter(tiny_model, stagger_keyframes=False), streams)
    for name in names:
        assert through_api[name] == _flags(RECORDINGS[name][1]), name
        assert [flag for _, flag, _ in through_node[name]] == through_api[name], name


def test_the_rule_judges_stamps_against_the_streams_period():
    gaps = StampGapMonitor()
    # A 2 Hz camera: however many frames a worker drops, arrivals are 0.5 s apart.
    assert [gaps.observe(100.0 + 0.5 * i, max_time_gap=1.0) for i in range(20)] == [None] * 20
    assert gaps.observe(114.5, max_time_gap=1.0) == (
        "time gap of 5.000 s > max_time_gap 1 s (median period 0.500 s)")
    assert gaps.observe(115.0, max_time_gap=1.0) is None
    assert gaps.observe(105.0, max_time_gap=1.0) == "time went backwards by 10.000 s"
    assert gaps.observe(None, max_time_gap=1.0) is None  # unstamped: ignored
    assert gaps.observe(105.0, max_time_gap=1.0) is None  # a repeated stamp: no period
    # After time went backwards the period is unknown: the first interval resets only above
    # twice max_time_gap.
    assert gaps.observe(106.5, max_time_gap=1.0) is None
    fresh = StampGapMonitor()
    assert fresh.observe(0.0, max_time_gap=1.0) is None  # 0 is a time like any other
    assert fresh.observe(2.5, max_time_gap=1.0) == (
        "time gap of 2.500 s > max_time_gap 1 s (no period yet)")
    # A 1 Hz camera with jitter: gaps of 1.05 s exceed max_time_gap but not twice its period.
    slow = StampGapMonitor()
    stamps = np.cumsum([1.0, 0.95, 1.05, 0.98, 1.05, 1.02, 0.97, 1.05])
    assert [slow.observe(float(t), max_time_gap=1.0) for t in stamps] == [None] * len(stamps)
    assert "time gap of 3.000 s" in slow.observe(float(stamps[-1]) + 3.0, max_time_gap=1.0)


def test_a_camera_that_slows_down_stops_resetting():
    """A gap joins the periods too: a 30 Hz camera that drops to one frame every 2.5 s resets
    until its long intervals are most of the last 15, then no more (it used to reset on every
    frame: a gap that reset was never counted as a period)."""
    gaps = StampGapMonitor()
    stamps = [i / 30 for i in range(15)]
    stamps += [stamps[-1] + 2.5 * (i + 1) for i in range(12)]
    reasons = [gaps.observe(t, max_time_gap=1.0) for t in stamps]
    resets = [i for i, reason in enumerate(reasons) if reason]
    assert resets == list(range(15, 23))  # 8 long ones out of 15 make the median long


def test_a_reset_keeps_the_stamps_and_configure_streams_forgets_them(tiny_model, clip):
    seg = _segmenter(tiny_model)
    for index in range(3):
        seg.process(clip[index], stamp=10.0 + 0.1 * index)
    seg.reset("operator asked")
    first = seg.process(clip[3], stamp=10.3)
    assert first.is_keyframe and first.reset_reason == "operator asked"
    assert seg.stream_state().gaps.last_stamp == pytest.approx(10.3)
    back = seg.process(clip[4], stamp=1.0)
    assert back.is_keyframe and back.reset_reason == "time went backwards by 9.300 s"
    seg.configure_streams(["default"])
    assert seg.stream_state().gaps.last_stamp is None
    assert seg.note_arrival(1.1) is None and seg.note_arrival(0.5).startswith("time went back")


def test_the_node_times_keyframe_ages_from_header_stamps(tiny_model, clip, monkeypatch):
    """The node judges gaps on arrival and still hands the segmenter each frame's stamp, so an
    age-aware fusion sees the camera's real ages (1.02 s apart here), as through the API."""
    aged = AccelNet(dataclasses.replace(tiny_model.config, fusion_ages=(0.1, 1.0, 4.0))).eval()
    stamps, _ = RECORDINGS["slow_1.02s"]
    ages: dict[str, list[float]] = {"api": [], "node": []}

    def recording(segmenter: AccelSegmenter, path: str) -> AccelSegmenter:
        measure = segmenter._keyframe_age
        monkeypatch.setattr(segmenter, "_keyframe_age",
                            lambda job: ages[path].append(float(measure(job))) or measure(job))
        return segmenter

    api = recording(_segmenter(aged), "api")
    for rgb, stamp in zip(clip, stamps, strict=True):
        api.process(rgb, stamp=stamp)
    typestore = rosbag.make_typestore()
    messages = [_message(typestore, rgb, stamp) for rgb, stamp in zip(clip, stamps, strict=True)]
    node_keyframes(recording(_segmenter(aged), "node"), {"default": messages})
    assert ages["node"] == pytest.approx(ages["api"], abs=1e-3)
    assert max(ages["node"]) == pytest.approx(4 * 1.02, abs=1e-3)  # not 4 frames of 1/30 s
