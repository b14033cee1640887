"""INT8 graphs: the exported image networks quantized by NNCF's post-training quantization for
OpenVINO, calibrated on the user's frames, and cached beside the fp32 graphs.

`precision: int8` (backend openvino) runs `reference_features` and `update_features` (the
backbones and N_feat: nearly all the multiply-adds) as int8 OpenVINO IR; N_task, the fusion
and the warp stay the fp32 graphs (1x1 convolutions, well under a millisecond). Quantizing
needs calibration frames, which never ship with the package (CamVid's licence does not allow
redistributing its frames): they come from a folder the user names, at export time
(`accel-ros export --precision int8 --calibration DIR`) or at the first start
(`$ACCEL_ROS_CALIBRATION`, else `../shared/camvid`). Nothing is downloaded.

The int8 folder's key is the fp32 graphs' key plus precision int8, the sha256 of the
calibration set (its frames' names and bytes) and NNCF's settings (`quantization_settings`), so
other frames, other weights or other settings quantize again; its manifest pins every file (the
IR's .xml and .bin) by sha256 like the fp32 graphs.

NNCF's overflow fix is off where the CPU has VNNI or AMX. The fix gives the first convolution
after each image input 7-bit weights: CPUs without VNNI multiply u8 activations by s8 weights
in pairs summed in int16, which full-range weights over a full-range image can saturate; VNNI
and AMX sum into int32, nothing to fix. On the shipped model the reference's 7-bit stem cost a
point of the labels: Accel k=5 on the first 40 frames of 0001TP stamped 1 s apart (`accel-ros
bench --threads 1 --fps 1`, Xeon with AMX, one core) agreed with torch fp32 on 96.42% of the
pixels with the fix, 97.71% without (CamVid val at 30 fps: 99.37%, 99.48%), at the same speed
(0.34-0.38x torch's time, both). Tried there too, none better: preset MIXED 96.45%,
fast_bias_correction=False 95.60%, 128 calibration frames 96.40%; without the fix, the stem kept
fp32 97.73% (the fix on moves to the next convolution: 96.78%), all 305 frames 97.71%
(docs/deploy.md#int8).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.camvid import HELD_OUT_SEQUENCES, detect_layout, list_camvid
from ..machine import CpuInfo, cpu_info
from ..model.accel import AccelNet
from .export import (
    CACHE_REMEDY,
    FOLDER_REMEDY,
    ExportedGraphs,
    ExportKey,
    Manifest,
    cache_root,
    cached_graphs,
    file_entry,
    file_sha256,
    log_to_stderr,
    read_manifest,
    stale_reason,
    write_graphs,
    write_manifest,
)
from .runtimes import openvino_core, require

# The graphs that take the frame: quantized. The others are small and stay fp32.
QUANTIZED_GRAPHS = ("reference_features", "update_features")
# Frames the calibration uses, spread evenly over the set (NNCF's statistics). 64 CamVid frames
# took about 2 min for the shipped model on 2 busy Xeon cores.
CALIBRATION_FRAMES = 64
CALIBRATION_ENV = "ACCEL_ROS_CALIBRATION"
# Where the run-time calibration looks when $ACCEL_ROS_CALIBRATION is unset: the data root the
# docs use (a CamVid root).
DEFAULT_CALIBRATION = Path("../shared/camvid")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# NNCF's overflow fix (OverflowFix values) by whether the CPU's int8 dot products sum into int32
# (the module docstring says why and what it cost).
OVERFLOW_FIX_WITH_VNNI = "disable"
OVERFLOW_FIX_WITHOUT_VNNI = "first_layer_only"
# How frames become graph inputs; part of the calibration set's identity.
PREPARATION = "rgb/255, area resize to the input size"


class CalibrationMissingError(FileNotFoundError, ValueError):
    """int8 was asked where no int8 graphs are cached and no calibration frames are found
    (a ValueError too: the CLI reports it in one line)."""


@dataclass(frozen=True)
class CalibrationSet:
    """The frames that calibrate int8 graphs: image files, their source, and `identity` (sha256
    over the frames' names and bytes, the count and the preparation)."""

    source: Path
    paths: tuple[Path, ...]
    identity: str

    def describe(self) -> str:
        return f"{len(self.paths)} frames of {self.source}"

    def to_dict(self) -> dict[str, Any]:
        return {"source": str(self.source), "frames": [path.name for path in self.paths],
                "sha256": self.identity, "preparation": PREPARATION}


def calibration_set(source: str | Path, count: int = CALIBRATION_FRAMES) -> CalibrationSet:
    """`count` frames spread evenly over `source`: a CamVid root (its train split without the
    held-out street, HELD_OUT_SEQUENCES, which the accuracy estimate tests on) or a folder of
    .png / .jpg frames. Raises CalibrationMissingError naming `source` where it has none."""
    source = Path(source).expanduser()
    if not source.is_dir():
        raise CalibrationMissingError(f"calibration folder not found: {source}")
    try:
        detect_layout(source)
        items = list_camvid(source, "train")
        paths = [item.image_path for item in items if item.sequence not in HELD_OUT_SEQUENCES]
    except FileNotFoundError:  # not a CamVid root: a folder of frames
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CalibrationMissingError(f"no calibration frames (.png, .jpg) in {source}")
    chosen = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(count, len(paths)))]
    digest = hashlib.sha256(f"{PREPARATION}:{len(chosen)}".encode())
    for path in chosen:
        digest.update(f"{path.name}:{file_sha256(path)}".encode())
    return CalibrationSet(source, tuple(chosen), digest.hexdigest())


def default_calibration() -> Path:
    """Where a start without int8 graphs finds calibration frames: $ACCEL_ROS_CALIBRATION,
    else DEFAULT_CALIBRATION."""
    return Path(os.environ.get(CALIBRATION_ENV) or DEFAULT_CALIBRATION).expanduser()


def cached_int8_graphs(
    model: AccelNet,
    input_size: tuple[int, int],
    *,
    calibration: str | Path | None = None,
    batch: int = 1,
    out_of_frame: str = "border",
    root: str | Path | None = None,
    log: Callable[[str], None] | None = log_to_stderr,
) -> ExportedGraphs:
    """`model`'s int8 graphs at `input_size` from the cache under `root`, quantized first when
    missing or stale. With `calibration` (a folder) they are those of its frames. Without, any
    fresh int8 folder of these weights serves (`accel-ros export --precision int8` made it);
    else the frames of `default_calibration()`; else one CalibrationMissingError line."""
    fp32_key = ExportKey.for_model(model, input_size, batch=batch, out_of_frame=out_of_frame)
    base = Path(root or cache_root())
    if calibration is None:
        found = _fresh_int8_folder(base, fp32_key)
        if found is not None:
            return found
        calibration = default_calibration()
        if not calibration.is_dir():
            raise CalibrationMissingError(
                f"precision int8 needs calibration frames to quantize the graphs once, and "
                f"{calibration} is missing: run `accel-ros export --precision int8 "
                f"--calibration DIR` (DIR: a CamVid root or a folder of frames from your camera) "
                f"or set {CALIBRATION_ENV}=DIR")
    frames = calibration_set(calibration)
    key = int8_key(fp32_key, frames)
    folder = base / key.folder_name
    reason = stale_reason(folder, key)
    if reason is None:
        manifest = read_manifest(folder)
        assert manifest is not None
        return ExportedGraphs(folder, manifest, exported=False, seconds=0.0)
    start = time.perf_counter()
    fp32 = cached_graphs(model, input_size, batch=batch, out_of_frame=out_of_frame, root=root,
                         check_runtime="openvino", log=log)
    remedy = CACHE_REMEDY if root is None else FOLDER_REMEDY
    manifest = quantize_graphs(fp32, folder, key, frames, remedy=remedy)
    seconds = time.perf_counter() - start
    if log is not None:
        log(f"accel_ros: quantized {len(QUANTIZED_GRAPHS)} graphs to int8 for "
            f"{key.input_size[0]}x{key.input_size[1]} on {frames.describe()} in {seconds:.1f} s "
            f"({reason}) to {folder}")
    return ExportedGraphs(folder, manifest, exported=True, seconds=seconds, reason=reason)


def int8_key(fp32_key: ExportKey, frames: CalibrationSet, cpu: CpuInfo | None = None
             ) -> ExportKey:
    """The key of the int8 graphs made from `fp32_key`'s graphs with `frames` for `cpu` (this
    machine's by default): the versions of the quantizer and the runtime that ran it and its
    settings for that CPU join the fp32 key's versions."""
    return dataclasses.replace(fp32_key, precision="int8", calibration=frames.identity,
                               versions=_int8_versions(fp32_key, cpu or cpu_info()))


def quantization_settings(cpu: CpuInfo) -> dict[str, str]:
    """NNCF's settings that shape the int8 graphs for `cpu`, as the int8 key records them."""
    vnni = cpu.has("VNNI") or cpu.has("AMX")
    return {"nncf_preset": "performance",
            "nncf_overflow_fix": OVERFLOW_FIX_WITH_VNNI if vnni else OVERFLOW_FIX_WITHOUT_VNNI}


def _int8_versions(fp32_key: ExportKey, cpu: CpuInfo) -> tuple[tuple[str, str], ...]:
    return (*fp32_key.versions, ("openvino", _version("openvino")), ("nncf", _version("nncf")),
            *quantization_settings(cpu).items())


def _version(module: str) -> str:
    return str(require(module, "precision int8").__version__)


def _fresh_int8_folder(base: Path, fp32_key: ExportKey) -> ExportedGraphs | None:
    """The newest int8 folder under `base` made from `fp32_key`'s graphs with this
    installation's quantizer and its settings for this CPU, whatever its calibration set, that
    is not stale."""
    try:
        candidates = sorted(base.glob(f"{fp32_key.folder_name}-int8-*"),
                            key=lambda path: path.stat().st_mtime, reverse=True)
    except OSError:
        return None
    cpu = cpu_info()
    for folder in candidates:
        manifest = read_manifest(folder)
        if manifest is None or manifest.key.precision != "int8":
            continue
        fp32_part = dataclasses.replace(manifest.key, precision="fp32", calibration="",
                                        versions=fp32_key.versions)
        expected = dataclasses.replace(manifest.key, versions=_int8_versions(fp32_key, cpu))
        if fp32_part == fp32_key and stale_reason(folder, expected) is None:
            return ExportedGraphs(folder, manifest, exported=False, seconds=0.0)
    return None


def quantize_graphs(
    fp32: ExportedGraphs,
    folder: str | Path,
    key: ExportKey,
    frames: CalibrationSet,
    *,
    replace: bool = False,
    remedy: str = FOLDER_REMEDY,
) -> Manifest:
    """Write the int8 folder `folder` for `key`: QUANTIZED_GRAPHS quantized on `frames` with
    the key's NNCF settings (`int8_key`) as OpenVINO IR, the other graphs copied from `fp32`,
    and a manifest pinning every file."""
    settings = dict(key.versions)
    preset, overflow_fix = settings["nncf_preset"], settings["nncf_overflow_fix"]

    def fill(staging: Path) -> Manifest:
        start = time.perf_counter()
        inputs = load_frames(frames.paths, key.input_size, max(key.batch, 1))
        graphs = {}
        for name, entry in fp32.manifest.graphs.items():
            source = fp32.folder / entry["file"]
            if name in QUANTIZED_GRAPHS:
                graphs[name] = {**entry, **quantize_graph(source, staging / f"{name}.xml",
                                                          inputs, preset, overflow_fix)}
            else:
                shutil.copy2(source, staging / entry["file"])
                graphs[name] = dict(entry)
        manifest = dataclasses.replace(
            fp32.manifest, key=key, graphs=graphs, checked_with="openvino",
            export_seconds=round(time.perf_counter() - start, 2),
            calibration=frames.to_dict())
        write_manifest(staging, manifest)
        return manifest

    return write_graphs(folder, key, fill, replace=replace, remedy=remedy)


def load_frames(paths: Sequence[Path], input_size: tuple[int, int], batch: int = 1
                ) -> list[np.ndarray]:
    """Calibration inputs: each frame as (batch, 3, H, W) float32 RGB in [0, 1] at
    `input_size` (area resize), the graphs' image input."""
    import cv2

    arrays = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CalibrationMissingError(f"calibration frame cannot be read: {path}")
        height, width = input_size
        if bgr.shape[:2] != (height, width):
            bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))[None]
        arrays.append(np.repeat(chw, batch, axis=0))
    return arrays


def quantize_graph(source: Path, target: Path, inputs: Sequence[np.ndarray], preset: str,
                   overflow_fix: str) -> dict[str, Any]:
    """Quantize the one-input ONNX graph `source` on `inputs` into the IR `target` (.xml and
    .bin) with NNCF's `preset` and `overflow_fix` (QuantizationPreset and OverflowFix values,
    `quantization_settings`); returns its manifest fields (files pinned, and the largest
    difference to the fp32 graph on the first input relative to its scale, as
    `check_max_error`)."""
    ov = require("openvino", "precision int8")
    nncf = require("nncf", "precision int8 (quantizing the graphs)")
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    # convert_model folds the ONNX importer's shape arithmetic into constants: read as it is,
    # the depthwise convolutions' weights sat behind ShapeOf ops and stayed fp32 (the
    # reference took 106.8 ms instead of 76.8 ms per frame, 1 loaded thread).
    model = ov.convert_model(str(source))
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    with _quiet():
        quantized = nncf.quantize(model, nncf.Dataset(list(inputs)), subset_size=len(inputs),
                                  preset=nncf.QuantizationPreset(preset),
                                  advanced_parameters=advanced)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    core = openvino_core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    want = core.compile_model(model, "CPU", config)(inputs[0])[0]
    got = core.compile_model(str(target), "CPU", config)(inputs[0])[0]
    error = float(np.abs(got - want).max() / max(1.0, float(np.abs(want).max())))
    weights = target.with_suffix(".bin")
    return {**file_entry(target), "weights": file_entry(weights), "check_max_error": error}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF's progress bars and INFO lines off the console: the start-up line says it all."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
