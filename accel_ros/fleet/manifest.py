"""The run's manifest: which input bags are done (with what they were and which model made
them) and which failed and why. Only the driver writes it, after each bag, atomically, so an
interrupted run can be resumed and a rerun skips exactly the unchanged, finished bags."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "accel_ros.fleet/1"


@dataclass
class BagEntry:
    """One input bag's state in the run folder."""

    input: str  # resolved input path: the key
    output: str  # output bag folder name inside the run folder
    status: str = "pending"  # pending | done | failed
    fingerprint: dict[str, list] = field(default_factory=dict)  # inputs.fingerprint
    model: str = ""  # LoadedModel.fingerprint of the model that produced the output
    frames: int = 0
    skipped_frames: int = 0
    seconds: float = 0.0
    attempts: int = 0
    reason: str = ""  # why it failed

    def is_current(self, fingerprint: dict[str, list], model: str, folder: Path) -> bool:
        """Done with this very input and model, and its output still there."""
        return (self.status == "done" and self.fingerprint == fingerprint
                and self.model == model and (folder / self.output).is_dir())


class Manifest:
    """{input path: BagEntry} stored as ``<run folder>/manifest.json``."""

    def __init__(self, folder: Path, entries: dict[str, BagEntry] | None = None) -> None:
        self.folder = folder
        self.entries = entries or {}

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return cls(folder)
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a fleet manifest (format {data.get('format')!r})")
        return cls(folder, {e["input"]: BagEntry(**e) for e in data.get("bags", [])})

    def save(self) -> None:
        path = self.folder / MANIFEST_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        data: dict[str, Any] = {"format": FORMAT,
                                "bags": [asdict(e) for e in self.entries.values()]}
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    def entry(self, input_path: Path) -> BagEntry:
        """The input's entry, created with an output name unique in the run folder."""
        key = str(input_path)
        if key not in self.entries:
            taken = {e.output for e in self.entries.values()}
            self.entries[key] = BagEntry(key, _unique_name(input_path, taken))
        return self.entries[key]


def _unique_name(input_path: Path, taken: set[str]) -> str:
    """``<input stem>_seg``, numbered when two inputs share a stem (cam/a.mcap, cam2/a.mcap)."""
    stem = re.sub(r"[^\w.-]", "_", input_path.stem if input_path.is_file() else input_path.name)
    name, number = f"{stem}_seg", 1
    while name in taken:
        number += 1
        name = f"{stem}_seg{number}"
    return name
