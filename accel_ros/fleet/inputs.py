"""Which bags a fleet run covers, and how to tell that one changed since it was processed."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

from ..io.bag_reader import STORAGE_SUFFIXES, is_bag_folder, storage_files

# A text file of inputs: one path or glob per line; blank lines and "#" comments are skipped.
LIST_SUFFIXES = (".txt", ".list")


def expand_inputs(specs: Iterable[str | Path]) -> list[Path]:
    """Bag folders, bare .mcap/.db3 files, globs and list files -> unique bag paths, in the
    order given (a glob's matches sorted). Raises FileNotFoundError naming the first spec
    that matches nothing, so a typo never silently shrinks a run."""
    bags: dict[Path, None] = {}
    for spec in specs:
        for path in _expand_one(str(spec)):
            bags.setdefault(path.resolve(), None)
    return list(bags)


def _expand_one(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        listed = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        base = path.parent
        return [bag for line in listed if line
                for bag in _expand_one(line if Path(line).is_absolute() else str(base / line))]
    matches = [Path(m) for m in sorted(glob.glob(str(path)))] if glob.has_magic(spec) else [path]
    bags = [m for m in matches if _is_bag(m)]
    if not bags:
        what = "matches no bag" if glob.has_magic(spec) else "is not a bag folder or storage file"
        raise FileNotFoundError(f"input {spec} {what}")
    return bags


def _is_bag(path: Path) -> bool:
    if path.is_dir():
        return is_bag_folder(path)
    return path.is_file() and path.suffix.lower() in STORAGE_SUFFIXES


def fingerprint(path: Path) -> dict[str, list]:
    """Name, size and modification time of each of a bag's storage files (and metadata.yaml):
    what a rerun compares to decide whether a finished bag must be processed again."""
    files = storage_files(path) if path.is_dir() else [path]
    if path.is_dir() and (path / "metadata.yaml").is_file():
        files = [*files, path / "metadata.yaml"]
    return {"files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]}
