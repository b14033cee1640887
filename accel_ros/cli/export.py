"""`accel-ros export`: write a model's graphs as checked ONNX files with a manifest, for the
OpenVINO / ONNX Runtime backends (their cache, the default) or for TensorRT (`--output`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DEFAULT_PRESET, PRESETS
from ..deploy.export import (
    CACHE_REMEDY,
    GRAPH_PRECISIONS,
    OPSET,
    OPSETS,
    ExportedGraphs,
    ExportKey,
    Manifest,
    cache_root,
    cache_state,
    export_graphs,
    read_manifest,
    stale_reason,
)
from ..deploy.quantize import calibration_set, int8_key, quantize_graphs
from ..deploy.runtimes import RUNTIMES
from ..model.checkpoint import load_model_or_preset
from ..runtime import THREADS_HELP, set_threads
from .options import add_config_option


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `export`."""
    parser = subparsers.add_parser(
        "export",
        help="export the networks as ONNX graphs (OpenVINO, ONNX Runtime, TensorRT)",
        description="Export the parts the streaming sequence needs (reference branch, N_task, "
        "update branch, fusion, warp) as ONNX graphs of static shape, check each with the "
        "onnx checker and a run against torch, and write manifest.json beside them. Without "
        "--output they go to the cache the openvino/onnxruntime backends read, so a robot "
        "can pay the export at install time instead of at its first start.",
    )
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS.choices,
                        help="architecture of random weights (with --checkpoint none)")
    parser.add_argument("--checkpoint", default="default",
                        help="'default' (shipped), 'none' (random weights) or a path")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="network input size (default: the checkpoint's)")
    parser.add_argument("--batch", type=int, default=1,
                        help="static batch (cameras per call); 0 = a dynamic batch axis")
    parser.add_argument("--opset", type=int, default=OPSET, choices=OPSETS)
    add_config_option(parser, "out_of_frame",
                        help="the warp graph's rule for samples from outside the frame")
    parser.add_argument("--output", "-o", type=Path, default=None,
                        help="folder to write (replaced as a whole; default: the backends' "
                        f"cache under {cache_root()})")
    parser.add_argument("--check-runtime", default=RUNTIMES[0], choices=RUNTIMES,
                        help="runtime that runs each graph against torch")
    add_config_option(parser, "precision",
                      help="int8: also quantize the image networks for backend openvino, "
                      "precision int8 (needs --calibration and pip install 'accel_ros[int8]'); "
                      "the others run the fp32 graphs (OpenVINO bf16, TensorRT --fp16)")
    parser.add_argument("--calibration", type=Path, default=None, metavar="DIR",
                        help="int8's calibration frames: a CamVid root (its train split less "
                        "the held-out street) or a folder of .png/.jpg frames from your camera")
    parser.add_argument("--force", action="store_true",
                        help="export even when the cache holds these graphs already")
    parser.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    parser.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    if args.precision == "int8" and args.calibration is None:
        raise ValueError("--precision int8 needs --calibration DIR: a CamVid root or a folder "
                         "of frames from your camera (frames never ship with accel_ros)")
    loaded = load_model_or_preset(args.preset, args.checkpoint)
    size = tuple(args.input_size) if args.input_size else loaded.model.config.input_size
    if size is None:
        raise ValueError("this model records no input size: give --input-size H W")
    state = cache_state(loaded.model, size, batch=args.batch, opset=args.opset,
                        out_of_frame=args.out_of_frame, folder=args.output)
    key, folder, reason = state.key, state.folder, state.reason  # every graph hashed
    manifest = read_manifest(folder)
    if reason is None and not args.force and manifest is not None:
        print(f"up to date: {folder} holds these graphs ({loaded.description})")
    else:
        if reason is not None and Path(folder).exists():  # say why a folder there is not kept
            print(f"exporting again: {reason}")
        remedy = CACHE_REMEDY if args.output is None else "choose another --output folder"
        manifest = export_graphs(loaded.model, folder, key, check_runtime=args.check_runtime,
                                 checkpoint=str(loaded.path) if loaded.path else None,
                                 replace=args.force, remedy=remedy)
        print(describe(manifest, folder))
    if args.precision not in GRAPH_PRECISIONS:
        print(f"precision {args.precision} runs these fp32 graphs: nothing more to write")
    if args.precision == "int8":
        _quantize(args, key, ExportedGraphs(folder, manifest, True, 0.0))
    return 0


def _quantize(args: argparse.Namespace, fp32_key: ExportKey, fp32: ExportedGraphs) -> None:
    """The int8 folder made from the fp32 graphs `fp32` with --calibration's frames: in the
    cache, or beside --output's folder (its name + '-int8')."""
    frames = calibration_set(args.calibration)
    key = int8_key(fp32_key, frames)
    folder = (cache_root() / key.folder_name if args.output is None
              else args.output.with_name(args.output.name + "-int8"))
    reason = stale_reason(folder, key)
    if reason is None and not args.force:
        print(f"up to date: {folder} holds these int8 graphs ({frames.describe()})")
        return
    print(f"quantizing to int8 on {frames.describe()} ({reason or 'forced'})")
    remedy = CACHE_REMEDY if args.output is None else "choose another --output folder"
    manifest = quantize_graphs(fp32, folder, key, frames, replace=args.force, remedy=remedy)
    print(describe(manifest, folder, engines=False))


def describe(manifest: Manifest, folder: Path, engines: bool = True) -> str:
    """What was written, one line per graph (N: the dynamic batch axis), and the TensorRT
    engine commands (`engines`)."""
    key = manifest.key
    lines = [f"exported {len(manifest.graphs)} graphs ({key.input_size[0]}x{key.input_size[1]}, "
             f"batch {key.batch or 'dynamic'}, opset {key.opset}) in "
             f"{manifest.export_seconds:.1f} s to {folder}"]
    for graph in manifest.graphs.values():
        inputs = ", ".join(f"{name} {_dims(shape)}" for name, shape in graph["inputs"].items())
        (output, shape), = graph["output"].items()
        lines.append(f"  {graph['file']:<24} {inputs} -> {output} {_dims(shape)}  "
                     f"{graph['bytes'] / 1e6:.2f} MB, max |{manifest.checked_with} - torch| "
                     f"{graph['check_max_error']:.1e}")
    if not engines:
        return "\n".join(lines)
    lines.append("TensorRT engines (on the target, with TensorRT's trtexec):")
    for graph in manifest.graphs.values():
        lines.append("  " + trtexec_command(folder, graph, key.batch))
    return "\n".join(lines)


def _dims(shape: list[int]) -> str:
    return "x".join("N" if dim == 0 else str(dim) for dim in shape)


def trtexec_command(folder: Path, graph: dict, batch: int, max_batch: int = 4) -> str:
    """The engine-building command of one graph: fp16, saved beside it; a dynamic batch axis
    gets an optimisation profile of 1 to `max_batch` frames (tuned for 1)."""
    stem = Path(graph["file"]).stem
    command = f"trtexec --onnx={folder / graph['file']} --fp16 --saveEngine={folder / stem}.engine"
    if batch == 0:
        for flag, size in (("min", 1), ("opt", 1), ("max", max_batch)):
            shapes = ",".join(f"{name}:{_dims([size, *shape[1:]])}"
                              for name, shape in graph["inputs"].items())
            command += f" --{flag}Shapes={shapes}"
    return command
