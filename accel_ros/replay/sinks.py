"""Outputs of `accel-ros segment`, one per segmented frame: a new rosbag2 (`BagSink`), or
colourised overlays as a video or a folder of PNGs (`OverlaySink`). `output_kind` decides
which from the output's name."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import rosbag, video
from ..io.messages import label_info_message, stats_fields
from ..palette import render_labels
from .sources import Frame, Passthrough, topic_list

OUTPUT_KINDS = ("bag", "video", "png")


def output_kind(
    path: str | Path, requested: str | None = None, *, images_in: bool = False
) -> str:
    """The kind of output `path` names: "video", "png" (a folder of overlay PNGs) or "bag"
    (a new rosbag2 directory). `requested` ("bag", "video", "png") overrides the guess.

    The rule (also in `accel-ros segment --help`): a video suffix is a video; a folder is PNGs
    when it exists and is not a bag, when `path` ends in a slash (``overlays/``), or when it
    has no suffix and the input is an image folder (`images_in`: image folder -> PNG folder);
    anything else is a new rosbag2 (``out``, ``out.mcap``, ``out.db3``)."""
    text = str(path)
    path = Path(path)
    if requested not in (None, "auto"):
        if requested not in OUTPUT_KINDS:
            raise ValueError(f"output format {requested!r} is not one of {OUTPUT_KINDS}")
        kind = requested
    elif video.is_video_path(path):
        kind = "video"
    else:
        kind = "png" if _names_png_folder(path, text, images_in) else "bag"
    if kind == "bag" and rosbag.bag_output(path)[0].exists():
        folder = rosbag.bag_output(path)[0]
        raise ValueError(f"output {folder} exists already; a rosbag2 output needs a new path")
    if kind == "png" and path.exists() and not path.is_dir():
        raise ValueError(f"PNG output {path} exists and is not a directory")
    return kind


def _names_png_folder(path: Path, text: str, images_in: bool) -> bool:
    if path.exists():
        return path.is_dir() and not rosbag.is_rosbag(path)
    return text.endswith(("/", os.sep)) or (images_in and not path.suffix)


def check_streams_output(topics: Sequence[str], kind: str) -> None:
    """Several cameras need a bag output: a video or a PNG folder holds one camera's frames.
    Checked before any work (the CLI: before the model loads)."""
    if len(topics) > 1 and kind != "bag":
        raise ValueError(f"{len(topics)} camera topics ({', '.join(topics)}) need a rosbag2 "
                         f"output; a {kind} output holds one camera: pass one --topic")


class BagSink:
    """rosbag2 output: input topics copied through, plus labels, color and stats topics for
    each camera topic (`rosbag.output_topics`: ``<topic>/labels`` ...).

    `topic` is the camera topic, or several; a frame's outputs go to its own topic's
    (`Frame.topic`, the first topic when unset). For video/image input (no input bag) the
    frames themselves are written as rgb8 Images on `topic`, so the output bag is
    self-contained.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        storage: str | None,
        typestore: Any,
        topic: str | Sequence[str],
        connections: list[Any],
        mode: str,
        palette: str,
        frame_id: str = "camera",
        label_info: dict[str, Any] | None = None,
    ) -> None:
        """`label_info`: LabelInfo fields (io.messages.label_info_fields) written once per
        camera, with its first frame's header, on ``<base>/label_info``."""
        self.typestore = typestore
        self.label_info = label_info
        self._described: set[str] = set()  # cameras whose label_info is written
        self.mode = mode
        self.palette = palette
        self.frame_id = frame_id
        cameras = topic_list(topic)
        if not cameras:
            raise ValueError("a bag output needs a camera topic")
        # {camera topic: {"labels" | "color" | "stats": output topic}}
        self.outputs = {camera: rosbag.output_topics(camera) for camera in cameras}
        self.topics = self.outputs[cameras[0]]  # the first camera's (the only one, usually)
        regenerated = {name for names in self.outputs.values() for name in names.values()}
        self.skipped_topics: list[str] = []
        self.notes: list[str] = []  # input definitions that disagree with the known ones
        self._writer = rosbag.open_writer(path, storage)
        try:
            self._copied = self._copy_inputs(connections, regenerated)
            self._camera = None
            if not connections:
                self._camera = self._writer.add_connection(
                    cameras[0], rosbag.IMAGE_TYPE, typestore=typestore
                )
            types = {"labels": rosbag.IMAGE_TYPE, "color": rosbag.IMAGE_TYPE,
                     "stats": rosbag.STATS_TYPE, "label_info": rosbag.LABEL_INFO_TYPE}
            self._out = {
                camera: {kind: self._writer.add_connection(name, types[kind],
                                                           typestore=typestore)
                         for kind, name in names.items() if kind != "label_info" or label_info}
                for camera, names in self.outputs.items()
            }
            self._default = cameras[0]
        except BaseException:
            self._writer.close()
            raise

    def _copy_inputs(self, connections: list[Any], regenerated: set[str]) -> dict[int, Any]:
        """{input connection id: output connection} of the input topics copied through. An
        earlier replay's outputs are left out (this run regenerates them), and so is a topic
        whose definition describes another layout than the known one of its type (its messages
        would not read under the known definition); a damaged definition is only noted."""
        copied: dict[int, Any] = {}
        for connection in connections:
            if connection.topic in regenerated:
                self.skipped_topics.append(f"{connection.topic}: this run regenerates it")
                continue
            mismatch = rosbag.definition_mismatch(connection, self.typestore)
            if mismatch is not None and mismatch.readable:
                self.skipped_topics.append(str(mismatch))
                continue
            if mismatch is not None:
                self.notes.append(str(mismatch))
            try:
                copied[connection.id] = self._copy(connection)
            except Exception as error:  # rosbags: unknown type, bad definition
                self.skipped_topics.append(
                    f"{connection.topic}: type {connection.msgtype} cannot be copied "
                    f"({type(error).__name__}: {error})")
        return copied

    def _copy(self, connection: Any) -> Any:
        # Two input connections may differ only in fields rosbag2 does not keep apart
        # (same topic, type and QoS); they share one output connection.
        for previous in self._writer.connections:
            if (previous.topic, previous.msgtype) == (connection.topic, connection.msgtype) and (
                previous.ext.offered_qos_profiles
                == list(getattr(connection.ext, "offered_qos_profiles", []) or [])
            ):
                return previous
        return rosbag.copy_connection(self._writer, connection, self.typestore)

    def passthrough(self, item: Passthrough) -> None:
        out = self._copied.get(item.connection.id)
        if out is not None:
            self._writer.write(out, item.timestamp, item.rawdata)

    def write(self, frame: Frame, result: Any, elapsed_s: float) -> None:
        ts = self.typestore
        header = frame.header
        if header is None:
            header = rosbag.make_header(ts, frame.timestamp, self.frame_id)
        if self._camera is not None:
            msg = rosbag.image_message(ts, frame.rgb, "rgb8", header)
            self._writer.write(self._camera, frame.timestamp,
                               ts.serialize_cdr(msg, rosbag.IMAGE_TYPE))
        labels = rosbag.image_message(ts, result.labels, "mono8", header)
        color = rosbag.image_message(ts, render_labels(result.labels, self.palette)[0], "rgb8",
                                     header)
        stamp = frame.stamp_seconds
        # Offline there is no transport: "end to end" is decode + segment time of this frame
        # (of its batch, when several cameras run together).
        fields = stats_fields(result, mode=self.mode, stamp=stamp, now=stamp + elapsed_s)
        stats = ts.types[rosbag.STATS_TYPE](header=header, **fields)
        camera = frame.topic or self._default
        out = self._out[camera]
        messages = [("labels", labels), ("color", color), ("stats", stats)]
        if self.label_info is not None and camera not in self._described:
            messages.append(("label_info", self._label_info_message(header)))
            self._described.add(camera)
        for kind, msg in messages:
            connection = out[kind]
            self._writer.write(connection, frame.timestamp,
                               ts.serialize_cdr(msg, connection.msgtype))

    def _label_info_message(self, header: Any) -> Any:
        types = self.typestore.types
        return label_info_message(types[rosbag.LABEL_INFO_TYPE], types[rosbag.CLASS_INFO_TYPE],
                                  self.label_info or {}, header,
                                  colors=lambda values: np.asarray(values, dtype=np.uint8))

    def close(self) -> None:
        self._writer.close()


class OverlaySink:
    """Colourised label overlays as a video file or a folder of PNGs."""

    def __init__(
        self, path: str | Path, kind: str, *, fps: float, palette: str, alpha: float
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
        self.path = Path(path)
        self.kind = kind
        self.palette = palette
        self.alpha = alpha
        self.skipped_topics: list[str] = []
        self.notes: list[str] = []
        self._names: set[str] = set()
        self._video = video.VideoWriter(self.path, fps) if kind == "video" else None
        if kind == "png":
            self.path.mkdir(parents=True, exist_ok=True)

    def passthrough(self, item: Passthrough) -> None:
        """Other topics have no place in a video; dropped."""

    def render(self, frame: Frame, result: Any) -> np.ndarray:
        """(H, W, 3) uint8 RGB overlay of the frame's labels."""
        return render_labels(result.labels, self.palette, frame.rgb, self.alpha)[1]

    def _png_name(self, frame: Frame) -> str:
        # Image-folder input keeps its file names, so outputs pair up with inputs by name; a
        # bag's or a video's frames are numbered ("t=1700000000.000000)" is no file suffix).
        named = Path(frame.name).suffix.lower() in video.IMAGE_SUFFIXES
        stem = Path(frame.name).stem if named else f"frame_{frame.index:06d}"
        name = f"{stem}.png"
        if name in self._names:
            name = f"{stem}_{frame.index:06d}.png"
        self._names.add(name)
        return name

    def write(self, frame: Frame, result: Any, elapsed_s: float) -> None:
        image = self.render(frame, result)
        if self._video is not None:
            self._video.write(image)
        else:
            video.write_image_rgb(self.path / self._png_name(frame), image)

    def close(self) -> None:
        if self._video is not None:
            self._video.close()

