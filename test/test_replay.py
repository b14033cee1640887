"""`accel-ros segment` / `make-bag`: bags (both storage plugins), corrupt messages, video and
image-folder IO, topic selection and the run summary. Tiny ResNet-18 model at 64x96."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from accel_ros.cli import make_bag as make_bag_cli
from accel_ros.cli import segment as segment_cli
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.data.synthetic import generate_clip
from accel_ros.io import bridge, rosbag, video
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.palette import CAMVID_CLASSES, get_palette
from accel_ros.replay import runner as replay
from accel_ros.replay.sinks import output_kind
from accel_ros.replay.sources import open_source
from accel_ros.report import RunSummary, format_latency_table, latency_rows
from accel_ros.stream import AccelSegmenter

HEIGHT, WIDTH, FRAMES = 64, 96, 6
CAMERA = "/camera/image_raw"
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 33_333_333


@pytest.fixture(scope="module")
def tiny_model() -> AccelNet:
    config = ModelConfig(
        reference_backbone="resnet18", update_backbone="resnet18", head_channels=32
    )
    return AccelNet(config).eval()


@pytest.fixture(scope="module")
def clip_images() -> list[np.ndarray]:
    """FRAMES synthetic (64, 96, 3) uint8 RGB frames."""
    return [frame.image for frame in generate_clip(FRAMES, HEIGHT, WIDTH, seed=3)]


def make_segmenter(model: AccelNet, mode: str = "accel") -> AccelSegmenter:
    return AccelSegmenter(model, PipelineConfig(mode=mode, keyframe_interval=3, device="cpu"))


class RecordingSegmenter:
    """Passes frames to a real segmenter and keeps (frame, stamp, result), so a test can
    check the output against exactly what the segmenter returned without a second run."""

    def __init__(self, segmenter: AccelSegmenter) -> None:
        self.segmenter = segmenter
        self.model_config = segmenter.model_config
        self.pipeline_config = segmenter.pipeline_config
        self.calls: list[tuple[np.ndarray, float | None, object]] = []

    def process(self, frame: np.ndarray, stamp: float | None = None):
        result = self.segmenter.process(frame, stamp)
        self.calls.append((frame.copy(), stamp, result))
        return result

    check_frame = staticmethod(AccelSegmenter.check_frame)

    def process_batch(self, frames):
        """`segment` batches by camera; one camera's batches hold one frame."""
        return [self.process(item.frame, item.stamp) for item in frames]


def write_test_bag(
    path: Path, images: list[np.ndarray], storage: str, corrupt: dict[int, str] | None = None
) -> list[bytes]:
    """Camera topic (bgr8, header stamps offset from bag time) plus a /chatter String topic.
    `corrupt` maps a frame index to "short" (data shorter than step * height) or "garbage"
    (raw non-CDR bytes). Returns the raw camera payloads as written."""
    typestore = rosbag.make_typestore()
    image_cls = typestore.types["sensor_msgs/msg/Image"]
    string_cls = typestore.types["std_msgs/msg/String"]
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    payloads = []
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        camera = writer.add_connection(CAMERA, image_cls.__msgtype__, typestore=typestore)
        chatter = writer.add_connection("/chatter", string_cls.__msgtype__, typestore=typestore)
        for index, rgb in enumerate(images):
            bag_ns = START_NS + index * PERIOD_NS
            # Header stamp 5 ms before receive time: the tool must keep it, not bag time.
            header = rosbag.make_header(typestore, bag_ns - 5_000_000, f"cam_{index}")
            fields = bridge.from_rgb8(rgb, "bgr8", header)
            kind = (corrupt or {}).get(index)
            if kind == "short":
                fields["data"] = fields["data"][:-7]
            raw = bytes(typestore.serialize_cdr(image_cls(**fields), image_cls.__msgtype__))
            if kind == "garbage":
                raw = b"\x00\x01\xff garbage, not CDR"
            writer.write(camera, bag_ns, raw)
            payloads.append(raw)
            text = typestore.serialize_cdr(string_cls(data=f"hello {index}"),
                                           string_cls.__msgtype__)
            writer.write(chatter, bag_ns + 1, text)
    return payloads


def read_bag(path: Path) -> dict[str, list[tuple[int, object, bytes]]]:
    """{topic: [(bag time ns, deserialised message or None if undecodable, raw bytes), ...]}
    of a rosbag2."""
    typestore = rosbag.make_typestore()
    out: dict[str, list[tuple[int, object, bytes]]] = {}
    with Reader(path) as reader:
        for connection, timestamp, raw in reader.messages():
            try:
                msg = typestore.deserialize_cdr(raw, connection.msgtype)
            except Exception:  # the corrupt-input test copies garbage through on purpose
                msg = None
            out.setdefault(connection.topic, []).append((timestamp, msg, bytes(raw)))
    return out


@pytest.mark.parametrize(("storage", "mode"), [("mcap", "accel"), ("sqlite3", "dff")])
def test_bag_round_trip(tmp_path, tiny_model, clip_images, storage, mode):
    src, dst = tmp_path / "in_bag", tmp_path / "out_bag"
    raws = write_test_bag(src, clip_images, storage)
    recorder = RecordingSegmenter(make_segmenter(tiny_model, mode))
    summary = replay.segment(src, dst, recorder, storage=storage, quiet=True)
    assert (summary.frames, summary.keyframes, summary.skipped) == (FRAMES, 2, [])

    out = read_bag(dst)
    assert set(out) == {CAMERA, "/chatter", f"{CAMERA}/labels", f"{CAMERA}/color",
                        f"{CAMERA}/stats", f"{CAMERA}/label_info"}
    storage_file = next(p for p in dst.iterdir() if p.name != "metadata.yaml")
    assert storage_file.suffix == {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    label_info = out.pop(f"{CAMERA}/label_info")
    assert all(len(messages) == FRAMES for messages in out.values())
    # The class metadata, once, with the first frame's header and bag time.
    (timestamp, info, _), = label_info
    assert timestamp == START_NS and info.header.frame_id == "cam_0"
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(
        enumerate(CAMVID_CLASSES))
    assert info.palette == "camvid" and info.ignore_id == 255 and info.resize_mode == "pad"
    assert bytes(info.colors) == get_palette("camvid").tobytes()
    # Copied through byte for byte, at the original bag times.
    assert [raw for _, _, raw in out[CAMERA]] == raws
    assert [msg.data for _, msg, _ in out["/chatter"]] == [f"hello {i}" for i in range(FRAMES)]

    # The segmenter saw the decoded frames (bgr8 -> RGB exact) with header stamps, in order,
    # and the bag holds exactly what it returned.
    assert len(recorder.calls) == FRAMES
    for index, rgb in enumerate(clip_images):
        bag_ns = START_NS + index * PERIOD_NS
        header_ns = bag_ns - 5_000_000
        frame, stamp, result = recorder.calls[index]
        np.testing.assert_array_equal(frame, rgb)
        assert stamp == pytest.approx(header_ns * 1e-9, abs=1e-6)
        for topic in ("labels", "color", "stats"):
            timestamp, msg, _ = out[f"{CAMERA}/{topic}"][index]
            assert timestamp == bag_ns
            assert rosbag.header_stamp_ns(msg.header) == header_ns
            assert msg.header.frame_id == f"cam_{index}"
        _, labels, _ = out[f"{CAMERA}/labels"][index]
        assert (labels.encoding, labels.height, labels.width, labels.step) == (
            "mono8", HEIGHT, WIDTH, WIDTH)
        label_array = bridge.image_to_array(labels)
        assert label_array.max() < 11
        np.testing.assert_array_equal(label_array, result.labels)
        _, color, _ = out[f"{CAMERA}/color"][index]
        assert (color.encoding, color.height, color.width) == ("rgb8", HEIGHT, WIDTH)
        assert bridge.image_to_array(color).shape == (HEIGHT, WIDTH, 3)
        _, stats, _ = out[f"{CAMERA}/stats"][index]
        assert stats.frame_index == index
        assert stats.is_keyframe == (index % 3 == 0) == result.is_keyframe
        assert stats.keyframe_age == index % 3
        assert stats.mode == mode
        assert stats.total_ms > 0 and 0.0 < stats.confidence <= 1.0
        assert stats.end_to_end_ms >= stats.total_ms * 0.5
        assert stats.reset_reason == ""


def test_corrupt_messages_are_skipped(tmp_path, tiny_model, clip_images):
    src, dst = tmp_path / "in_bag", tmp_path / "out_bag"
    write_test_bag(src, clip_images, "mcap", corrupt={2: "short", 4: "garbage"})
    summary = replay.segment(src, dst, make_segmenter(tiny_model, "dff"), quiet=True)
    assert summary.frames == FRAMES - 2
    assert len(summary.skipped) == 2
    assert "message 2" in summary.skipped[0] and "bytes" in summary.skipped[0]
    assert "message 4" in summary.skipped[1] and "undecodable" in summary.skipped[1]

    out = read_bag(dst)
    assert len(out[CAMERA]) == FRAMES  # the corrupt inputs are still copied through
    good = [0, 1, 3, 5]
    for topic in ("labels", "color", "stats"):
        stamps = [timestamp for timestamp, _, _ in out[f"{CAMERA}/{topic}"]]
        assert stamps == [START_NS + i * PERIOD_NS for i in good]
    assert [msg.header.frame_id for _, msg, _ in out[f"{CAMERA}/labels"]] == [
        f"cam_{i}" for i in good]
    assert [msg.mode for _, msg, _ in out[f"{CAMERA}/stats"]] == ["dff"] * len(good)


def test_make_bag_cli_compressed_then_segment_cli(tmp_path, tiny_model):
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    make_bag_cli.add_parser(subparsers)
    segment_cli.add_parser(subparsers)
    bag = tmp_path / "synthetic"
    args = parser.parse_args(["make-bag", str(bag), "--frames", "4", "--height", str(HEIGHT),
                              "--width", str(WIDTH), "--encoding", "jpeg",
                              "--storage", "sqlite3", "--quiet"])
    assert args.handler(args) == 0
    made = read_bag(bag)
    topic = f"{CAMERA}/compressed"
    assert list(made) == [topic]
    stamps = [rosbag.header_stamp_ns(msg.header) for _, msg, _ in made[topic]]
    assert stamps == [t for t, _, _ in made[topic]]
    assert np.diff(stamps).tolist() == [33_333_333, 33_333_334, 33_333_333]
    assert {msg.header.frame_id for _, msg, _ in made[topic]} == {"camera"}
    assert bridge.compressed_to_rgb8(made[topic][0][1]).shape == (HEIGHT, WIDTH, 3)

    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    out = tmp_path / "segmented"
    args = parser.parse_args(["segment", str(bag), "--out", str(out), "--checkpoint",
                              str(checkpoint), "--mode", "deeplab", "--device", "cpu",
                              "--quiet"])
    assert args.handler(args) == 0
    result = read_bag(out)
    # image_transport's /compressed suffix is dropped for the output topics.
    assert set(result) == {topic, f"{CAMERA}/labels", f"{CAMERA}/color", f"{CAMERA}/stats",
                           f"{CAMERA}/label_info"}
    assert [msg.mode for _, msg, _ in result[f"{CAMERA}/stats"]] == ["deeplab"] * 4
    assert not any(msg.is_keyframe for _, msg, _ in result[f"{CAMERA}/stats"])
    # The output bag is new: running again onto it is refused before any work.
    with pytest.raises(ValueError, match="exists already"):
        args.handler(args)


def test_topic_selection(tmp_path, clip_images):
    typestore = rosbag.make_typestore()
    path = tmp_path / "two_cameras"
    header = rosbag.make_header(typestore, START_NS, "cam")
    messages = {
        "/left/image_raw": rosbag.camera_message(typestore, clip_images[0], "rgb8", header),
        "/right/image/compressed": rosbag.camera_message(typestore, clip_images[0], "png",
                                                        header),
        "/chatter": typestore.types["std_msgs/msg/String"](data="hi"),
    }
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msg in messages.items():
            connection = writer.add_connection(topic, msg.__msgtype__, typestore=typestore)
            writer.write(connection, START_NS, typestore.serialize_cdr(msg, msg.__msgtype__))
    with Reader(path) as reader:
        connections = list(reader.connections)  # the reader empties its own on close
    with pytest.raises(ValueError, match="2 image topics") as error:
        rosbag.select_image_topic(connections, None)
    assert "/left/image_raw" in str(error.value) and "/right/image/compressed" in str(error.value)
    assert rosbag.select_image_topic(connections, "/right/image/compressed") == (
        "/right/image/compressed", "sensor_msgs/msg/CompressedImage")
    with pytest.raises(ValueError, match="not an image"):
        rosbag.select_image_topic(connections, "/chatter")
    with pytest.raises(ValueError, match="not in the bag"):
        rosbag.select_image_topic(connections, "/missing")
    one = [c for c in connections if c.topic != "/right/image/compressed"]
    assert rosbag.select_image_topic(one, None) == ("/left/image_raw", "sensor_msgs/msg/Image")


def test_video_in_video_out(tmp_path, tiny_model, clip_images):
    src = tmp_path / "in.mp4"
    with video.VideoWriter(src, fps=15.0) as writer:
        for rgb in clip_images[:5]:
            writer.write(rgb)
    dst = tmp_path / "out.mp4"
    assert output_kind(dst) == "video"
    summary = replay.segment(src, dst, make_segmenter(tiny_model, "dff"), quiet=True)
    assert summary.frames == 5
    frames = list(video.iter_video(dst))
    assert len(frames) == 5
    assert frames[0].rgb.shape == (HEIGHT, WIDTH, 3)
    assert video.video_info(dst)[1] == pytest.approx(15.0)


def test_video_to_bag_writes_the_frames(tmp_path, tiny_model, clip_images):
    src = tmp_path / "in.avi"
    with video.VideoWriter(src, fps=10.0) as writer:
        for rgb in clip_images[:3]:
            writer.write(rgb)
    dst = tmp_path / "out_bag"
    replay.segment(src, dst, make_segmenter(tiny_model, "dff"), topic="/cam", quiet=True)
    out = read_bag(dst)
    assert set(out) == {"/cam", "/cam/labels", "/cam/color", "/cam/stats", "/cam/label_info"}
    assert [t for t, _, _ in out["/cam"]] == [0, 100_000_000, 200_000_000]
    first = out["/cam"][0][1]
    assert (first.encoding, first.height, first.width) == ("rgb8", HEIGHT, WIDTH)
    assert {msg.header.frame_id for _, msg, _ in out["/cam/labels"]} == {"camera"}


def test_bag_to_png_folder_numbers_its_frames(tmp_path, tiny_model, clip_images):
    """A bag's frames have no file names: the PNGs are frame_000000.png, ... (a bag frame's
    name, "... (t=1700000000.000000)", once gave "image_raw message 0 (t=1700000000.png")."""
    bag = tmp_path / "cam"
    rosbag.write_camera_bag(bag, clip_images[:3])
    dst = tmp_path / "overlays"
    summary = replay.segment(bag, dst, make_segmenter(tiny_model, "dff"), quiet=True,
                             output_format="png")
    assert summary.frames == 3
    assert sorted(p.name for p in dst.iterdir()) == [f"frame_{i:06d}.png" for i in range(3)]


def test_image_folder_to_png_folder(tmp_path, tiny_model, clip_images):
    src = tmp_path / "images"
    src.mkdir()
    for index, rgb in enumerate(clip_images[:4]):
        video.write_image_rgb(src / f"img_{index:02d}.png", rgb)
    (src / "img_02b.png").write_bytes(b"not a png at all")
    (src / "notes.txt").write_text("ignored")
    dst = tmp_path / "overlays"
    dst.mkdir()
    assert output_kind(dst) == "png"
    summary = replay.segment(src, dst, make_segmenter(tiny_model, "dff"), quiet=True,
                             overlay_alpha=1.0)
    assert summary.frames == 4
    assert len(summary.skipped) == 1 and "img_02b.png" in summary.skipped[0]
    written = sorted(p.name for p in dst.iterdir())
    assert written == [f"img_{index:02d}.png" for index in range(4)]
    # alpha 1: pure palette colours of the model's labels.
    first = video.read_image_rgb(dst / "img_00.png")
    expected = make_segmenter(tiny_model, "dff").process(clip_images[0])
    from accel_ros.palette import colorize

    np.testing.assert_array_equal(first, colorize(expected.labels, "camvid"))


def test_output_kind_and_bad_inputs(tmp_path):
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    assert output_kind(tmp_path / "new_bag") == "bag"
    assert output_kind(tmp_path / "clip.MP4") == "video"
    assert output_kind(tmp_path / "new", "png") == "png"
    with pytest.raises(ValueError, match="exists already"):
        output_kind(bag)
    with pytest.raises(ValueError, match="not one of"):
        output_kind(tmp_path / "x", "gif")
    typestore = rosbag.make_typestore()
    with pytest.raises(FileNotFoundError, match="input not found"):
        open_source(tmp_path / "missing.mcap", None, None, typestore)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="neither a rosbag2"):
        open_source(empty, None, None, typestore)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="cannot read"):
        open_source(tmp_path / "notes.txt", None, None, typestore)


class _Result:
    def __init__(self, keyframe: bool, timings: dict[str, float]) -> None:
        self.is_keyframe = keyframe
        self.reset_reason = None
        self.timings = timings


def test_run_summary_and_latency_table():
    summary = RunSummary(name="unit")
    summary.add(_Result(True, {"feature": 30.0, "update": 0.0, "total": 40.0}))
    for _ in range(3):
        summary.add(_Result(False, {"feature": 0.0, "warp": 2.0, "total": 10.0}))
    summary.skip("frame 9: broken")
    summary.stop()
    rows = {row.stage: row for row in latency_rows(summary.timings)}
    assert set(rows) == {"feature", "warp", "total"}  # "update" never ran
    assert (rows["feature"].runs, rows["feature"].mean, rows["feature"].per_frame) == (
        1, 30.0, 7.5)
    assert rows["total"].max == 40.0 and rows["total"].p50 == 10.0
    assert rows["total"].per_frame == pytest.approx(17.5)
    assert summary.model_fps == pytest.approx(1000.0 / 17.5)
    text = summary.format()
    assert "4 frames, 1 keyframes, 1 skipped" in text and "frame 9: broken" in text
    assert format_latency_table([]) == "  (no frames timed)"


def segment_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    segment_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_image_folder_to_a_new_folder_without_suffix_writes_pngs(
        tmp_path, tiny_model, clip_images):
    """The README's `accel-ros segment frames/ --out overlays/`: image folder -> PNG folder,
    also when the output folder does not exist yet."""
    src = tmp_path / "frames"
    src.mkdir()
    for index, rgb in enumerate(clip_images[:3]):
        video.write_image_rgb(src / f"img_{index:02d}.png", rgb)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    common = ["--checkpoint", str(checkpoint), "--mode", "dff", "--device", "cpu", "--quiet"]
    for out in (f"{tmp_path / 'overlays'}/", str(tmp_path / "overlays_no_slash")):
        args = segment_parser().parse_args(["segment", f"{src}/", "--out", out, *common])
        assert args.handler(args) == 0
        written = sorted(p.name for p in Path(out).iterdir())
        assert written == [f"img_{index:02d}.png" for index in range(3)], out

    # The rule, input by input: a trailing slash names a folder; without one, a name with no
    # suffix is a PNG folder for image-folder input and a new bag otherwise.
    assert output_kind(f"{tmp_path / 'new'}/") == "png"
    assert output_kind(tmp_path / "new", images_in=True) == "png"
    assert output_kind(tmp_path / "new") == "bag"
    assert output_kind(tmp_path / "new.mcap", images_in=True) == "bag"
    assert output_kind(tmp_path / "new.mp4", images_in=True) == "video"
    assert output_kind(tmp_path / "new", "bag", images_in=True) == "bag"
    help_text = " ".join(segment_parser()._subparsers._group_actions[0].choices["segment"]
                         .format_help().split())
    assert "ends in '/'" in help_text and "INPUT is an image folder" in help_text


def test_segment_writes_the_known_definitions_and_reports_the_inputs(
        tmp_path, tiny_model, clip_images, capsys):
    """One flipped byte in the input's schema text must not reach the output: outputs carry
    the known definitions; the damaged one and one of another layout are each reported."""
    from rosbags.highlevel import AnyReader

    typestore = rosbag.make_typestore()
    known, _ = typestore.generate_msgdef(rosbag.IMAGE_TYPE, ros_version=2)
    string_type = "std_msgs/msg/String"
    src = tmp_path / "in"
    with Writer(src, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        camera = writer.add_connection(
            CAMERA, rosbag.IMAGE_TYPE, msgdef=known.replace("frame_id", "fra~e_id"),
            rihs01=typestore.hash_rihs01(rosbag.IMAGE_TYPE))
        chatter = writer.add_connection(
            "/chatter", string_type, msgdef="string data\nint32 extra\n",
            rihs01=typestore.hash_rihs01(string_type))
        for index, rgb in enumerate(clip_images[:3]):
            header = rosbag.make_header(typestore, START_NS + index, "cam")
            msg = rosbag.image_message(typestore, rgb, "rgb8", header)
            writer.write(camera, START_NS + index,
                         typestore.serialize_cdr(msg, rosbag.IMAGE_TYPE))
            writer.write(chatter, START_NS + index, b"\x00\x01\x00\x00\x01\x00\x00\x00\x00"
                         b"\x00\x00\x00\x07\x00\x00\x00")
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    out = tmp_path / "out"
    args = segment_parser().parse_args(["segment", str(src), "--out", str(out),
                                        "--checkpoint", str(checkpoint), "--mode", "dff",
                                        "--device", "cpu", "--quiet"])
    assert args.handler(args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: said in the summary only
    assert (f"{CAMERA}: the input's {rosbag.IMAGE_TYPE} definition is damaged (cannot parse "
            "'string fra~e_id'); the output uses the known definition") in captured.out
    assert (f"/chatter: the input's {string_type} definition differs from the known one "
            f"({string_type} fields data, extra; known: data)") in captured.out

    with AnyReader([out]) as reader:  # the output could not be opened at all
        assert {c.topic for c in reader.connections} == {
            CAMERA, f"{CAMERA}/labels", f"{CAMERA}/color", f"{CAMERA}/stats",
            f"{CAMERA}/label_info"}
        for connection in reader.connections:
            expected, _ = typestore.generate_msgdef(connection.msgtype, ros_version=2)
            assert connection.msgdef.data == expected, connection.topic
        camera_msgs = [reader.deserialize(raw, c.msgtype)
                       for c, _, raw in reader.messages() if c.topic == CAMERA]
    assert [m.header.frame_id for m in camera_msgs] == ["cam"] * 3


def test_a_text_file_named_mp4_is_one_line_even_from_ffmpeg(tmp_path, capfd):
    """FFmpeg inside OpenCV writes to file descriptor 2 directly ("moov atom not found"):
    only the package's own one-line error may reach the user."""
    fake = tmp_path / "clip.mp4"
    fake.write_text("not a video\n")
    with pytest.raises(ValueError, match="cannot open video"):
        video.video_info(fake)
    with pytest.raises(ValueError, match="cannot open video"):
        list(video.iter_video(fake))
    assert capfd.readouterr().err == ""


def test_segment_through_another_backend_gives_the_same_labels(
        tmp_path, tiny_model, clip_images, capsys, monkeypatch):
    """`segment --backend onnxruntime`: the exported graphs in ONNX Runtime, the keyframe
    cache, flow and warp of the pipeline; labels as torch's on every frame of an Accel clip.
    The summary names the backend that ran, and whether its graphs were exported or came from
    the cache (the second run)."""
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    from accel_ros.deploy.export import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # other tests export these weights
    bag = tmp_path / "cam"
    rosbag.write_camera_bag(bag, clip_images)
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_model)
    labels, printed = {}, {}
    for run, backend in enumerate(("torch", "onnxruntime", "onnxruntime")):
        out = tmp_path / f"seg_{run}"
        args = segment_parser().parse_args([
            "segment", str(bag), "--out", str(out), "--checkpoint", str(checkpoint),
            "--keyframe-interval", "3", "--device", "cpu", "--backend", backend, "--quiet",
            "--threads", "1"])
        assert args.handler(args) == 0
        labels[backend] = np.stack([bridge.image_to_array(msg) for _, msg, _ in
                                    read_bag(out)[f"{CAMERA}/labels"]])
        printed[run] = capsys.readouterr().out
    assert labels["torch"].shape == (FRAMES, HEIGHT, WIDTH)
    assert (labels["torch"] == labels["onnxruntime"]).mean() >= 0.995
    assert "backend: backend torch, fp32 on cpu, 1 thread" in printed[0]
    assert "backend: backend onnxruntime, fp32 on cpu, 1 thread; " in printed[1]
    assert "from the cache" not in printed[1] and "from the cache" in printed[2]


def test_image_folder_frames_are_stamped_at_the_given_rate(tmp_path, tiny_model, clip_images):
    """`segment --fps 1`: frame i of an image folder reaches the segmenter stamped i s, so an
    age-aware fusion sees 1 s per frame; without --fps the summary says 30 fps is assumed."""
    src = tmp_path / "images"
    src.mkdir()
    for index, rgb in enumerate(clip_images[:4]):
        video.write_image_rgb(src / f"img_{index:02d}.png", rgb)
    recorder = RecordingSegmenter(make_segmenter(tiny_model, "accel"))
    summary = replay.segment(src, tmp_path / "at_1fps/", recorder, fps=1.0, quiet=True)
    assert [stamp for _, stamp, _ in recorder.calls] == [0.0, 1.0, 2.0, 3.0]
    assert all(result.stamp_note is None for _, _, result in recorder.calls)
    assert summary.extra["frame times"] == "frame i at i/1 s (1 s apart, --fps)"
    assert summary.unstamped == 0 and "stamps:" not in summary.format()

    segmenter = make_segmenter(tiny_model, "dff")
    summary = replay.segment(src, tmp_path / "default/", segmenter, quiet=True)
    assert "30 fps assumed" in summary.extra["frame times"]
    assert summary.extra["backend"].startswith("backend torch, fp32 on cpu, ")
    source = open_source(src, None, None, rosbag.make_typestore())
    assert len(source.notes) == 1 and "gives no frame times" in source.notes[0]
    source.close()
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="fps must be > 0"):
            open_source(src, None, bad, rosbag.make_typestore())


def test_run_summary_counts_frames_without_a_usable_stamp():
    class Result:
        is_keyframe, reset_reason, timings = False, None, {"total": 1.0}

        def __init__(self, note):
            self.stamp_note = note

    summary = RunSummary(name="run")
    for note in (None, "frames carry no stamp: ...", "frames carry no stamp: ..."):
        summary.add(Result(note))
    assert summary.unstamped == 2
    assert "stamps: 2 frames without a usable one (frames carry no stamp: ...)" in (
        summary.format())
