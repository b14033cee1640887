"""ONNX export of an `AccelNet`'s graphs (`graphs.py`), their manifest, and the cache that
keys them by the weights' hash and the input size.

A folder of graphs holds one `<graph>.onnx` per graph and `manifest.json`: input size, batch,
classes, palette, opset, the hash of the weights, the package versions that made it, and each
graph's inputs, output, shapes, size and sha256. Every graph is checked when it is written:
`onnx.checker`, then a run in a runtime (ONNX Runtime by default) against torch on the same
inputs.

The cache (`cached_graphs`) serves the runtime backends: a folder per weights hash, input size
and batch under `cache_root()`; a manifest that disagrees with what is asked (opset, warp rule,
versions) or a graph file whose bytes are not the ones the manifest pins makes the folder
stale, and a stale folder is exported again, never used. A folder that cannot be written is
one `GraphWriteError` naming it and the remedy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..config import OUT_OF_FRAME
from ..model.accel import AccelNet
from .graphs import GraphSpec, graph_specs
from .runtimes import open_session, require

FORMAT = "accel_ros-graphs/1"
MANIFEST = "manifest.json"
# GridSample is in ONNX from opset 16; TensorRT's parser reads opset 20's renamed GridSample
# modes as nearest sampling without a word, so graphs stay within 16-19.
OPSETS = (16, 17, 18, 19)
OPSET = 17
# What the graphs of a folder compute in: exported fp32 graphs, or those graphs with their image
# networks quantized to int8 (deploy/quantize.py) for a calibration set.
GRAPH_PRECISIONS = ("fp32", "int8")
CACHE_ENV = "ACCEL_ROS_CACHE"
# Export check, per graph: max |runtime - torch| <= CHECK_TOLERANCE * max(1, max |torch|).
# fp32 graphs differ from torch by summation order only: ~1e-5 relative is typical.
CHECK_TOLERANCE = 1e-3
# What to do when the graphs cannot be written: in the cache (cached_graphs, `accel-ros
# export` without --output), elsewhere (a folder the caller chose).
CACHE_REMEDY = f"set {CACHE_ENV} to a writable folder to cache them elsewhere"
FOLDER_REMEDY = "choose a writable folder"
# Graph files are hashed in blocks of this size: memory stays flat for graphs of any size.
HASH_BLOCK = 1 << 20


class GraphWriteError(OSError):
    """The graphs being exported could not be written (a file where a folder must go, no
    permission, a full disk); the message names the folder and what to do."""


def cache_root() -> Path:
    """Where exported graphs are cached: $ACCEL_ROS_CACHE, else $XDG_CACHE_HOME/accel_ros/graphs,
    else ~/.cache/accel_ros/graphs."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "accel_ros" / "graphs"


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes: 30-50 ms for the shipped model's 45 MB of graphs (page cache
    warm, 2 busy cores of an Intel Xeon with SHA-NI), paid on every start that uses them."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def weights_hash(model: AccelNet) -> str:
    """sha256 over the model's config and every state-dict tensor (name, dtype, shape, bytes):
    the same weights give the same hash wherever their checkpoint lies, and random weights
    never collide with trained ones. ~0.2 s for the shipped model."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(f"{name}:{array.dtype}:{tuple(array.shape)}".encode())
        digest.update(memoryview(array.reshape(-1).view(np.uint8)))
    return digest.hexdigest()


@dataclass(frozen=True)
class ExportKey:
    """Everything an exported folder must agree with to be used. `batch` 0 = a dynamic batch
    axis (TensorRT then needs an optimisation profile)."""

    weights_sha256: str
    input_size: tuple[int, int]
    batch: int = 1
    opset: int = OPSET
    out_of_frame: str = "border"
    versions: tuple[tuple[str, str], ...] = ()
    precision: str = "fp32"  # GRAPH_PRECISIONS
    calibration: str = ""  # int8: the sha256 of the calibration set (quantize.CalibrationSet)

    def __post_init__(self) -> None:
        if self.opset not in OPSETS:
            raise ValueError(f"opset must be one of {OPSETS} (TensorRT reads 16-19), got "
                             f"{self.opset}")
        OUT_OF_FRAME.check(self.out_of_frame)
        if self.batch < 0:
            raise ValueError(f"batch must be >= 1 (0: dynamic), got {self.batch}")
        if len(self.input_size) != 2 or min(self.input_size) < 16:
            raise ValueError(f"input size must be (height, width) >= 16, got {self.input_size}")
        if self.precision not in GRAPH_PRECISIONS:
            raise ValueError(f"graph precision {self.precision!r} is not one of {GRAPH_PRECISIONS}")
        if (self.precision == "int8") != bool(self.calibration):
            raise ValueError("int8 graphs, and only they, are keyed by a calibration set")

    @classmethod
    def for_model(cls, model: AccelNet, input_size: tuple[int, int], **fields: Any) -> ExportKey:
        """The key of `model`'s graphs at `input_size` with this installation's versions."""
        versions = (("accel_ros", __version__), ("torch", torch.__version__),
                    ("onnx", _version_of("onnx")))
        size = (int(input_size[0]), int(input_size[1]))
        return cls(weights_hash(model), size, versions=versions, **fields)

    @property
    def folder_name(self) -> str:
        batch = self.batch or "N"
        name = f"{self.weights_sha256[:16]}-{self.input_size[0]}x{self.input_size[1]}-b{batch}"
        if self.precision == "int8":
            name += f"-int8-{self.calibration[:12]}"
        return name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        data["versions"] = dict(self.versions)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportKey:
        data = dict(data)
        data["input_size"] = tuple(data["input_size"])
        data["versions"] = tuple(data.get("versions", {}).items())  # JSON keeps the order
        return cls(**data)


def _version_of(module: str) -> str:
    return str(require(module, "ONNX export").__version__)


@dataclass
class Manifest:
    """What a folder of graphs holds; `graphs` maps a graph name to its file, inputs (name ->
    shape, 0 = the dynamic batch axis), output name and shape, size in bytes, sha256 and the
    export check's max error."""

    key: ExportKey
    num_classes: int
    class_names: list[str]
    palette: str
    model_config: dict[str, Any]
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)
    checked_with: str = ""
    export_seconds: float = 0.0
    checkpoint: str | None = None
    format: str = FORMAT
    # int8 folders: where the calibration frames came from, how many, and their names.
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["key"] = self.key.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["key"] = ExportKey.from_dict(data["key"])
        return cls(**data)


def read_manifest(folder: Path) -> Manifest | None:
    """The manifest of `folder`, or None when there is none or it is unreadable."""
    try:
        data = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            return None
        return Manifest.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def stale_reason(folder: Path, key: ExportKey) -> str | None:
    """Why the graphs in `folder` must not serve `key` (None: they may). Every graph file is
    hashed: the check runs whenever a folder is about to be used."""
    manifest = read_manifest(folder)
    if manifest is None:
        return "no cache yet" if not Path(folder).exists() else "no readable manifest"
    if manifest.key != key:
        old, new = manifest.key.to_dict(), key.to_dict()
        changed = [f"{name} {old[name]} -> {new[name]}" for name in new if old[name] != new[name]]
        return "stale cache: " + "; ".join(changed)
    for graph in manifest.graphs.values():
        reason = _changed_graph(Path(folder), graph)
        if reason is not None:
            return f"stale cache: {reason}"
    return None


def _changed_graph(folder: Path, graph: dict[str, Any]) -> str | None:
    """Why one graph file is not the one its manifest entry pins (None: it is). The size alone
    misses bytes overwritten in place, which still parse and run with wrong weights."""
    if "sha256" not in graph:  # a manifest from before graphs were pinned
        return f"the manifest has no sha256 of {graph['file']} (written by an older accel_ros)"
    # An OpenVINO IR (int8 graphs) keeps its weights in a .bin beside the .xml: both are pinned.
    for part in (graph, graph.get("weights")):
        if part is None:
            continue
        name, path = part["file"], folder / part["file"]
        try:
            if path.stat().st_size != part["bytes"] or file_sha256(path) != part["sha256"]:
                return f"{name} changed on disk, its sha256 is not the manifest's"
        except OSError as error:  # missing, unreadable, or removed by a concurrent export
            return f"{name} cannot be read: {error.strerror or error}"
    return None


def file_entry(path: Path) -> dict[str, Any]:
    """A file's name, size and sha256, as a manifest pins it."""
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def export_graphs(
    model: AccelNet,
    folder: str | Path,
    key: ExportKey,
    *,
    check_runtime: str = "onnxruntime",
    checkpoint: str | None = None,
    replace: bool = False,
    remedy: str = FOLDER_REMEDY,
) -> Manifest:
    """Export every graph of `model` for `key` into `folder`, check each (onnx.checker, then a
    run in `check_runtime` against torch) and write the manifest. The folder is replaced as a
    whole, atomically, unless it serves `key` already by the time the export is done (another
    process exported it meanwhile) and `replace` is False. Raises ValueError naming a graph
    that fails its check, GraphWriteError (ending in `remedy`) where `folder` is not writable."""
    return write_graphs(folder, key,
                        lambda staging: _export_into(model, staging, key, check_runtime,
                                                     checkpoint),
                        replace=replace, remedy=remedy)


def write_graphs(folder: str | Path, key: ExportKey, fill: Callable[[Path], Manifest], *,
                 replace: bool = False, remedy: str = FOLDER_REMEDY) -> Manifest:
    """Have `fill` write a folder of graphs and its manifest for `key` into an empty staging
    folder, then put it at `folder` as a whole (see `export_graphs`, which it serves, like
    `quantize.quantized_graphs`)."""
    folder = Path(folder)
    with _writing_graphs(folder, remedy):
        staging = _staging_folder(folder)
        try:
            manifest = fill(staging)
            _replace_folder(staging, folder, key, keep_fresh=not replace)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """`manifest.json` of a folder of graphs."""
    (folder / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n",
                                   encoding="utf-8")


@contextlib.contextmanager
def _writing_graphs(folder: Path, remedy: str) -> Iterator[None]:
    """Turn an OSError while the graphs are written into one line: what was being done, where,
    what stopped it and `remedy` (the bare errno text names a staging file, not the cause)."""
    try:
        yield
    except GraphWriteError:
        raise
    except OSError as error:
        raise GraphWriteError(f"exporting the ONNX graphs to {folder} failed: "
                              f"{_write_problem(error, folder)}; {remedy}") from error


def _write_problem(error: OSError, folder: Path) -> str:
    """What stopped a write: a file where one of `folder`'s folders must go, else the OS's
    reason and the path it names."""
    for path in [*reversed(folder.parents), folder]:
        if path.exists() and not path.is_dir():
            return f"{path} is a file, not a folder"
    where = f" ({error.filename})" if error.filename else ""
    return f"{error.strerror or error}{where}"


def _staging_folder(folder: Path) -> Path:
    """An empty folder beside `folder` to export into; made first, so that a place that cannot
    be written fails before the seconds of export."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def _export_into(model: AccelNet, staging: Path, key: ExportKey, check_runtime: str,
                 checkpoint: str | None) -> Manifest:
    """Write and check every graph of `model` for `key` in `staging`, then its manifest."""
    onnx = require("onnx", "ONNX export")
    start = time.perf_counter()
    graphs = {}
    for spec in graph_specs(model, key.input_size, max(key.batch, 1), key.out_of_frame):
        path = staging / f"{spec.name}.onnx"
        export_graph(spec, path, key.opset, dynamic_batch=key.batch == 0)
        onnx.checker.check_model(str(path), full_check=True)
        error = check_graph(spec, path, check_runtime)
        graphs[spec.name] = _graph_entry(spec, path, key, error)
    config = model.config
    manifest = Manifest(
        key, config.num_classes, list(config.class_names), config.palette, config.to_dict(),
        graphs, check_runtime, round(time.perf_counter() - start, 2), checkpoint,
    )
    write_manifest(staging, manifest)
    return manifest


def export_graph(spec: GraphSpec, path: Path, opset: int = OPSET, dynamic_batch: bool = False
                 ) -> None:
    """Write one graph. torch's TorchScript-based exporter (dynamo=False): it writes opset
    16-19 directly and needs nothing beyond torch; the dynamo exporter needs onnxscript and
    converts down from opset 18."""
    names = list(spec.inputs)
    dynamic = {name: {0: "batch"} for name in [*names, spec.output]} if dynamic_batch else None
    with warnings.catch_warnings():
        # The deprecation notice of dynamo=False, and tracer warnings on the shape checks that
        # tracing turns into constants (the shapes are static by design).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module, tuple(spec.inputs.values()), str(path), opset_version=opset,
            dynamo=False, input_names=names, output_names=[spec.output],
            dynamic_axes=dynamic, do_constant_folding=True,
        )


def check_graph(spec: GraphSpec, path: Path, runtime: str) -> float:
    """Run the graph file in `runtime` on the spec's example inputs; returns the max absolute
    difference to torch, raising ValueError past CHECK_TOLERANCE (relative to the outputs'
    scale)."""
    session = open_session(runtime, path, threads=torch.get_num_threads())
    arrays = [tensor.numpy() for tensor in spec.inputs.values()]
    expected = spec.expected.numpy()
    got = session(*arrays)
    if got.shape != expected.shape:
        raise ValueError(f"graph {spec.name}: {runtime} gives shape {got.shape}, torch "
                         f"{expected.shape}")
    error = float(np.abs(got - expected).max())
    limit = CHECK_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if not error <= limit:
        raise ValueError(f"graph {spec.name}: {runtime} differs from torch by {error:.3g} "
                         f"(> {limit:.3g}); not used")
    return error


def _graph_entry(spec: GraphSpec, path: Path, key: ExportKey, error: float) -> dict[str, Any]:
    def shape(tensor: torch.Tensor) -> list[int]:
        return [0 if key.batch == 0 else int(tensor.shape[0]), *map(int, tensor.shape[1:])]

    return {
        "inputs": {name: shape(tensor) for name, tensor in spec.inputs.items()},
        "output": {spec.output: shape(spec.expected)},
        **file_entry(path),
        "check_max_error": error,
    }


def _replace_folder(staging: Path, folder: Path, key: ExportKey, keep_fresh: bool = True
                    ) -> None:
    """Move the finished `staging` folder to `folder`. A stale `folder` is dropped; one that
    serves `key` already (another process finished the same export meanwhile, and may be
    reading it) is kept and `staging` discarded, unless `keep_fresh` is False."""
    if folder.exists():
        if keep_fresh and stale_reason(folder, key) is None:
            return
        old = folder.parent / f".{folder.name}.{os.getpid()}.old"
        with contextlib.suppress(FileNotFoundError):
            folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        staging.rename(folder)
    except OSError:
        if stale_reason(folder, key) is not None:  # not another process's finished export
            raise


@dataclass
class ExportedGraphs:
    """A folder of graphs that serves a key, with how it was obtained."""

    folder: Path
    manifest: Manifest
    exported: bool  # False: taken from the cache as it was
    seconds: float  # spent exporting (0.0 from the cache)
    reason: str | None = None  # why it was exported


@dataclass
class CacheState:
    """Where the graphs of a model go and whether the ones there may serve it."""

    key: ExportKey
    folder: Path
    reason: str | None  # why `folder` must be exported (again); None: it serves `key`


def cache_state(
    model: AccelNet,
    input_size: tuple[int, int],
    *,
    batch: int = 1,
    opset: int = OPSET,
    out_of_frame: str = "border",
    folder: str | Path | None = None,
    root: str | Path | None = None,
) -> CacheState:
    """The export key of `model` at `input_size`, its folder (`folder`, default the key's
    own under `root`, default `cache_root()`) and `stale_reason` of what that folder holds:
    the one freshness check of the backends' cache and of `accel-ros export`."""
    key = ExportKey.for_model(model, input_size, batch=batch, opset=opset,
                              out_of_frame=out_of_frame)
    folder = Path(folder) if folder is not None else Path(root or cache_root()) / key.folder_name
    return CacheState(key, folder, stale_reason(folder, key))


def log_to_stderr(line: str) -> None:
    """The cache's default `log`: one line on stderr, flushed (the node's console shows it
    before the first frame)."""
    print(line, file=sys.stderr, flush=True)


def cached_graphs(
    model: AccelNet,
    input_size: tuple[int, int],
    *,
    batch: int = 1,
    opset: int = OPSET,
    out_of_frame: str = "border",
    root: str | Path | None = None,
    check_runtime: str = "onnxruntime",
    log: Callable[[str], None] | None = log_to_stderr,
) -> ExportedGraphs:
    """The graphs of `model` at `input_size` from the cache under `root` (default
    `cache_root()`), exported first when missing or stale (a graph file whose sha256 is not
    the manifest's included); an export says so in one line on `log` with its reason (naming
    the file) and duration. Raises GraphWriteError where the cache cannot be written."""
    state = cache_state(model, input_size, batch=batch, opset=opset, out_of_frame=out_of_frame,
                        root=root)
    key, folder, reason = state.key, state.folder, state.reason
    if reason is None:
        manifest = read_manifest(folder)
        assert manifest is not None
        return ExportedGraphs(folder, manifest, exported=False, seconds=0.0)
    start = time.perf_counter()
    remedy = CACHE_REMEDY if root is None else FOLDER_REMEDY
    manifest = export_graphs(model, folder, key, check_runtime=check_runtime, remedy=remedy)
    seconds = time.perf_counter() - start
    if log is not None:
        log(f"accel_ros: exported {len(manifest.graphs)} ONNX graphs for "
            f"{key.input_size[0]}x{key.input_size[1]} in {seconds:.1f} s ({reason}) to {folder}")
    return ExportedGraphs(folder, manifest, exported=True, seconds=seconds, reason=reason)
