"""The run's manifest: which input bags are done (with what they were and which model made
them) and which failed and why. Only the driver writes it, after each bag, atomically, so an
interrupted run can be resumed and a rerun skips exactly the unchanged, finished bags."""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
FORMAT = "accel_ros.fleet/1"
# What `is_output_name` accepts and `_unique_name` makes.
OUTPUT_NAME = re.compile(r"[\w-][\w.-]*")


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

    def __init__(self, folder: Path, entries: dict[str, BagEntry] | None = None,
                 notes: list[str] | None = None) -> None:
        self.folder = folder
        self.entries = entries or {}
        self.notes = notes or []  # one line per problem found when it was read

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        """The manifest in `folder`, read without trusting it (a name in it becomes a path the
        run writes to): an entry whose output is not a folder name inside `folder`, or is
        another entry's, is left out, so its bag starts afresh; a file that is not a
        manifest's JSON is set aside and every bag starts afresh. Each adds one line to
        `notes`. Raises ValueError for JSON of another format: it may be someone else's."""
        path = folder / MANIFEST_NAME
        if not path.is_file():
            return cls(folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return cls(folder, notes=[_set_aside(path, error)])
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found != FORMAT:
            raise ValueError(f"{path} is not a fleet manifest (format {found!r}): move it "
                             "away or pass another --out")
        bags = data.get("bags", [])
        if not isinstance(bags, list):
            return cls(folder, notes=[_set_aside(path, ValueError("its bags are not a list"))])
        manifest = cls(folder)
        for number, item in enumerate(bags, 1):
            problem = manifest._add(item)
            if problem:
                manifest.notes.append(f"{path}: bag entry {number} {problem}; ignored, so "
                                      "that bag starts afresh")
        return manifest

    def _add(self, item: Any) -> str | None:
        """Add one entry as read from the file; returns what is wrong with it instead, if
        anything."""
        try:
            entry = BagEntry(**item)
        except TypeError:
            return f"is not a bag entry ({str(item)[:80]})"
        if not isinstance(entry.input, str):
            return f"has input {entry.input!r}, not a path"
        if not is_output_name(entry.output):
            return (f"names output {entry.output!r}, not a folder name inside "
                    f"{self.folder}")
        if entry.output in {e.output for e in self.entries.values()}:
            return f"names output {entry.output!r}, which another entry holds"
        self.entries[entry.input] = entry
        return None

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


def is_output_name(name: object) -> bool:
    """One folder name inside the run folder: word characters, "." and "-", no separator, and
    no leading "." (hidden names are the run's own: .tmp, .index, .fleet.lock; "." and "..")."""
    return isinstance(name, str) and OUTPUT_NAME.fullmatch(name) is not None


def _set_aside(path: Path, error: ValueError) -> str:
    """Rename an unreadable manifest to ``manifest.json.corrupt-<time>`` (kept for a look, out
    of the way of the rebuilt one); returns the line that says so."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept, number = path.with_name(f"{path.name}.corrupt-{stamp}"), 1
    while kept.exists():
        number += 1
        kept = path.with_name(f"{path.name}.corrupt-{stamp}-{number}")
    os.replace(path, kept)
    reason = " ".join(str(error).split())[:120]
    return (f"{path} is not a readable fleet manifest ({reason}); kept as {kept.name}, every "
            "bag is segmented again (outputs already there are replaced)")


def _unique_name(input_path: Path, taken: set[str]) -> str:
    """``<input stem>_seg``, numbered when two inputs share a stem (cam/a.mcap, cam2/a.mcap);
    characters `is_output_name` refuses become "_"."""
    stem = re.sub(r"^\.|[^\w.-]", "_",
                  input_path.stem if input_path.is_file() else input_path.name)
    name, number = f"{stem}_seg", 1
    while name in taken:
        number += 1
        name = f"{stem}_seg{number}"
    return name
