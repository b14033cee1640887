"""Bags as robots leave them: every test builds its own broken bag (MCAP cut inside a chunk,
between chunks, in the summary or footer; a chunk with a bad CRC; a .db3 without metadata.yaml
or never closed; empty bags; bags without image topics) and checks the recovered count against
the frames written before the damage, plus exit code and message of the CLI.

Oracles are independent of the reader under test: for uncompressed chunks a message is complete
before a cut iff its payload bytes (unique per frame) end before it; for compressed chunks the
intact file's chunk index (read with the `mcap` package's own seeking reader) says which
messages a complete chunk held.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from accel_ros.cli import main as cli
from accel_ros.cli import make_bag as make_bag_cli
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.io import bag_reader, bridge, rosbag
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.replay import runner as replay
from accel_ros.replay.sources import Frame, open_source
from accel_ros.stream import AccelSegmenter

HEIGHT, WIDTH = 32, 48
CAMERA = "/camera/image_raw"
START_NS = 1_700_000_000_000_000_000
PERIOD_NS = 33_333_333
FRAME_BYTES = HEIGHT * WIDTH * 3


def frames(count: int, seed: int = 0) -> list[np.ndarray]:
    """Random (HEIGHT, WIDTH, 3) uint8 frames: incompressible, so chunk sizes are predictable."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(count)]


def camera_payloads(images: list[np.ndarray]) -> list[bytes]:
    """CDR of one rgb8 Image per frame; frame_id cam_<i> makes every payload unique."""
    typestore = rosbag.make_typestore()
    out = []
    for index, rgb in enumerate(images):
        header = rosbag.make_header(typestore, START_NS + index * PERIOD_NS, f"cam_{index}")
        msg = rosbag.image_message(typestore, rgb, "rgb8", header)
        out.append(bytes(typestore.serialize_cdr(msg, rosbag.IMAGE_TYPE)))
    return out


def write_ros2_mcap(path: Path, payloads: list[bytes], *, chunk_size: int,
                    compression: CompressionType = CompressionType.NONE,
                    chatter: bool = True) -> None:
    """An MCAP laid out as rosbag2's MCAP plugin writes it (ros2msg schemas, cdr channels with
    offered_qos_profiles, chunk CRCs), camera messages interleaved with a small String topic."""
    typestore = rosbag.make_typestore()
    string_cls = typestore.types["std_msgs/msg/String"]
    with path.open("wb") as stream:
        writer = McapWriter(stream, chunk_size=chunk_size, compression=compression)
        writer.start(profile="ros2", library="test")
        ids = {}
        for topic, msgtype in ((CAMERA, rosbag.IMAGE_TYPE), ("/chatter", string_cls.__msgtype__)):
            msgdef, _ = typestore.generate_msgdef(msgtype, ros_version=2)
            schema = writer.register_schema(msgtype, "ros2msg", msgdef.encode())
            ids[topic] = writer.register_channel(topic, "cdr", schema,
                                                 {"offered_qos_profiles": ""})
        for index, raw in enumerate(payloads):
            stamp = START_NS + index * PERIOD_NS
            writer.add_message(ids[CAMERA], stamp, raw, stamp, index)
            if chatter:
                text = typestore.serialize_cdr(string_cls(data=f"hi {index}"),
                                               string_cls.__msgtype__)
                writer.add_message(ids["/chatter"], stamp + 1, bytes(text), stamp + 1, index)
        writer.finish()


def complete_before(data: bytes, payloads: list[bytes], cut: int) -> int:
    """Camera payloads that end at or before byte `cut` (uncompressed chunks only). A payload
    may also be an image's pixel bytes: the data field ends an Image message."""
    ends = []
    for raw in payloads:
        start = data.find(raw)
        assert start > 0
        ends.append(start + len(raw))
    return sum(1 for end in ends if end <= cut)


def chunk_spans(path: Path) -> list[tuple[int, int, int, int]]:
    """(start offset, end offset, first log time, last log time) of every chunk of an intact
    MCAP, from its summary."""
    with path.open("rb") as stream:
        summary = make_reader(stream).get_summary()
    return sorted((c.chunk_start_offset, c.chunk_start_offset + c.chunk_length,
                   c.message_start_time, c.message_end_time) for c in summary.chunk_indexes)


def camera_in_time(count: int, last_ns: int) -> int:
    """Camera frames stamped at or before `last_ns`."""
    return sum(1 for i in range(count) if START_NS + i * PERIOD_NS <= last_ns)


def recovered_camera(path: Path) -> tuple[int, bag_reader.RecoveryReport]:
    bag = bag_reader.open_bag(path)
    count = sum(1 for c, _, _ in bag.messages() if c.topic == CAMERA)
    declared = sum(c.msgcount for c in bag.connections if c.topic == CAMERA)
    assert count == declared  # the scan and the read agree
    return count, bag.report


def cut_copy(source: Path, target: Path, cut: int) -> Path:
    target.write_bytes(source.read_bytes()[:cut])
    return target


# ---------------------------------------------------------------------------------------------
# MCAP cut at any offset


@pytest.fixture(scope="module")
def plain_mcap(tmp_path_factory) -> tuple[Path, list[bytes]]:
    """24 frames, uncompressed 16 KiB chunks (~3 frames each) with CRCs."""
    payloads = camera_payloads(frames(24))
    path = tmp_path_factory.mktemp("plain") / "plain.mcap"
    write_ros2_mcap(path, payloads, chunk_size=16 * 1024)
    return path, payloads


def test_mcap_cut_inside_chunk_between_chunks_in_summary_and_footer(tmp_path, plain_mcap):
    path, payloads = plain_mcap
    data = path.read_bytes()
    spans = chunk_spans(path)
    assert len(spans) >= 6
    start3, end3 = spans[3][0], spans[3][1]
    cuts = {
        "inside the file header": 20,
        "inside chunk 3, mid-message": (start3 + end3) // 2,
        "one byte into chunk 3": start3 + 1,
        "between chunks 2 and 3": start3,
        "right after chunk 3": end3,
        "inside the footer": len(data) - 12,
        "inside the summary": spans[-1][1] + (len(data) - spans[-1][1]) // 2,
    }
    for where, cut in cuts.items():
        count, report = recovered_camera(cut_copy(path, tmp_path / "cut.mcap", cut))
        expected = complete_before(data, payloads, cut)
        assert count == expected, where
        assert report.damaged, where
        first = report.damage[0]
        assert first.offset is not None and first.offset <= cut, where
        if cut > spans[-1][1]:  # only the summary is gone
            assert count == len(payloads) and report.lost == 0, where
            assert "no message lost" in str(first), where
        else:
            assert report.lost is None, where  # unknowable without an index...
            assert "file ends" in str(first), where
            if count:  # ...but the time from which nothing survived is known
                assert report.lost_after_ns is not None
                assert report.lost_after_ns >= START_NS + (count - 1) * PERIOD_NS
    # "between chunks": exactly the messages of the complete chunks
    assert complete_before(data, payloads, start3) == camera_in_time(len(payloads), spans[2][3])


@pytest.mark.parametrize("compression", [CompressionType.NONE, CompressionType.ZSTD,
                                         CompressionType.LZ4])
def test_mcap_cut_at_every_offset(tmp_path, compression):
    """A sweep of cuts over the whole file: every message of a chunk complete before the cut
    comes back, nothing after the cut is invented; uncompressed chunks also give every complete
    message of the chunk the cut went through (so 100% of the frames before the cut)."""
    payloads = camera_payloads(frames(30, seed=1))
    path = tmp_path / "sweep.mcap"
    write_ros2_mcap(path, payloads, chunk_size=12 * 1024, compression=compression)
    data = path.read_bytes()
    spans = chunk_spans(path)
    assert len(spans) >= 8
    for cut in np.linspace(9, len(data) - 1, 61).astype(int).tolist():
        count, _ = recovered_camera(cut_copy(path, tmp_path / "cut.mcap", cut))
        complete = [s for s in spans if s[1] <= cut]
        lower = camera_in_time(len(payloads), complete[-1][3]) if complete else 0
        holding = [s for s in spans if s[0] < cut]
        upper = camera_in_time(len(payloads), holding[-1][3]) if holding else 0
        assert lower <= count <= upper, cut
        if compression == CompressionType.NONE:
            assert count == complete_before(data, payloads, cut), cut


def test_mcap_bad_chunk_crc_costs_only_that_chunk(tmp_path, plain_mcap):
    path, payloads = plain_mcap
    data = bytearray(path.read_bytes())
    spans = chunk_spans(path)
    start, end, first_ns, last_ns = spans[2]
    victim = next(i for i, raw in enumerate(payloads) if start < data.find(raw) < end)
    data[data.find(payloads[victim]) + 100] ^= 0xFF
    broken = tmp_path / "crc.mcap"
    broken.write_bytes(bytes(data))
    count, report = recovered_camera(broken)
    in_chunk = sum(1 for i in range(len(payloads))
                   if first_ns <= START_NS + i * PERIOD_NS <= last_ns)
    assert in_chunk >= 2
    assert count == len(payloads) - in_chunk
    assert report.dropped == 2 * in_chunk  # camera + chatter messages of that chunk
    assert report.lost == 2 * in_chunk
    assert [d.offset for d in report.damage] == [start]
    assert "CRC" in str(report.damage[0]) and f"at byte {start}" in str(report.damage[0])
    # The frames before the damage are all there, in order, byte for byte.
    bag = bag_reader.open_bag(broken)
    camera = [bytes(raw) for c, _, raw in bag.messages() if c.topic == CAMERA]
    assert camera == [raw for i, raw in enumerate(payloads)
                      if not first_ns <= START_NS + i * PERIOD_NS <= last_ns]


def test_power_loss_zero_tail_and_undecodable_chunk(tmp_path, plain_mcap):
    """A power loss often leaves the file's last blocks zero-filled; a zstd chunk whose bytes
    were overwritten does not decompress. Both keep every message before the damage."""
    path, payloads = plain_mcap
    data = path.read_bytes()
    spans = chunk_spans(path)
    cut = (spans[4][0] + spans[4][1]) // 2
    zeroed = tmp_path / "zeroed.mcap"
    zeroed.write_bytes(data[:cut] + bytes(8192))
    count, report = recovered_camera(zeroed)
    assert count == complete_before(data, payloads, cut)
    assert "file ends inside a Chunk record" in str(report.damage[0])

    compressed = tmp_path / "zstd.mcap"
    write_ros2_mcap(compressed, payloads, chunk_size=16 * 1024,
                    compression=CompressionType.ZSTD)
    zspans = chunk_spans(compressed)
    broken = bytearray(compressed.read_bytes())
    start, _, first_ns, last_ns = zspans[1]
    broken[start + 80:start + 400] = bytes(320)
    compressed.write_bytes(bytes(broken))
    count, report = recovered_camera(compressed)
    in_chunk = camera_in_time(len(payloads), last_ns) - camera_in_time(len(payloads),
                                                                      first_ns - 1)
    assert count == len(payloads) - in_chunk
    assert [d.offset for d in report.damage] == [start]
    assert "does not decompress" in str(report.damage[0]) or "fails its check" in str(
        report.damage[0])


def test_truncated_file_inside_a_bag_folder_reports_exact_loss(tmp_path):
    folder = tmp_path / "cam"
    written = rosbag.write_camera_bag(folder, frames(12), storage="mcap")
    storage = next(folder.glob("*.mcap"))
    data = storage.read_bytes()
    cut = len(data) * 2 // 3
    storage.write_bytes(data[:cut])
    count, report = recovered_camera(folder)
    expected = complete_before(data, [rgb.tobytes() for rgb in frames(12)], cut)
    assert 0 < count == expected < written
    assert report.expected == written and report.lost == written - count
    assert f"lost {written - count} messages (metadata.yaml count)" in report.summary_line()


# ---------------------------------------------------------------------------------------------
# sqlite3 and folders without metadata.yaml


def test_db3_folder_without_metadata_is_read_like_reindex(tmp_path):
    folder = tmp_path / "nometa"
    images = frames(5)
    rosbag.write_camera_bag(folder, images, storage="sqlite3")
    (folder / "metadata.yaml").unlink()
    assert rosbag.is_rosbag(folder)
    count, report = recovered_camera(folder)
    assert count == 5 and not report.damaged
    assert any("no metadata.yaml" in note and "ros2 bag reindex" in note and "nometa_0.db3"
               in note for note in report.notes)
    source = open_source(folder, None, None, rosbag.make_typestore())
    decoded = [item.rgb for item in source if isinstance(item, Frame)]
    assert len(decoded) == 5
    np.testing.assert_array_equal(decoded[3], images[3])


def test_db3_never_closed_keeps_committed_messages(tmp_path):
    """A recording killed mid-way: WAL-mode database copied while the writer still had it
    open (what a crash leaves on disk), no metadata.yaml, no closing metadata row."""
    payloads = camera_payloads(frames(7))
    live = tmp_path / "live.db3"
    conn = sqlite3.connect(live)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        "CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,"
        " serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL);"
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL,"
        " timestamp INTEGER NOT NULL, data BLOB NOT NULL);")
    conn.execute("INSERT INTO topics VALUES(1, ?, ?, 'cdr', '')", (CAMERA, rosbag.IMAGE_TYPE))
    conn.commit()
    for index, raw in enumerate(payloads):
        conn.execute("INSERT INTO messages(topic_id, timestamp, data) VALUES(1, ?, ?)",
                     (START_NS + index * PERIOD_NS, raw))
        if index == 4:
            conn.commit()  # 5 frames committed; 2 more in the transaction the crash kills
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{live}{suffix}").exists():
            shutil.copy(f"{live}{suffix}", crashed / f"crashed_0.db3{suffix}")
    conn.close()
    assert (crashed / "crashed_0.db3-wal").exists()
    count, report = recovered_camera(crashed)
    assert count == 5
    assert "no metadata.yaml" in report.notes[0]


def test_unreadable_storage_files_raise_one_line_bag_errors(tmp_path):
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"this is not an mcap file at all")
    with pytest.raises(bag_reader.BagError, match=r"garbage.mcap: not an MCAP file"):
        bag_reader.open_bag(garbage)
    (tmp_path / "empty.mcap").write_bytes(b"")
    with pytest.raises(bag_reader.BagError, match=r"empty.mcap: not an MCAP file .it is empty"):
        bag_reader.open_bag(tmp_path / "empty.mcap")
    (tmp_path / "bad.db3").write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    with pytest.raises(bag_reader.BagError, match=r"bad.db3: unreadable sqlite3 database"):
        bag_reader.open_bag(tmp_path / "bad.db3")
    other = tmp_path / "other.db3"
    sqlite3.connect(other).execute("CREATE TABLE t(x)").connection.commit()
    with pytest.raises(bag_reader.BagError, match=r"other.db3: not a rosbag2 sqlite3 file"):
        bag_reader.open_bag(other)
    with pytest.raises(bag_reader.BagError, match=r"unknown bag format '.bag'"):
        (tmp_path / "ros1.bag").write_bytes(b"#ROSBAG V2.0\n")
        bag_reader.open_bag(tmp_path / "ros1.bag")


# ---------------------------------------------------------------------------------------------
# make-bag naming


@pytest.mark.parametrize(("name", "storage_file"), [("cam.mcap", "cam_0.mcap"),
                                                    ("cam.db3", "cam_0.db3"),
                                                    ("cam", "cam_0.mcap")])
def test_make_bag_follows_rosbag2_naming(tmp_path, capsys, name, storage_file):
    code = cli.main(["make-bag", str(tmp_path / name), "--frames", "3", "--height", "32",
                     "--width", "48", "--quiet"])
    assert code == 0
    folder = tmp_path / "cam"
    assert sorted(p.name for p in folder.iterdir()) == sorted([storage_file, "metadata.yaml"])
    assert f"wrote 3 rgb8 frames on {CAMERA} to {folder}/" in capsys.readouterr().out
    with Reader(folder) as reader:  # rosbags reads it through metadata.yaml
        assert [c.msgcount for c in reader.connections] == [3]
        assert len(list(reader.messages())) == 3
    with Reader(folder / storage_file) as reader:  # and the storage file alone
        assert len(list(reader.messages())) == 3


def test_make_bag_refuses_contradicting_storage_and_existing_output(tmp_path, capsys):
    code = cli.main(["make-bag", str(tmp_path / "cam.db3"), "--storage", "mcap", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "cam.db3 names a sqlite3 bag, but storage mcap" in err
    assert not (tmp_path / "cam").exists()
    (tmp_path / "cam").mkdir()
    assert cli.main(["make-bag", str(tmp_path / "cam.mcap"), "--quiet"]) == 2
    assert f"output {tmp_path / 'cam'} exists already" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# segment end to end: recovery, bad input, Ctrl-C


@pytest.fixture(scope="module")
def tiny_model() -> AccelNet:
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16)
    return AccelNet(config).eval()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", tiny_model)


def segment_cli(source: Path, out: Path, checkpoint: Path, *extra: str) -> int:
    return cli.main(["segment", str(source), "--out", str(out), "--checkpoint", str(checkpoint),
                     "--mode", "deeplab", "--device", "cpu", "--quiet", *extra])


def read_topics(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    with Reader(path) as reader:
        for connection, timestamp, _ in reader.messages():
            out.setdefault(connection.topic, []).append(timestamp)
    return out


def test_segment_truncated_mcap_writes_one_output_per_recovered_frame(
        tmp_path, capsys, plain_mcap, tiny_checkpoint):
    path, payloads = plain_mcap
    data = path.read_bytes()
    cut = len(data) * 3 // 5  # what the user had: 60% of the file
    source = cut_copy(path, tmp_path / "cut.mcap", cut)
    expected = complete_before(data, payloads, cut)
    assert segment_cli(source, tmp_path / "cut_seg.mcap", tiny_checkpoint) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    # --quiet drops the warnings, not the recovery report in the summary
    assert "damaged: cut.mcap at byte" in captured.out
    assert f"recovered {2 * expected} messages" in captured.out  # camera + chatter
    out = read_topics(tmp_path / "cut_seg")  # rosbag2 naming: cut_seg/cut_seg_0.mcap
    assert (tmp_path / "cut_seg" / "cut_seg_0.mcap").is_file()
    stamps = [START_NS + i * PERIOD_NS for i in range(expected)]
    for topic in (CAMERA, f"{CAMERA}/labels", f"{CAMERA}/color", f"{CAMERA}/stats"):
        assert out[topic] == stamps, topic


def bag_with(path: Path, topics: dict[str, str], messages: int = 1) -> Path:
    """A rosbag2 (MCAP) with the given {topic: type} connections and `messages` each."""
    typestore = rosbag.make_typestore()
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic, msgtype in topics.items():
            connection = writer.add_connection(topic, msgtype, typestore=typestore)
            for index in range(messages):
                if msgtype == rosbag.IMAGE_TYPE:
                    header = rosbag.make_header(typestore, START_NS, "cam")
                    msg = typestore.types[msgtype](
                        **bridge.from_rgb8(frames(1)[0], "rgb8", header))
                else:
                    msg = typestore.types[msgtype](data=f"{index}")
                writer.write(connection, START_NS + index,
                             typestore.serialize_cdr(msg, msgtype))
    return path


def test_bad_inputs_are_one_line_with_the_file_and_exit_2(tmp_path, capsys, tiny_checkpoint):
    string, image = "std_msgs/msg/String", rosbag.IMAGE_TYPE
    cases = {
        "missing": (tmp_path / "missing.mcap", (), "input not found: "),
        "unknown format": (tmp_path / "notes.txt", (), "cannot read"),
        "unreadable": (tmp_path / "junk.mcap", (), "not an MCAP file"),
        "empty, no topics": (bag_with(tmp_path / "empty", {}), (),
                             "the bag is empty"),
        "empty image topic": (bag_with(tmp_path / "empty_cam", {CAMERA: image}, 0), (),
                              f"no message on {CAMERA}: the bag is empty"),
        "no image topic": (bag_with(tmp_path / "chatter", {"/chatter": string}), (),
                           "no image topic (sensor_msgs/msg/Image or sensor_msgs/msg/"
                           "CompressedImage) in the bag; its topics: /chatter"),
        "wrong topic": (bag_with(tmp_path / "cam", {CAMERA: image}), ("--topic", "/nope"),
                        "topic /nope is not in the bag"),
        "topic of another type": (bag_with(tmp_path / "both", {CAMERA: image,
                                                               "/chatter": string}),
                                  ("--topic", "/chatter"),
                                  "topic /chatter has type std_msgs/msg/String, not an image"),
        "cut before any message": (tmp_path / "head.mcap", (), "nothing recoverable before "
                                   "the damage (head.mcap at byte 8"),
    }
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "junk.mcap").write_bytes(b"junk" * 10)
    (tmp_path / "head.mcap").write_bytes(bag_reader.MCAP_MAGIC + b"\x01\x30")
    for name, (source, extra, message) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_').replace(',', '')}"
        code = segment_cli(source, out, tiny_checkpoint, *extra)
        err = capsys.readouterr().err
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        assert lines[0].startswith("accel-ros segment: error: "), name
        assert str(source) in lines[0] and message in lines[0], (name, lines[0])
        assert not out.exists(), name  # nothing half-written


def test_a_file_that_is_no_checkpoint_is_one_short_line(tmp_path, capsys):
    """Random bytes as --checkpoint: say it is not a checkpoint of this package, and never
    pass on PyTorch's advice to load it with weights_only=False (that runs its pickles)."""
    source = tmp_path / "in"
    rosbag.write_camera_bag(source, frames(2), start_ns=START_NS)
    junk = tmp_path / "model.pt"
    junk.write_bytes(np.random.default_rng(1).bytes(8192))
    code = segment_cli(source, tmp_path / "out", junk)
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"accel-ros segment: error: {junk} is not a checkpoint of this package "
                   "(unreadable: UnpicklingError)\n")
    assert "weights_only" not in err and not (tmp_path / "out").exists()


def test_other_commands_never_print_a_traceback(tmp_path, capsys):
    runs = [
        (["eval", "--checkpoint", str(tmp_path / "no.pt")], "checkpoint not found"),
        (["demo", "--frames", "0", "--out", str(tmp_path / "d"), "--checkpoint", "none"],
         "frames must be >= 1"),
        (["make-bag", str(tmp_path / "x"), "--encoding", "nope8", "--quiet"], "nope8"),
        (["make-bag", str(tmp_path / "y"), "--frames", "0"], "frames must be >= 1"),
    ]
    for argv, message in runs:
        code = cli.main(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert message in err, (argv, err)


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys):
    def explode(args: argparse.Namespace) -> int:
        raise KeyError("inner detail")

    monkeypatch.setattr(make_bag_cli, "main", explode)
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(["make-bag", "x"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == (f"accel-ros make-bag: error: unexpected KeyError: 'inner detail' "
                           f"(set {cli.TRACEBACK_ENV}=1 for the traceback)")
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(KeyError):
        cli.main(["make-bag", "x"])


class InterruptingSegmenter:
    """A real segmenter that gets Ctrl-C (a real SIGINT) while processing frame `at`."""

    def __init__(self, segmenter: AccelSegmenter, at: int, hard: bool = False) -> None:
        self.segmenter = segmenter
        self.model_config = segmenter.model_config
        self.pipeline_config = segmenter.pipeline_config
        self.at, self.hard, self.calls = at, hard, 0

    def process(self, frame: np.ndarray, stamp: float | None = None):
        if self.calls == self.at:
            signal.raise_signal(signal.SIGINT)
            if self.hard:  # a second Ctrl-C: interrupt at once
                signal.raise_signal(signal.SIGINT)
        self.calls += 1
        return self.segmenter.process(frame, stamp)

    check_frame = staticmethod(AccelSegmenter.check_frame)

    def process_batch(self, frames):
        """`segment` batches by camera; one camera's batches hold one frame."""
        return [self.process(item.frame, item.stamp) for item in frames]


@pytest.mark.parametrize("hard", [False, True])
def test_ctrl_c_during_segment_leaves_a_valid_bag(tmp_path, tiny_model, hard):
    source = tmp_path / "in"
    rosbag.write_camera_bag(source, frames(8), storage="mcap", start_ns=START_NS)
    segmenter = AccelSegmenter(tiny_model, PipelineConfig(mode="deeplab", device="cpu"))
    out = tmp_path / "out"
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN under nohup or a background job
    if hard:
        with pytest.raises(KeyboardInterrupt):
            replay.segment(source, out, InterruptingSegmenter(segmenter, 3, hard=True),
                           quiet=True)
        done = 3  # frame 3 never finished
    else:
        summary = replay.segment(source, out, InterruptingSegmenter(segmenter, 3), quiet=True)
        done = 4  # frame 3 finishes, then the run stops
        assert summary.frames == done and "Ctrl-C after 4 frames" in summary.extra["interrupted"]
    assert signal.getsignal(signal.SIGINT) is handler_before  # restored
    topics = read_topics(out)  # metadata.yaml written: rosbags opens it
    stamps = [START_NS + round(i * 1e9 / 30) for i in range(done)]
    for topic in (f"{CAMERA}/labels", f"{CAMERA}/color", f"{CAMERA}/stats"):
        assert topics[topic] == stamps, topic


def test_ctrl_c_in_the_cli_exits_130_naming_the_valid_output(
        tmp_path, capsys, monkeypatch, tiny_checkpoint):
    import accel_ros.stream as stream_package

    real = stream_package.build_segmenter
    monkeypatch.setattr(stream_package, "build_segmenter",
                        lambda *a, **k: InterruptingSegmenter(real(*a, **k), at=1))
    rosbag.write_camera_bag(tmp_path / "in.mcap", frames(5), start_ns=START_NS)
    assert segment_cli(tmp_path / "in", tmp_path / "out.db3", tiny_checkpoint) == 130
    err = capsys.readouterr().err
    assert err.strip() == (f"accel-ros segment: interrupted by Ctrl-C after 2 frames; "
                           f"{tmp_path / 'out'} (bag) holds them")
    assert (tmp_path / "out" / "out_0.db3").is_file()
    # the camera copy stops with the frames: the output is the recording up to there (and the
    # class metadata, written once)
    counts = {topic: len(v) for topic, v in read_topics(tmp_path / "out").items()}
    assert counts.pop(f"{CAMERA}/label_info") == 1
    assert list(counts.values()) == [2, 2, 2, 2]


def test_custom_message_types_of_a_recovered_bag_are_copied(tmp_path):
    """A cut MCAP has no metadata and no type hashes: a custom type is learnt from the
    definition the file carries, so segment's bag output can still copy its topic."""
    path = tmp_path / "custom.mcap"
    definition = "string note\nuint32[] values\n"
    with path.open("wb") as stream:
        writer = McapWriter(stream, chunk_size=1024, compression=CompressionType.NONE)
        writer.start(profile="ros2", library="test")
        schema = writer.register_schema("vendor_msgs/msg/Note", "ros2msg", definition.encode())
        channel = writer.register_channel("/vendor/note", "cdr", schema,
                                          {"offered_qos_profiles": ""})
        raw = bytes.fromhex("000100000600000068656c6c6f000000020000000100000002000000")
        for index in range(3):
            writer.add_message(channel, START_NS + index, raw, START_NS + index)
        writer.finish()
    data = path.read_bytes()
    cut_copy(path, tmp_path / "cut.mcap", len(data) - 40)  # the summary is gone
    bag = bag_reader.open_bag(tmp_path / "cut.mcap")
    (connection,) = bag.connections
    assert (connection.msgtype, connection.msgcount, connection.digest) == (
        "vendor_msgs/msg/Note", 3, "")
    typestore = rosbag.make_typestore()
    out = rosbag.open_writer(tmp_path / "copy.mcap")
    copied = rosbag.copy_connection(out, connection, typestore)
    for conn, stamp, payload in bag.messages():
        assert conn is connection
        out.write(copied, stamp, payload)
    out.close()
    with Reader(tmp_path / "copy") as reader:
        (read,) = reader.connections
        assert read.digest.startswith("RIHS01_") and read.msgcount == 3
        msgs = [typestore.deserialize_cdr(p, read.msgtype) for _, _, p in reader.messages()]
    assert [(m.note, m.values.tolist()) for m in msgs] == [("hello", [1, 2])] * 3


def test_message_compressed_bag_is_decompressed(tmp_path):
    from rosbags.rosbag2 import Writer as RosbagsWriter
    from rosbags.rosbag2.enums import CompressionFormat, CompressionMode

    payloads = camera_payloads([np.full((HEIGHT, WIDTH, 3), i, np.uint8) for i in range(3)])
    path = tmp_path / "zmsg"
    writer = RosbagsWriter(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.MESSAGE, CompressionFormat.ZSTD)
    with writer:
        connection = writer.add_connection(CAMERA, rosbag.IMAGE_TYPE,
                                           typestore=rosbag.make_typestore())
        for index, raw in enumerate(payloads):
            writer.write(connection, START_NS + index, raw)
    stored = next(path.glob("*.mcap")).read_bytes()
    assert payloads[0] not in stored  # really compressed on disk
    bag = bag_reader.open_bag(path)
    assert [bytes(raw) for _, _, raw in bag.messages()] == payloads
