"""`make-bag`'s library side: a synthetic driving clip written as a camera rosbag2, one camera
or a synchronised rig of several."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..io import rosbag
from .sources import DEFAULT_TOPIC, topic_list


def make_bag(
    out: str | Path,
    *,
    frames: int = 30,
    height: int = 256,
    width: int = 512,
    encoding: str = "rgb8",
    storage: str | None = None,
    topic: str | Sequence[str] = DEFAULT_TOPIC,
    frame_id: str = "camera",
    fps: float = 30.0,
    seed: int = 0,
    quiet: bool = False,
) -> tuple[str, int]:
    """Write a synthetic driving clip as a camera bag. `out` names it as rosbag2 does (see
    rosbag.bag_output: ``cam.db3`` is the folder ``cam/`` with ``cam_0.db3``). For "jpeg"/"png"
    the topic is a CompressedImage on ``<topic>/compressed`` (image_transport's name).

    Several topics make a synchronised rig: camera i films its own street (seed + i), with
    frame_id ``<frame_id>_<i>``, and every camera's frame i has the same stamp. Returns
    (topic, count of messages): the topics are comma-separated when there are several."""
    from ..data.synthetic import SyntheticDrivingScene, scene_config

    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    topics = topic_list(topic) or [DEFAULT_TOPIC]
    folder, storage = rosbag.bag_output(out, storage)
    if folder.exists():
        raise ValueError(f"output {folder} exists already; a rosbag2 output needs a new path")
    if encoding in rosbag.COMPRESSED_FORMATS:
        topics = [t if t.endswith("/compressed") else f"{t}/compressed" for t in topics]
    if len(set(topics)) != len(topics):
        raise ValueError(f"camera topics repeat: {', '.join(topics)}")
    many = len(topics) > 1
    cameras = {
        name: (frame.image for frame in SyntheticDrivingScene(
            scene_config(height=height, width=width, seed=seed + index, fps=fps),
            num_frames=frames))
        for index, name in enumerate(topics)
    }
    frame_ids = {name: f"{frame_id}_{index}" if many else frame_id
                 for index, name in enumerate(topics)}
    # Rendered lazily, one frame at a time, so the progress bar tracks the real work.
    bar = tqdm(total=frames * len(topics), desc="make-bag", unit="frame", disable=quiet,
               file=sys.stderr)
    with bar:
        counts = rosbag.write_cameras_bag(
            out, {name: _counted(images, bar) for name, images in cameras.items()},
            encoding=encoding, frame_ids=frame_ids, fps=fps, storage=storage,
        )
    return ", ".join(topics), sum(counts.values())


def _counted(images: Iterator[np.ndarray], bar: tqdm) -> Iterator[np.ndarray]:
    for image in images:
        yield image
        bar.update(1)

