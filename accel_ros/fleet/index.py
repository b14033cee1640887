"""The scene index: one Parquet row per segmented frame, for pandas, DuckDB or Ray Data.

Rows are read back from a finished output bag (its ``<camera>/labels`` and ``<camera>/stats``
messages share the input frame's header), so the index holds exactly what the bags hold.
Each bag's rows go to a part file of their own; the run's ``index.parquet`` is the union of the
parts of the bags the manifest records as done, so a retried bag never adds its rows twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..io import bridge, rosbag
from ..io.bag_reader import open_bag
from ..io.messages import STATS_TYPE_NAME

INDEX_NAME = "index.parquet"
# Columns before the per-class pixel fractions ("px_<class>").
BASE_COLUMNS = ("bag", "output", "topic", "stamp_ns", "frame_index", "is_keyframe",
                "mean_confidence", "latency_ms")


def fraction_column(name: str) -> str:
    """Column of a class's pixel fraction: "px_pedestrian", "px_traffic_light"."""
    return "px_" + name.replace(" ", "_")


def bag_rows(path: Path, bag: str, output: str, names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Index rows of one output bag of `segment` at `path`: one per labels message, joined
    with the stats message of the same camera and stamp. `bag` is the input bag and `output`
    the output's name in the run folder; `names` are the model's classes, in id order."""
    num_classes = len(names)
    typestore = rosbag.make_typestore()
    labels: dict[tuple[str, int], np.ndarray] = {}
    stats: dict[tuple[str, int], Any] = {}
    for connection, _, raw in open_bag(path).messages():
        topic, _, kind = connection.topic.rpartition("/")
        if kind == "labels":
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            counts = np.bincount(bridge.image_to_array(msg).ravel(), minlength=num_classes)
            labels[topic, rosbag.header_stamp_ns(msg.header)] = counts[:num_classes] / max(
                msg.height * msg.width, 1)
        elif kind == "stats" and connection.msgtype == STATS_TYPE_NAME:
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            stats[topic, rosbag.header_stamp_ns(msg.header)] = msg
    rows = []
    for (topic, stamp), fractions in labels.items():
        stat = stats.get((topic, stamp))
        row = {
            "bag": bag, "output": output, "topic": topic, "stamp_ns": stamp,
            "frame_index": int(stat.frame_index) if stat else -1,
            "is_keyframe": bool(stat.is_keyframe) if stat else False,
            "mean_confidence": float(stat.confidence) if stat else float("nan"),
            "latency_ms": float(stat.total_ms) if stat else float("nan"),
        }
        row.update({fraction_column(n): float(f) for n, f in zip(names, fractions, strict=True)})
        rows.append(row)
    return rows


def write_part(rows: Sequence[dict[str, Any]], path: Path, names: tuple[str, ...]) -> Path:
    """One bag's rows as a Parquet part file, written under a temporary name and renamed, so
    a part is either complete or absent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = [*BASE_COLUMNS, *(fraction_column(n) for n in names)]
    table = pa.Table.from_pylist(list(rows), schema=_schema(columns)) if rows else \
        _schema(columns).empty_table()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def merge_parts(parts: Iterable[Path], path: Path) -> int:
    """The run's index: the union of `parts` (each bag's rows once), written atomically.
    Returns the number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(part) for part in parts]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return table.num_rows


def _schema(columns: Sequence[str]) -> Any:
    import pyarrow as pa

    types = {"bag": pa.string(), "output": pa.string(), "topic": pa.string(),
             "stamp_ns": pa.int64(), "frame_index": pa.int64(), "is_keyframe": pa.bool_()}
    return pa.schema([(name, types.get(name, pa.float32())) for name in columns])
