"""`accel-ros segment` on a bag with several camera topics: one segmenter, one stream per
topic, batched (`process_batch`), each topic's outputs on its own topics. Checked against
independent single-stream runs of each topic alone (no cache crosses cameras), with a corrupt
frame and a time gap in one camera only. Tiny random-weights ResNet-18 model at 64x96."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from accel_ros.cli import make_bag as make_bag_cli
from accel_ros.cli import segment as segment_cli
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.data.synthetic import generate_clip
from accel_ros.io import bridge, rosbag
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.replay import runner as replay
from accel_ros.stream import AccelSegmenter

HEIGHT, WIDTH, FRAMES = 64, 96, 7
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 33_333_333
FRONT, LEFT, REAR = "/front/image_raw", "/left/image_raw", "/rear/image_raw/compressed"
CAMERAS = (FRONT, LEFT, REAR)
# The rear camera runs at half rate: batches hold three frames, then two.
REAR_EVERY = 2
AGREEMENT = 0.995
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model() -> AccelNet:
    """Seeded here: module fixtures are built before the per-test seed, and some random
    weights label every pixel alike, which would make label agreement prove nothing."""
    config = ModelConfig(
        reference_backbone="resnet18", update_backbone="resnet18", head_channels=32
    )
    torch.manual_seed(1)  # labels vary: no class covers more than 80% of a frame
    return AccelNet(config).eval()


@pytest.fixture(scope="module")
def clips() -> dict[str, list[np.ndarray]]:
    """Visibly different content per camera: other streets, one upside down, one with its
    colour channels reversed."""
    front = [f.image for f in generate_clip(FRAMES, HEIGHT, WIDTH, seed=3)]
    left = [np.ascontiguousarray(f.image[::-1])
            for f in generate_clip(FRAMES, HEIGHT, WIDTH, seed=11)]
    rear = [np.ascontiguousarray(f.image[..., ::-1])
            for f in generate_clip(FRAMES, HEIGHT, WIDTH, seed=5)][::REAR_EVERY]
    return {FRONT: front, LEFT: left, REAR: rear}


def make_segmenter(model: AccelNet, stagger: bool = False, mode: str = "accel"
                   ) -> AccelSegmenter:
    return AccelSegmenter(model, PipelineConfig(mode=mode, keyframe_interval=3, device="cpu",
                                                stagger_keyframes=stagger))


def write_rig_bag(
    path: Path,
    clips: dict[str, list[np.ndarray]],
    *,
    corrupt: dict[str, int] | None = None,
    gap: dict[str, int] | None = None,
) -> dict[str, list[tuple[int, int, str]]]:
    """The three cameras (rgb8, bgr8, png CompressedImage) interleaved in recording order,
    1 ms apart within a tick, plus a /chatter String topic. Header stamps are 5 ms before bag
    time; frame_id names camera and frame. `corrupt` {topic: frame index} truncates that
    frame's pixel data; `gap` {topic: frame index} moves that camera's header stamps from
    there on 2 s later (a gap > max_time_gap for that camera alone). Returns {topic: [(bag
    time, header stamp, frame_id), ...]} as written."""
    typestore = rosbag.make_typestore()
    string_cls = typestore.types["std_msgs/msg/String"]
    encodings = {FRONT: "rgb8", LEFT: "bgr8", REAR: "png"}
    written: dict[str, list[tuple[int, int, str]]] = {topic: [] for topic in clips}
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic in clips:
            msgtype = rosbag.COMPRESSED_TYPE if encodings[topic] == "png" else rosbag.IMAGE_TYPE
            connections[topic] = writer.add_connection(topic, msgtype, typestore=typestore)
        chatter = writer.add_connection("/chatter", string_cls.__msgtype__, typestore=typestore)
        for tick in range(FRAMES):
            for offset, (topic, frames) in enumerate(clips.items()):
                every = REAR_EVERY if topic == REAR else 1
                if tick % every:
                    continue
                index = tick // every
                bag_ns = START_NS + tick * PERIOD_NS + offset * 1_000_000
                stamp_ns = bag_ns - 5_000_000
                if gap and topic in gap and index >= gap[topic]:
                    stamp_ns += 2_000_000_000
                frame_id = f"{topic.split('/')[1]}_{index}"
                header = rosbag.make_header(typestore, stamp_ns, frame_id)
                msg = rosbag.camera_message(typestore, frames[index], encodings[topic], header)
                if corrupt and corrupt.get(topic) == index:
                    msg.data = msg.data[:-7]  # an Image shorter than step * height
                msgtype = connections[topic].msgtype
                writer.write(connections[topic], bag_ns, typestore.serialize_cdr(msg, msgtype))
                written[topic].append((bag_ns, stamp_ns, frame_id))
            text = string_cls(data=f"tick {tick}")
            writer.write(chatter, START_NS + tick * PERIOD_NS + 5_000_000,
                         typestore.serialize_cdr(text, string_cls.__msgtype__))
    return written


def read_bag(path: Path) -> dict[str, list[tuple[int, object]]]:
    """{topic: [(bag time ns, deserialised message), ...]} of a rosbag2."""
    typestore = rosbag.make_typestore()
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            out.setdefault(connection.topic, []).append(
                (timestamp, typestore.deserialize_cdr(raw, connection.msgtype)))
    return out


def labels_of(messages: list[tuple[int, object]]) -> list[np.ndarray]:
    return [bridge.image_to_array(msg) for _, msg in messages]


def dominant_share(labels: list[np.ndarray]) -> float:
    """Mean fraction of a frame's pixels that its most frequent label covers."""
    return float(np.mean([np.bincount(x.ravel()).max() / x.size for x in labels]))


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Fraction of pixels with the same label over all frames of two equally long runs."""
    assert len(a) == len(b)
    return float(np.mean([(x == y).mean() for x, y in zip(a, b, strict=True)]))


def single_topic_labels(model: AccelNet, bag: Path, topic: str, out: Path,
                        stagger: bool = False) -> list[np.ndarray]:
    """Labels of `topic` segmented alone by a fresh segmenter (the single-stream path)."""
    replay.segment(bag, out, make_segmenter(model, stagger), topic=topic, quiet=True)
    return labels_of(read_bag(out)[f"{rosbag.output_base(topic)}/labels"])


class BatchRecorder:
    """A real segmenter that keeps the streams of every `process_batch` call."""

    def __init__(self, segmenter: AccelSegmenter) -> None:
        self.segmenter = segmenter
        self.model_config = segmenter.model_config
        self.pipeline_config = segmenter.pipeline_config
        self.configured: list[str] = []
        self.batches: list[list[str]] = []
        self.batch_ms: list[float] = []  # each batch's segmenter time
        self.check_frame = segmenter.check_frame

    def configure_streams(self, names):
        self.configured = list(names)
        self.segmenter.configure_streams(names)

    def process_batch(self, frames):
        self.batches.append([item.stream for item in frames])
        results = self.segmenter.process_batch(frames)
        assert {r.batch_size for r in results} == {len(frames)}
        self.batch_ms.append(results[0].timings["total"])
        return results


def test_three_cameras_match_single_stream_runs(tmp_path, tiny_model, clips):
    bag, dst = tmp_path / "rig", tmp_path / "rig_seg"
    written = write_rig_bag(bag, clips)
    recorder = BatchRecorder(make_segmenter(tiny_model))
    summary = replay.segment(bag, dst, recorder, all_topics=True, quiet=True)

    counts = {topic: len(frames) for topic, frames in clips.items()}
    assert counts == {FRONT: FRAMES, LEFT: FRAMES, REAR: 4}
    # Streams are the topics, sorted; a batch holds one frame per camera, in recording order.
    assert recorder.configured == sorted(CAMERAS)
    expected_batches = [[FRONT, LEFT, REAR] if tick % REAR_EVERY == 0 else [FRONT, LEFT]
                        for tick in range(FRAMES)]
    assert recorder.batches == expected_batches
    assert summary.frames == sum(counts.values()) and summary.skipped == []
    # Each frame is billed its share of its batch: the summary adds up to the time spent.
    assert sum(t["total"] for t in summary.timings) == pytest.approx(sum(recorder.batch_ms))
    tallies = summary.extra["topics"]
    assert {t: (n.frames, n.skipped) for t, n in tallies.items()} == {
        t: (counts[t], 0) for t in CAMERAS}
    # keyframe_interval 3, no stagger: frames 0, 3, 6 of each camera.
    assert {t: n.keyframes for t, n in tallies.items()} == {FRONT: 3, LEFT: 3, REAR: 2}
    text = summary.format()
    assert "3 cameras, one segmenter" in text
    assert f"{REAR}: 4 frames, 2 keyframes, 0 skipped" in text

    out = read_bag(dst)
    outputs = {f"{rosbag.output_base(t)}/{kind}" for t in CAMERAS
               for kind in ("labels", "color", "stats", "label_info")}
    assert set(out) == {*CAMERAS, "/chatter", *outputs}
    assert "/rear/image_raw/labels" in outputs  # image_transport's /compressed dropped
    assert len(out["/chatter"]) == FRAMES
    for topic in CAMERAS:
        base = rosbag.output_base(topic)
        assert len(out[topic]) == counts[topic]  # copied through
        for kind in ("labels", "color", "stats"):
            got = [(t, rosbag.header_stamp_ns(m.header), m.header.frame_id)
                   for t, m in out[f"{base}/{kind}"]]
            assert got == written[topic], (topic, kind)
        stats = [msg for _, msg in out[f"{base}/stats"]]
        assert [s.frame_index for s in stats] == list(range(counts[topic]))
        assert [s.is_keyframe for s in stats] == [i % 3 == 0 for i in range(counts[topic])]
        assert all(s.reset_reason == "" for s in stats)
        # The labels of each camera are those of a segmenter that saw that camera alone.
        alone = single_topic_labels(tiny_model, bag, topic, tmp_path / f"alone{base}")
        assert dominant_share(alone) < 0.9  # varied labels: agreement is not a given
        assert agreement(labels_of(out[f"{base}/labels"]), alone) >= AGREEMENT, topic

    # The check has teeth: the same frames as ONE stream (every cache shared) disagree.
    shared = make_segmenter(tiny_model)
    mixed: dict[str, list[np.ndarray]] = {t: [] for t in CAMERAS}
    for tick in range(FRAMES):
        for topic in CAMERAS:
            every = REAR_EVERY if topic == REAR else 1
            if tick % every == 0:
                mixed[topic].append(shared.process(clips[topic][tick // every]).labels)
    assert min(agreement(labels_of(out[f"{rosbag.output_base(t)}/labels"]), mixed[t])
               for t in CAMERAS) < 0.9


def test_staggered_keyframes_per_camera(tmp_path, tiny_model, clips):
    """With stagger_keyframes the cameras keyframe at different frames; each camera still
    matches a segmenter that declared the same streams and saw only that camera."""
    bag, dst = tmp_path / "rig", tmp_path / "rig_seg"
    two = {FRONT: clips[FRONT], LEFT: clips[LEFT]}
    write_rig_bag(bag, two)
    summary = replay.segment(bag, dst, make_segmenter(tiny_model, stagger=True),
                             topic=[FRONT, LEFT], quiet=True)
    assert summary.frames == 2 * FRAMES
    out = read_bag(dst)
    keyframes = {t: [s.is_keyframe for _, s in out[f"{t}/stats"]] for t in two}
    assert keyframes[FRONT] != keyframes[LEFT]
    for topic in two:
        alone = make_segmenter(tiny_model, stagger=True)
        alone.configure_streams([FRONT, LEFT])
        expected = [alone.process(rgb, None, stream=topic) for rgb in two[topic]]
        assert keyframes[topic] == [r.is_keyframe for r in expected]
        got = labels_of(out[f"{topic}/labels"])
        assert agreement(got, [r.labels for r in expected]) >= AGREEMENT, topic


def test_corrupt_frame_and_time_gap_stay_in_their_camera(tmp_path, tiny_model, clips):
    bag, dst = tmp_path / "rig", tmp_path / "rig_seg"
    written = write_rig_bag(bag, clips, corrupt={LEFT: 2}, gap={REAR: 2})
    summary = replay.segment(bag, dst, make_segmenter(tiny_model), topic=list(CAMERAS),
                             quiet=True)
    assert len(summary.skipped) == 1
    assert summary.skipped[0].startswith(f"{LEFT} message 2 ")
    tallies = summary.extra["topics"]
    assert {t: (n.frames, n.skipped, n.resets) for t, n in tallies.items()} == {
        FRONT: (FRAMES, 0, 0), LEFT: (FRAMES - 1, 1, 0), REAR: (4, 0, 1)}

    out = read_bag(dst)
    assert len(out[LEFT]) == FRAMES  # the corrupt input is still copied through
    left = [(t, m.header.frame_id) for t, m in out["/left/image_raw/labels"]]
    assert left == [(t, f) for i, (t, _, f) in enumerate(written[LEFT]) if i != 2]
    for topic in (FRONT, REAR):
        base = rosbag.output_base(topic)
        assert [t for t, _ in out[f"{base}/labels"]] == [t for t, _, _ in written[topic]]
    # The time gap resets the rear camera's cache only, at its frame 2.
    reasons = {t: [s.reset_reason for _, s in out[f"{rosbag.output_base(t)}/stats"]]
               for t in CAMERAS}
    assert [bool(r) for r in reasons[REAR]] == [False, False, True, False]
    assert "time gap" in reasons[REAR][2]
    assert not any(reasons[FRONT]) and not any(reasons[LEFT])
    # Each camera still agrees with its own run alone (which also skips / resets).
    for topic in CAMERAS:
        base = rosbag.output_base(topic)
        alone = single_topic_labels(tiny_model, bag, topic, tmp_path / f"alone{base}")
        assert agreement(labels_of(out[f"{base}/labels"]), alone) >= AGREEMENT, topic


class RefusingSegmenter(BatchRecorder):
    """`check_frame` passes everything; `process_batch` refuses (as the real one does, before
    any cache changes) a batch holding a frame whose top-left pixel is 255, 0, 255."""

    def __init__(self, segmenter: AccelSegmenter) -> None:
        super().__init__(segmenter)
        self.check_frame = lambda frame: None

    def process_batch(self, frames):
        self.batches.append([item.stream for item in frames])
        for item in frames:
            if item.frame[0, 0].tolist() == [255, 0, 255]:
                raise ValueError(f"stream {item.stream!r}: refused")
        return self.segmenter.process_batch(frames)


def test_a_frame_refused_inside_a_batch_costs_only_itself(tmp_path, tiny_model, clips):
    marked = {t: [f.copy() for f in frames] for t, frames in clips.items() if t != REAR}
    marked[LEFT][4][0, 0] = (255, 0, 255)
    bag, dst = tmp_path / "rig", tmp_path / "rig_seg"
    write_rig_bag(bag, marked)
    recorder = RefusingSegmenter(make_segmenter(tiny_model, mode="dff"))
    summary = replay.segment(bag, dst, recorder, topic=[FRONT, LEFT], quiet=True)
    assert summary.frames == 2 * FRAMES - 1
    assert len(summary.skipped) == 1 and "refused" in summary.skipped[0]
    assert summary.skipped[0].startswith(f"{LEFT} message 4 ")
    # The batch of tick 4 failed, then ran frame by frame.
    assert recorder.batches[4:7] == [[FRONT, LEFT], [FRONT], [LEFT]]
    out = read_bag(dst)
    assert len(out[f"{FRONT}/labels"]) == FRAMES and len(out[f"{LEFT}/labels"]) == FRAMES - 1


def test_topic_choice(tmp_path, tiny_model, clips):
    bag = tmp_path / "rig"
    write_rig_bag(bag, clips)
    typestore = rosbag.make_typestore()
    source = replay.open_source(bag, [LEFT, FRONT, LEFT], None, typestore)
    assert list(source.topics) == [LEFT, FRONT]  # as given, once each
    assert source.total == 2 * FRAMES
    source.close()
    with pytest.raises(ValueError, match=r"3 image topics.*--all-topics"):
        replay.open_source(bag, None, None, typestore)
    with pytest.raises(ValueError, match="not both"):
        replay.open_source(bag, [FRONT], None, typestore, all_topics=True)
    with pytest.raises(ValueError, match="not in the bag"):
        replay.open_source(bag, [FRONT, "/missing"], None, typestore)
    # One topic of a multi-camera bag: the single-stream path, as before.
    summary = replay.segment(bag, tmp_path / "front_only", make_segmenter(tiny_model),
                             topic=FRONT, quiet=True)
    assert summary.frames == FRAMES and "topics" not in summary.extra
    assert {t for t in read_bag(tmp_path / "front_only") if t.endswith("/labels")} == {
        f"{FRONT}/labels"}
    # Several cameras need a bag output.
    with pytest.raises(ValueError, match="need a rosbag2 output"):
        replay.segment(bag, tmp_path / "out.mp4", make_segmenter(tiny_model),
                       all_topics=True, quiet=True)

    # A bag segmented before: its labels/color Images are results, not cameras.
    dst = tmp_path / "seg"
    replay.segment(bag, dst, make_segmenter(tiny_model), all_topics=True, quiet=True)
    source = replay.open_source(dst, None, None, typestore, all_topics=True)
    assert list(source.topics) == sorted(CAMERAS)
    assert any("/front/image_raw/labels" in note for note in source.notes)
    source.close()
    # ... and again, it regenerates them rather than copying the old ones.
    again = tmp_path / "seg_again"
    replay.segment(dst, again, make_segmenter(tiny_model), all_topics=True, quiet=True)
    assert len(read_bag(again)[f"{FRONT}/labels"]) == FRAMES


def test_select_image_topics():
    from rosbags.interfaces import Connection, ConnectionExtRosbag2

    def connection(topic: str, msgtype: str = rosbag.IMAGE_TYPE) -> Connection:
        return Connection(id=0, topic=topic, msgtype=msgtype, msgdef=None, digest="",
                          msgcount=1, ext=ConnectionExtRosbag2("cdr", []), owner=None)

    cam = [connection("/cam/image_raw"), connection("/cam/image_raw/labels"),
           connection("/cam/image_raw/color"), connection("/cam/image_raw/stats", "x/msg/S")]
    # A segmented single-camera bag: the camera is still the only candidate.
    assert rosbag.select_image_topics(cam) == {"/cam/image_raw": rosbag.IMAGE_TYPE}
    assert list(rosbag.select_image_topics(cam, all_topics=True)) == ["/cam/image_raw"]
    both = [connection("/cam/image_raw"),
            connection("/cam/image_raw/compressed", rosbag.COMPRESSED_TYPE)]
    with pytest.raises(ValueError, match="would both write /cam/image_raw/labels"):
        rosbag.select_image_topics(both, all_topics=True)
    assert list(rosbag.select_image_topics(both, "/cam/image_raw/compressed")) == [
        "/cam/image_raw/compressed"]
    with pytest.raises(ValueError, match="results of /cam/image_raw"):
        rosbag.select_image_topics(cam, ["/cam/image_raw", "/cam/image_raw/labels"])
    with pytest.raises(ValueError, match="no image topic"):
        rosbag.select_image_topics([connection("/chatter", "std_msgs/msg/String")],
                                  all_topics=True)


def test_make_bag_rig_then_segment_all_topics_cli(tmp_path, tiny_model, capsys):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    segment_cli.add_parser(subparsers)
    make_bag_cli.add_parser(subparsers)
    bag = tmp_path / "rig.mcap"
    args = parser.parse_args(["make-bag", str(bag), "--frames", "4", "--height", str(HEIGHT),
                              "--width", str(WIDTH), "--topic", "/front/image_raw",
                              "/rear/image_raw", "--quiet"])
    assert args.handler(args) == 0
    made = read_bag(tmp_path / "rig")
    assert set(made) == {"/front/image_raw", "/rear/image_raw"}
    front = [msg for _, msg in made["/front/image_raw"]]
    rear = [msg for _, msg in made["/rear/image_raw"]]
    assert [m.header.frame_id for m in front + rear] == ["camera_0"] * 4 + ["camera_1"] * 4
    assert [rosbag.header_stamp_ns(m.header) for m in front] == [
        rosbag.header_stamp_ns(m.header) for m in rear]
    # Two streets, not one.
    assert np.abs(bridge.to_rgb8(front[0]).astype(int)
                  - bridge.to_rgb8(rear[0]).astype(int)).mean() > 10

    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    common = ["--checkpoint", str(checkpoint), "--device", "cpu", "--quiet"]
    # Several cameras into a video: refused before the model loads.
    refused = parser.parse_args(["segment", str(tmp_path / "rig"), "--out",
                                 str(tmp_path / "x.mp4"), "--all-topics", *common])
    with pytest.raises(ValueError, match="need a rosbag2 output"):
        refused.handler(refused)
    with pytest.raises(SystemExit):
        parser.parse_args(["segment", "x", "--out", "y", "--all-topics", "--topic", "/a"])
    out = tmp_path / "rig_seg"
    args = parser.parse_args(["segment", str(tmp_path / "rig"), "--out", str(out),
                              "--all-topics", "--keyframe-interval", "2", *common])
    capsys.readouterr()
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "2 cameras, one segmenter" in printed
    assert "/front/image_raw: 4 frames, 2 keyframes, 0 skipped" in printed
    result = read_bag(out)
    for topic in ("/front/image_raw", "/rear/image_raw"):
        assert [m.header.frame_id for _, m in result[f"{topic}/labels"]] == [
            m.header.frame_id for _, m in made[topic]]
    # --topic takes several names, also repeated.
    args = parser.parse_args(["segment", "in", "--out", "o", "--topic", "/a", "/b",
                              "--topic", "/c"])
    assert args.topic == ["/a", "/b", "/c"] and not args.all_topics
