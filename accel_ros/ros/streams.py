"""The node's input streams: one per camera topic, each named after its topic, with its own
output topics (`~/<stream>/labels`, ...) and diagnostics status."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Where the node's outputs hang: its private namespace (`~/labels`); each stream's below it
# when there are several (`~/<stream>/labels`).
NODE_PREFIX = "~/"
# One token of a ROS name: what `~/<stream>/labels` may contain between slashes.
_NAME_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def stream_name(topic: str) -> str:
    """The stream a camera topic feeds, which names its outputs (`~/<stream>/labels`).

    A leading "/" or "~/" is dropped, then the last component when there is more than one:
    "front/image" -> "front", "/cams/left/image_raw" -> "cams/left", "rear" -> "rear".
    """
    name = topic.strip()
    for prefix in ("~/", "/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    parts = name.split("/")
    return "/".join(parts[:-1] if len(parts) > 1 else parts)


def stream_names(topics: Sequence[str]) -> tuple[str, ...]:
    """Stream names of `image_topics`, in order. Raises ValueError naming the topic for an
    empty entry, a name that cannot be part of a ROS topic, or two topics giving one stream
    (their outputs would be mixed on one set of topics)."""
    names: dict[str, str] = {}
    for topic in topics:
        if not isinstance(topic, str) or not topic.strip():
            raise ValueError(f"image_topics: empty topic name in {list(topics)}")
        name = stream_name(topic)
        tokens = name.split("/")
        if not all(_NAME_TOKEN.fullmatch(t) and "__" not in t for t in tokens):
            raise ValueError(
                f"image_topics: {topic!r} gives the stream name {name!r}, which is not a valid "
                "ROS name (letters, digits and _; no component may start with a digit)"
            )
        if name in names:
            raise ValueError(
                f"image_topics: {names[name]!r} and {topic!r} both give the stream name "
                f"{name!r} (the topic without its last component); rename or remap one"
            )
        names[name] = topic
    return tuple(names)


def log_prefix(stream: str | None) -> str:
    """What a log line about `stream` starts with: "stream front: ", or nothing for None (a
    node with one camera, whose lines need no name)."""
    return f"stream {stream}: " if stream else ""


@dataclass(frozen=True)
class StreamPlan:
    """One input stream of the node and where its outputs go."""

    name: str  # the segmenter's stream (its keyframe cache)
    topic: str  # input topic as configured; relative names resolve in the node's namespace
    outputs: str  # prefix of the output topics: "~/" (one camera) or "~/<name>/"
    status: str  # diagnostics status name, after "<node name>: "


def plan_streams(options: Any, default_stream: str) -> tuple[StreamPlan, ...]:
    """The node's streams (`options` a NodeOptions): one on `image_topic` with outputs
    `~/labels`, ... when `image_topics` is empty (the segmenter's `default_stream`), otherwise
    one per topic with outputs `~/<stream>/labels`, ... (names from `stream_names`)."""
    if not options.image_topics:
        return (StreamPlan(default_stream, options.image_topic, NODE_PREFIX, "segmentation"),)
    return tuple(
        StreamPlan(name, topic, f"{NODE_PREFIX}{name}/", f"{name} segmentation")
        for name, topic in zip(stream_names(options.image_topics), options.image_topics,
                               strict=True)
    )
