"""ONNX Runtime and OpenVINO behind one small interface: open an exported graph, run arrays.

Both packages are optional extras; a missing one is one line naming the extra to install.
Sessions run on the CPU with the thread count they are given (the process's torch threads by
default, so `--threads 1` means one thread for every backend) and in fp32 unless asked:
OpenVINO's own default on CPUs with AMX or AVX512-BF16 is bf16, which would break parity.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..config import BACKENDS
from ..registry import check_choice

# Runtimes that run exported graphs: the backends marked so in config.BACKENDS, in its order.
RUNTIMES = BACKENDS.select(lambda backend: backend.graphs)
# module -> the pip extra of accel_ros that installs it (setup.py extras_require)
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "int8"}
# PipelineConfig.precision -> OpenVINO's name for it (INFERENCE_PRECISION_HINT); which of them
# the openvino backend runs is config.BACKENDS' to say. int8: the quantized graphs
# (deploy/quantize.py) run their int8 layers in int8 and the rest in fp32.
OPENVINO_PRECISIONS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}


class BackendUnavailableError(ImportError, ValueError):
    """An optional package is missing (a ValueError too: the CLI reports it as a bad choice,
    in one line)."""


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise BackendUnavailableError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise BackendUnavailableError(
            f"{purpose} needs the {module} package: pip install 'accel_ros[{extra}]' "
            f"(or pip install {module})"
        ) from None


def check_precision(runtime: str, precision: str) -> None:
    """Raise ValueError unless `runtime` runs `precision` (config.BACKENDS says which)."""
    allowed = BACKENDS[runtime].precisions
    if precision not in allowed:
        raise ValueError(f"backend {runtime} runs precision {' or '.join(allowed)}, "
                         f"got {precision!r}")


class GraphSession:
    """One compiled graph. `__call__(*arrays)` takes float32 arrays in the graph's input order
    (with `pixels`, an image graph's one (N, H, W, 3) uint8 array) and returns its single
    output as a new float32 array (safe to keep across calls)."""

    runtime = "base"
    takes_pixels = False  # whether the class can convert an image graph's pixels itself
    pixels: bool  # whether this session's image input is (N, H, W, 3) uint8 (set when built)

    def __init__(
        self,
        path: Path,
        threads: int = 1,
        precision: str = "fp32",
        cache_dir: Path | None = None,
        pixels: bool = False,
    ) -> None:
        """Compile graph file `path` to run on `threads` threads in `precision`; `cache_dir`
        keeps compiled blobs where the runtime has them; `pixels` asks an image graph to take
        uint8 frames where the class `takes_pixels`."""
        self.path = Path(path)
        check_precision(self.runtime, precision)
        self.pixels = pixels and self.takes_pixels
        self._open(threads, precision, cache_dir)

    def _open(self, threads: int, precision: str, cache_dir: Path | None) -> None:
        """Compile `self.path` (with `self.pixels`, taking uint8 frames)."""
        raise NotImplementedError

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeSession(GraphSession):
    """A graph in ONNX Runtime's CPU execution provider, all graph optimisations on.
    `cache_dir` is unused: ONNX Runtime keeps no compiled blobs."""

    runtime = "onnxruntime"

    def _open(self, threads: int, precision: str, cache_dir: Path | None) -> None:
        ort = require("onnxruntime", "backend onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads would spin-wait after each run and take the cores from the torch
        # and OpenCV work between graphs: with 2 threads on 2 cores, Accel k=5 took 71 ms per
        # frame spinning, against 40 ms in PyTorch eager.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [item.name for item in self.session.get_inputs()]

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = dict(zip(self.input_names, arrays, strict=True))
        return self.session.run(None, feeds)[0]


class OpenVinoSession(GraphSession):
    """A graph compiled by OpenVINO for the CPU with the latency hint. `cache_dir` keeps
    OpenVINO's compiled blobs (keyed by OpenVINO itself on graph, version and settings).
    `pixels`: the image graph takes (N, H, W, 3) uint8 frames (`_pixels_input`)."""

    runtime = "openvino"
    takes_pixels = True

    def _open(self, threads: int, precision: str, cache_dir: Path | None) -> None:
        ov = require("openvino", "backend openvino")
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            # On CPUs shared with other nodes a pinned thread cannot leave a busy core: small
            # graphs took 1.1 ms pinned vs 0.7 ms unpinned (median, 2 loaded cores).
            "ENABLE_CPU_PINNING": False,
        }
        if cache_dir is not None:
            config["CACHE_DIR"] = str(cache_dir)
        graph = str(self.path)
        if self.pixels:
            graph = _pixels_input(ov, openvino_core().read_model(graph))
        compiled = openvino_core().compile_model(graph, "CPU", config)
        self.request = compiled.create_infer_request()

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        self.request.infer(list(arrays), share_inputs=True)
        return self.request.get_output_tensor(0).data.copy()


def _pixels_input(ov: ModuleType, model: Any) -> Any:
    """`model` (one image input (N, 3, H, W) float in [0, 1]) taking the frame as it comes:
    (N, H, W, 3) uint8, converted and scaled inside the graph. The plugin folds that into the
    first convolution's input reorder: the same outputs, bit for bit, and on one thread of a
    Xeon with AMX the int8 update graph took 4.4 ms instead of 5.1 ms with the float NCHW copy
    made beforehand (the reference 20.5 instead of 25.3 ms); the host's float copy goes too."""
    from openvino.preprocess import PrePostProcessor

    steps = PrePostProcessor(model)
    steps.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    steps.input().model().set_layout(ov.Layout("NCHW"))
    steps.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
    return steps.build()


# runtime -> its session class, one for each of RUNTIMES (bind checks, at import).
SESSIONS: dict[str, type[GraphSession]] = BACKENDS.bind(
    {"onnxruntime": OnnxRuntimeSession, "openvino": OpenVinoSession}, RUNTIMES
)


@functools.cache
def openvino_core() -> Any:
    """One OpenVINO core for the process, never freed. When the last core and compiled model
    of a process were freed (a segmenter dropped), the next SIGINT (Ctrl-C) crashed the
    process with SIGSEGV (OpenVINO 2026.4.1, Python 3.11)."""
    return require("openvino", "backend openvino").Core()


def open_session(
    runtime: str,
    path: Path,
    threads: int = 1,
    precision: str = "fp32",
    cache_dir: Path | None = None,
    pixels: bool = False,
) -> GraphSession:
    """A `GraphSession` of `runtime` (one of RUNTIMES) on the graph file `path`. `pixels`:
    an image graph takes frames as (N, H, W, 3) uint8 where the runtime can convert them
    itself (`GraphSession.pixels` says whether it does)."""
    check_choice("runtime", runtime, RUNTIMES)
    return SESSIONS[runtime](path, threads, precision, cache_dir, pixels=pixels)


def available_runtimes() -> list[str]:
    """The RUNTIMES whose package imports here."""
    found = []
    for name in RUNTIMES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        found.append(name)
    return found


def versions() -> dict[str, str]:
    """Versions of the export and runtime packages that are installed (for manifests and
    reports)."""
    found = {}
    for name in ("torch", "onnx", *RUNTIMES):
        try:
            found[name] = str(importlib.import_module(name).__version__)
        except (ImportError, AttributeError):
            continue
    return found
