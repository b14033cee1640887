"""rosbag2 helpers on top of the pure-Python `rosbags` package (no ROS installation needed).

Covers what the replay tools need: a ROS 2 typestore that also knows
accel_ros/msg/SegmentationStats, choosing the camera topic(s), opening writers for either storage
plugin (named as rosbag2 names its own bags), copying connections through (with the known
definitions of their types, checking the input's against them), building
Header/Image messages, and writing clips of RGB frames as camera topics. Reading, including
bags a crash cut short, is in bag_reader.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import Connection, MessageDefinitionFormat
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from . import bridge
from .bag_reader import STORAGE_SUFFIXES, is_bag_folder
from .messages import (
    CLASS_INFO_TYPE_NAME,
    LABEL_INFO_TYPE_NAME,
    STATS_TYPE_NAME,
    register_label_info_type,
    register_stats_type,
)
from .topics import BAG_OUTPUTS
from .topics import output_topics as topics_under

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
STATS_TYPE = STATS_TYPE_NAME
LABEL_INFO_TYPE = LABEL_INFO_TYPE_NAME
CLASS_INFO_TYPE = CLASS_INFO_TYPE_NAME
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
COMPRESSED_FORMATS = ("jpeg", "png")
BAG_FILE_SUFFIXES = tuple(STORAGE_SUFFIXES)
WRITER_VERSION = 9  # rosbag2 metadata version of Humble and later (rosbags writes 8 or 9)


def make_typestore() -> Any:
    """A fresh ROS 2 Humble typestore with SegmentationStats registered (not shared: the
    stores are mutable and tests or callers may register their own types)."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_stats_type(typestore)
    register_label_info_type(typestore)
    return typestore


def is_rosbag(path: str | Path) -> bool:
    """A rosbag2 directory (with metadata.yaml, or with the .mcap / .db3 files a recording
    that never closed leaves without one) or a bare .mcap / .db3 storage file."""
    path = Path(path)
    if path.is_dir():
        return is_bag_folder(path)
    return path.is_file() and path.suffix.lower() in BAG_FILE_SUFFIXES


def bag_output(path: str | Path, storage: str | None = None) -> tuple[Path, str]:
    """(bag folder, storage plugin) of a bag output named `path`, the way rosbag2 names them.

    ``cam.mcap`` / ``cam.db3`` mean the folder ``cam/`` (holding ``cam_0.mcap`` /
    ``cam_0.db3`` and metadata.yaml) and pick the storage; any other name is the folder itself,
    with `storage` (default mcap). A suffix that contradicts an explicit `storage` is refused
    rather than silently writing the other format.
    """
    path = Path(path)
    implied = STORAGE_SUFFIXES.get(path.suffix.lower())
    if storage is not None and storage not in STORAGES:
        raise ValueError(f"storage {storage!r} is not one of {sorted(STORAGES)}")
    if implied is None:
        return path, storage or "mcap"
    if storage is not None and storage != implied:
        raise ValueError(f"output {path} names a {implied} bag, but storage {storage} was "
                         f"asked for; drop one of them")
    return path.with_suffix(""), implied


def image_topics(connections: Iterable[Connection]) -> dict[str, str]:
    """{topic: message type} of every Image / CompressedImage connection."""
    return {c.topic: c.msgtype for c in connections if c.msgtype in IMAGE_TYPES}


def select_image_topic(connections: Sequence[Connection], topic: str | None) -> tuple[str, str]:
    """(topic, message type) of the camera topic to segment.

    With `topic` given it must exist and carry images; without, the bag must hold exactly one
    image topic. Raises ValueError listing the candidates otherwise.
    """
    candidates = image_topics(connections)
    listing = ", ".join(f"{t} ({m})" for t, m in sorted(candidates.items())) or "none"
    if topic is not None:
        if topic in candidates:
            return topic, candidates[topic]
        present = {c.topic: c.msgtype for c in connections}
        if topic in present:
            raise ValueError(
                f"topic {topic} has type {present[topic]}, not an image; image topics: {listing}"
            )
        raise ValueError(f"topic {topic} is not in the bag; image topics: {listing}")
    if not candidates:
        present = ", ".join(f"{c.topic} ({c.msgtype})" for c in connections) or "none"
        raise ValueError(f"no image topic ({' or '.join(IMAGE_TYPES)}) in the bag; its "
                         f"topics: {present}")
    if len(candidates) != 1:
        raise ValueError(
            f"the bag has {len(candidates)} image topics, pass --topic to choose one (or "
            f"several), or --all-topics: {listing}"
        )
    return next(iter(candidates.items()))


def select_image_topics(
    connections: Sequence[Connection],
    topics: str | Sequence[str] | None = None,
    *,
    all_topics: bool = False,
) -> dict[str, str]:
    """{topic: message type} of the camera topics to segment, in the order they are given.

    `topics` None or one name: as `select_image_topic`. Several names: each must exist and
    carry images (duplicates count once). `all_topics`: every image topic of the bag, sorted
    by name, except the labels/color topics an earlier replay wrote for another image topic
    of the bag (`replay_output_topics`). Raises ValueError when topics are named and
    `all_topics` is set, and when two chosen topics would write the same output topics.
    """
    names = [topics] if isinstance(topics, str) else list(dict.fromkeys(topics or ()))
    if all_topics:
        if names:
            raise ValueError("name camera topics (--topic) or ask for all of them "
                             "(--all-topics), not both")
        candidates = image_topics(connections)
        earlier = replay_output_topics(candidates)
        chosen = {t: m for t, m in sorted(candidates.items()) if t not in earlier}
        if not chosen:  # no image topic at all: select_image_topic words the error
            select_image_topic(connections, None)
    elif len(names) <= 1:
        if not names:
            # A bag segmented before also holds <camera>/labels and /color Images: the one
            # camera is still the only candidate.
            candidates = image_topics(connections)
            earlier = replay_output_topics(candidates)
            cameras = [t for t in candidates if t not in earlier]
            if earlier and len(cameras) == 1:
                names = cameras
        topic, msgtype = select_image_topic(connections, names[0] if names else None)
        chosen = {topic: msgtype}
    else:
        chosen = dict(select_image_topic(connections, name) for name in names)
    _check_output_clashes(chosen)
    return chosen


def replay_output_topics(topics: Iterable[str]) -> dict[str, str]:
    """{output topic: its input topic} for the Image outputs (labels, color) a replay of each
    of `topics` writes and that are themselves in `topics`: a bag segmented before carries
    them, and they are results, not cameras."""
    topics = list(topics)
    present = set(topics)
    found = {}
    for topic in topics:
        for name in output_topics(topic).values():
            if name in present and name != topic:
                found[name] = topic
    return found


def _check_output_clashes(topics: Iterable[str]) -> None:
    """Two input topics must not share output topics (``/cam/image_raw`` and
    ``/cam/image_raw/compressed`` both map to ``/cam/image_raw/labels``), and none may be
    another's output: one would overwrite the other's results."""
    owners: dict[str, str] = {}
    topics = list(topics)
    for topic in topics:
        for name in output_topics(topic).values():
            if name in owners:
                raise ValueError(f"{owners[name]} and {topic} would both write {name}; "
                                 f"segment one of them")
            owners[name] = topic
    for topic in topics:
        if topic in owners:
            raise ValueError(f"{topic} is where the results of {owners[topic]} are written; "
                             f"it cannot be segmented in the same run")


def output_base(topic: str) -> str:
    """Topic that output topics hang off: image_transport's ``<base>/compressed`` maps to
    ``<base>``, so labels of /cam/image_raw/compressed land on /cam/image_raw/labels."""
    return topic[: -len("/compressed")] if topic.endswith("/compressed") else topic


def output_topics(topic: str) -> dict[str, str]:
    """{kind: output topic} of one camera topic, for the kinds of `topics.BAG_OUTPUTS`:
    ``<base>/labels`` and so on, with `output_base`'s base. Every camera topic of a multi-topic
    run gets its own."""
    return topics_under(f"{output_base(topic)}/", BAG_OUTPUTS)


class Rosbag2Writer(Writer):
    """rosbags' Writer, with the storage file named as rosbag2 names it: ``<bag>/<bag>_0.mcap``
    (rosbags writes ``<bag>/<bag>.mcap``). The file is renamed when the bag is closed, and
    metadata.yaml follows, so a closed bag is consistent for rosbags and for ros2 bag."""

    def close(self) -> None:
        super().close()
        rename_storage_files(self.path)


def rename_storage_files(folder: Path) -> None:
    """Rename a closed bag's storage files to ``<folder>_<i><suffix>`` and update
    metadata.yaml's relative_file_paths and files entries to match."""
    meta_path = folder / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    info = meta["rosbag2_bagfile_information"]
    renamed: dict[str, str] = {}
    for index, name in enumerate(info["relative_file_paths"]):
        source = folder / name
        target = folder / f"{folder.name}_{index}{source.suffix}"
        if source != target:
            source.rename(target)
        renamed[name] = target.name
    info["relative_file_paths"] = [renamed[n] for n in info["relative_file_paths"]]
    for entry in info.get("files") or []:
        entry["path"] = renamed.get(entry["path"], entry["path"])
    temporary = meta_path.with_suffix(".yaml.tmp")
    temporary.write_text(yaml.safe_dump(meta, sort_keys=False, default_flow_style=False),
                         encoding="utf-8")
    temporary.replace(meta_path)


def open_writer(path: str | Path, storage: str | None = None) -> Writer:
    """Open a new rosbag2 for writing (`bag_output` decides folder and storage from the name).
    Raises ValueError if the folder exists (rosbag2 never overwrites) or the storage plugin is
    unknown."""
    folder, storage = bag_output(path, storage)
    if folder.exists():
        raise ValueError(f"output {folder} exists already; a rosbag2 output needs a new path")
    writer = Rosbag2Writer(folder, version=WRITER_VERSION, storage_plugin=STORAGES[storage])
    writer.open()
    return writer


def copy_connection(writer: Writer, connection: Connection, typestore: Any) -> Connection:
    """Add a connection with the same topic, type and QoS as `connection`.

    A type the typestore knows is written with the typestore's own definition and hash, never
    with the text the input carries: one flipped byte there would otherwise be copied into
    the output and make it unreadable (`definition_mismatch` tells callers what the input's
    text says). A type it does not know (custom messages) is first learnt from the .msg
    definition the bag carries; one known by neither is copied with the input's definition
    and hash when it has both. A type with neither raises.
    """
    qos = getattr(connection.ext, "offered_qos_profiles", ()) or ()
    msgdef = connection.msgdef.data if connection.msgdef is not None else ""
    if (msgdef and connection.msgtype not in typestore.types
            and connection.msgdef.format == MessageDefinitionFormat.MSG):
        typestore.register(get_types_from_msg(msgdef, connection.msgtype))
    if (connection.msgtype not in typestore.types and msgdef and connection.digest
            and connection.digest.startswith("RIHS01_")):
        return writer.add_connection(
            connection.topic,
            connection.msgtype,
            msgdef=msgdef,
            rihs01=connection.digest,
            offered_qos_profiles=qos,
        )
    return writer.add_connection(
        connection.topic, connection.msgtype, typestore=typestore, offered_qos_profiles=qos
    )


@dataclass(frozen=True)
class DefinitionMismatch:
    """The message definition an input connection carries disagrees with the known one of its
    type. `readable`: the text parses (then it describes another layout, and the messages
    follow it); otherwise it is damaged and the known definition still reads the messages."""

    topic: str
    msgtype: str
    readable: bool
    detail: str

    def __str__(self) -> str:
        if self.readable:
            return (f"{self.topic}: the input's {self.msgtype} definition differs from the "
                    f"known one ({self.detail})")
        return (f"{self.topic}: the input's {self.msgtype} definition is damaged "
                f"({self.detail}); the output uses the known definition")


def definition_mismatch(connection: Connection, typestore: Any) -> DefinitionMismatch | None:
    """How the .msg definition `connection` carries disagrees with `typestore`'s for its type
    and the types it nests, or None: they agree, the connection carries no .msg text (older
    bags, IDL definitions), or the type is not known (a custom message)."""
    msgdef = connection.msgdef
    if (connection.msgtype not in typestore.fielddefs or msgdef is None or not msgdef.data
            or msgdef.format != MessageDefinitionFormat.MSG):
        return None
    try:
        parsed = get_types_from_msg(msgdef.data, connection.msgtype)
    except Exception as error:  # rosbags' TypesysError quotes the whole text: name the line
        bad = _unparsed_line(msgdef.data)
        detail = f"cannot parse {bad!r}" if bad else f"{type(error).__name__}"
        return DefinitionMismatch(connection.topic, connection.msgtype, False, detail)
    for name, (consts, fields) in parsed.items():
        known = typestore.fielddefs.get(name)
        if known is not None and (list(consts), list(fields)) != (list(known[0]),
                                                                  list(known[1])):
            theirs = ", ".join(f for f, _ in fields)
            ours = ", ".join(f for f, _ in known[1])
            return DefinitionMismatch(connection.topic, connection.msgtype, True,
                                      f"{name} fields {theirs}; known: {ours}")
    return None


def _unparsed_line(text: str) -> str | None:
    """The first field line of a .msg text that is not `type name [default]` with a valid
    ROS name, or None."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith(("MSG:", "====")):
            continue
        parts = line.split()
        name = parts[1].split("=", 1)[0] if len(parts) > 1 else ""
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name):
            return line
    return None


def make_header(typestore: Any, stamp_ns: int, frame_id: str) -> Any:
    """std_msgs/Header with the stamp given in integer nanoseconds."""
    time_cls = typestore.types["builtin_interfaces/msg/Time"]
    header_cls = typestore.types["std_msgs/msg/Header"]
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return header_cls(stamp=time_cls(sec=sec, nanosec=nanosec), frame_id=frame_id)


def header_stamp_ns(header: Any) -> int:
    """Header stamp as integer nanoseconds (0 when the publisher left it unset)."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def image_message(typestore: Any, array: np.ndarray, encoding: str, header: Any) -> Any:
    """sensor_msgs/Image of `array` in `encoding`'s own layout (see bridge.from_array)."""
    fields = bridge.from_array(array, encoding, header)
    return typestore.types[IMAGE_TYPE](**fields)


def camera_message(typestore: Any, rgb: np.ndarray, encoding: str, header: Any) -> Any:
    """What a camera driver would publish for an (H, W, 3) uint8 RGB frame: an Image in any
    bridge encoding, or a CompressedImage for "jpeg" / "png"."""
    if encoding in COMPRESSED_FORMATS:
        fields = bridge.rgb8_to_compressed(rgb, encoding, header)
        return typestore.types[COMPRESSED_TYPE](**fields)
    return typestore.types[IMAGE_TYPE](**bridge.from_rgb8(rgb, encoding, header))


def decode_image(typestore: Any, rawdata: bytes | memoryview, msgtype: str) -> tuple[Any, Any]:
    """CDR bytes of an Image / CompressedImage -> (header, (H, W, 3) uint8 RGB).

    Raises ValueError for bytes that do not deserialise or an image that does not convert,
    so callers can skip one bad message and keep going.
    """
    try:
        msg = typestore.deserialize_cdr(rawdata, msgtype)
    except Exception as error:  # rosbags raises struct/index/value errors on garbage bytes
        raise ValueError(f"undecodable {msgtype} CDR ({len(rawdata)} bytes): {error}") from error
    rgb = bridge.compressed_to_rgb8(msg) if msgtype == COMPRESSED_TYPE else bridge.to_rgb8(msg)
    return msg.header, rgb


def write_camera_bag(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    topic: str = "/camera/image_raw",
    encoding: str = "rgb8",
    frame_id: str = "camera",
    fps: float = 30.0,
    start_ns: int = 1_700_000_000 * 1_000_000_000,
    storage: str | None = None,
    typestore: Any = None,
) -> int:
    """Write (H, W, 3) uint8 RGB frames as a camera topic; header stamp = bag time =
    start + i / fps. `path` and `storage` are read as `bag_output` does. Returns the number of
    messages written."""
    counts = write_cameras_bag(
        path, {topic: frames}, encoding=encoding, frame_ids={topic: frame_id}, fps=fps,
        start_ns=start_ns, storage=storage, typestore=typestore,
    )
    return counts[topic]


def write_cameras_bag(
    path: str | Path,
    cameras: Mapping[str, Iterable[np.ndarray]],
    *,
    encoding: str = "rgb8",
    frame_ids: Mapping[str, str] | None = None,
    fps: float = 30.0,
    start_ns: int = 1_700_000_000 * 1_000_000_000,
    storage: str | None = None,
    typestore: Any = None,
) -> dict[str, int]:
    """Write several synchronised cameras, {topic: (H, W, 3) uint8 RGB frames}: frame i of
    every camera has header stamp = bag time = start + i / fps, written camera after camera in
    `cameras`' order (as a recorder receives a hardware-triggered rig). A camera whose frames
    run out stops; the others go on. `frame_ids` default to "camera". Returns {topic: number
    of messages written}."""
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if not cameras:
        raise ValueError("no camera topic to write")
    typestore = typestore or make_typestore()
    msgtype = COMPRESSED_TYPE if encoding in COMPRESSED_FORMATS else IMAGE_TYPE
    if encoding not in COMPRESSED_FORMATS:
        bridge.encoding_info(encoding)  # fail before creating the bag on a bad encoding
    frame_ids = frame_ids or {}
    streams = {topic: iter(frames) for topic, frames in cameras.items()}
    counts = dict.fromkeys(streams, 0)
    writer = open_writer(path, storage)
    try:
        connections = {topic: writer.add_connection(topic, msgtype, typestore=typestore)
                       for topic in streams}
        index = 0
        while streams:
            stamp_ns = int(start_ns + round(index * 1e9 / fps))
            for topic in list(streams):
                rgb = next(streams[topic], None)
                if rgb is None:
                    del streams[topic]
                    continue
                header = make_header(typestore, stamp_ns, frame_ids.get(topic, "camera"))
                msg = camera_message(typestore, rgb, encoding, header)
                writer.write(connections[topic], stamp_ns, typestore.serialize_cdr(msg, msgtype))
                counts[topic] += 1
            index += 1
    finally:
        writer.close()
    return counts
