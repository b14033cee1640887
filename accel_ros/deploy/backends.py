"""Runtime backends: the network calls of `AccelSegmenter` through exported graphs.

`GraphNetworks` has the interface of `model.fastpath.FastOps` (the calls in `OP_NAMES`,
`notes`, `graphs`, `release`), so the segmenter's keyframe cache, flow, warp, adaptive
keyframes, several streams and timings are the same with every backend; only where the
networks run changes. The graphs come from the cache (`export.cached_graphs`), exported on
first use of a model and input size.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import PipelineConfig
from ..model.accel import AccelNet
from ..registry import check_choice
from .export import ExportedGraphs, cached_graphs, check_graph, export_graph, log_to_stderr
from .graphs import GraphSpec
from .quantize import cached_int8_graphs
from .runtimes import RUNTIMES, SESSIONS, GraphSession, check_precision, open_session, require

# Graphs whose input is the frame: a frame of a new size exports (or loads) that size's graphs.
IMAGE_GRAPHS = ("reference_features", "update_features")
# Input sizes whose sessions stay loaded (each holds its own copy of the weights).
MAX_SIZES = 4


def check_runtime(runtime: str, precision: str) -> None:
    """Stop start-up, not the first frame, on a runtime that is unknown or not installed or a
    precision it does not run."""
    check_choice("runtime", runtime, RUNTIMES)
    check_precision(runtime, precision)
    require(runtime, f"backend {runtime}")
    require("onnx", f"backend {runtime} (exporting its graphs)")
    if precision == "int8":
        require("nncf", "precision int8 (quantizing the graphs)")


@dataclass
class _Graph:
    """One exported graph of one input size. Its sessions open on first use, one per kind of
    input: float, or (an image graph on a runtime that converts them) the frame's pixels."""

    opener: Callable[..., GraphSession]  # opener(pixels=...) -> a new session
    shapes: list[tuple[int, ...]]  # input shapes less the batch axis
    sessions: dict[bool, GraphSession] = field(default_factory=dict)

    def session(self, pixels: bool = False) -> GraphSession:
        if pixels not in self.sessions:
            self.sessions[pixels] = self.opener(pixels=pixels)
        return self.sessions[pixels]


class GraphNetworks:
    """`AccelNet`'s network calls run by `runtime` ("onnxruntime" or "openvino") on the CPU.

    Tensors in and out are float32 on the host, shaped as the model's own calls. With
    `input_size` the graphs are exported or loaded here (start-up); otherwise on the first
    frame of each size. `threads`: the sessions' intra-op threads (default: torch's thread
    count when a session opens). Batch-1 graphs run a batch of N frames one at a time.
    `calibration`: precision int8's calibration frames (`quantize.cached_int8_graphs`)."""

    def __init__(
        self,
        model: AccelNet,
        runtime: str,
        *,
        precision: str = "fp32",
        out_of_frame: str = "border",
        input_size: tuple[int, int] | None = None,
        batch: int = 1,
        root: str | Path | None = None,
        threads: int | None = None,
        calibration: str | Path | None = None,
        log: Callable[[str], None] | None = log_to_stderr,
    ) -> None:
        check_runtime(runtime, precision)
        self.calibration = calibration
        self.model = model
        self.runtime = runtime
        self.precision = precision
        self.out_of_frame = out_of_frame
        self.batch = batch
        self.root = root
        self.threads = threads
        self.log = log
        self.notes: list[str] = []
        self.graphs: dict[str, Any] = {}  # no CUDA graphs here (AccelSegmenter reads this)
        self._sizes: OrderedDict[tuple[int, int], dict[str, _Graph]] = OrderedDict()
        if input_size is not None:
            self.prepare(input_size)

    def prepare(self, input_size: tuple[int, int]) -> ExportedGraphs:
        """Export (when missing or stale) and open the graphs of one input size."""
        size = (int(input_size[0]), int(input_size[1]))
        if self.precision == "int8":
            graphs = cached_int8_graphs(self.model, size, calibration=self.calibration,
                                        batch=self.batch, out_of_frame=self.out_of_frame,
                                        root=self.root, log=self.log)
        else:
            graphs = cached_graphs(self.model, size, batch=self.batch,
                                   out_of_frame=self.out_of_frame, root=self.root,
                                   check_runtime=self.runtime, log=self.log)
        threads = self.threads or torch.get_num_threads()
        self._sizes[size] = {
            name: _Graph(
                functools.partial(open_session, self.runtime, graphs.folder / entry["file"],
                                  threads, self.precision,
                                  graphs.folder / f"{self.runtime}_cache"),
                [tuple(shape[1:]) for shape in entry["inputs"].values()],
            )
            for name, entry in graphs.manifest.graphs.items()
            if name != "warp"  # the pipeline warps in torch
        }
        for name, graph in self._sizes[size].items():
            # Open, before the first frame, the session each graph usually runs: frames at the
            # input size reach an image graph as pixels where the runtime takes them.
            graph.session(pixels=self.takes_pixels and name in IMAGE_GRAPHS)
        while len(self._sizes) > MAX_SIZES:
            self._sizes.popitem(last=False)
        how = f"exported in {graphs.seconds:.1f} s" if graphs.exported else "from the cache"
        if graphs.manifest.calibration:  # int8: which frames calibrated them
            how += (f", calibrated on {len(graphs.manifest.calibration['frames'])} frames of "
                    f"{graphs.manifest.calibration['source']}")
        self.notes.append(f"backend {self.runtime} ({self.precision}, {threads} thread(s)): "
                          f"graphs for {size[0]}x{size[1]} {how}, {graphs.folder}")
        return graphs

    def release(self) -> None:
        """Nothing to drop: each input size keeps its sessions (at most MAX_SIZES)."""

    # -- the calls of fastpath.OP_NAMES ----------------------------------------------------
    def reference_features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_R, h, w)."""
        return self._run("reference_features", image)

    def reference_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C_R, h, w) -> s_R (N, K, h, w)."""
        return self._run("reference_scores", features)

    def update_features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_U, h_U, w_U)."""
        self._require_update()
        return self._run("update_features", image)

    def update_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C_U, h_U, w_U) -> s_U (N, K, h_U, w_U)."""
        self._require_update()
        return self._run("update_scores", features)

    def fuse(
        self,
        reference_features: torch.Tensor,
        update_features: torch.Tensor,
        reference_scores: torch.Tensor | None = None,
        update_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`AccelNet.fuse`: corrected scores (N, K, h, w); missing scores are computed."""
        if self.model.fusion is None:
            raise RuntimeError("this model has no update branch, so there is nothing to fuse")
        if self.model.fuses_features:
            return self._run("fuse", reference_features, update_features)
        if reference_scores is None:
            reference_scores = self.reference_scores(reference_features)
        if update_scores is None:
            update_scores = self.update_scores(update_features)
        return self._run("fuse", reference_scores, update_scores)

    # -- running a graph --------------------------------------------------------------------
    def _graph(self, name: str, tensors: tuple[torch.Tensor, ...]) -> _Graph:
        """Graph `name` of the loaded size whose input shapes (less the batch) match
        `tensors`; a frame of a size not seen yet prepares that size first."""
        shapes = [tuple(t.shape[1:]) for t in tensors]
        for graphs in reversed(self._sizes.values()):
            graph = graphs.get(name)
            if graph is not None and graph.shapes == shapes:
                return graph
        if name in IMAGE_GRAPHS and tensors[0].dim() == 4:
            size = (int(tensors[0].shape[-2]), int(tensors[0].shape[-1]))
            graph = self._sizes[size].get(name) if size in self._sizes else None
            if graph is None:
                self.prepare(size)
                graph = self._sizes[size].get(name)
            if graph is not None and graph.shapes == shapes:
                return graph
        raise ValueError(f"no exported {name} graph takes inputs {shapes}")

    @property
    def takes_pixels(self) -> bool:
        """Whether the image calls take frames as (N, 3, H, W) uint8 (any strides) as they
        are, as well as float in [0, 1]: the runtime converts them inside its graphs."""
        return SESSIONS[self.runtime].takes_pixels

    def _run(self, name: str, *tensors: torch.Tensor) -> torch.Tensor:
        pixels = self.takes_pixels and tensors[0].dtype == torch.uint8
        session = self._graph(name, tensors).session(pixels)
        arrays = [_session_array(t, session.pixels) for t in tensors]
        count = arrays[0].shape[0]
        if self.batch in (0, count):
            return torch.from_numpy(session(*arrays))
        if self.batch != 1:
            raise ValueError(f"graphs of batch {self.batch} cannot take a batch of {count}")
        parts = [session(*(a[i : i + 1] for a in arrays)) for i in range(count)]
        return torch.from_numpy(np.concatenate(parts))

    def _require_update(self) -> None:
        if self.model.update is None:
            raise RuntimeError("this model has no update branch (update_backbone=None)")


def _session_array(tensor: torch.Tensor, pixels: bool) -> np.ndarray:
    """A call's tensor as a session takes it: float32 as shaped, or, for an image call given
    the frame's pixels ((N, 3, H, W) uint8), (N, H, W, 3) uint8 where the session converts
    them itself (`pixels`; a view of a channels-last frame, as `frame_to_tensor` makes of an
    (H, W, 3) array), else float32 in [0, 1]."""
    if tensor.dtype == torch.uint8:
        if pixels:
            return tensor.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        tensor = tensor.float() / 255.0
    return tensor.detach().float().contiguous().cpu().numpy()


def build_networks(
    model: AccelNet,
    pipeline: PipelineConfig,
    device: torch.device,
    input_size: tuple[int, int] | None = None,
    **options: Any,
) -> GraphNetworks:
    """The network calls of backend `pipeline.backend` for an `AccelSegmenter` on `device`
    (the CPU: these runtimes run on it). `options` go to `GraphNetworks`."""
    backend = getattr(pipeline, "backend", "torch")
    if backend not in RUNTIMES:
        raise ValueError(f"backend {backend!r} runs no exported graphs; choose one of {RUNTIMES}")
    if device.type != "cpu":
        raise ValueError(f"backend {backend} runs the networks on the CPU, but the device is "
                         f"{device}: set device to cpu, or use backend torch")
    return GraphNetworks(model, backend, precision=pipeline.precision,
                         out_of_frame=pipeline.out_of_frame, input_size=input_size, **options)


class NotExportableError(ValueError):
    """A network that torch cannot export to ONNX, or whose graph disagrees with torch."""


class ExportedModule:
    """A torch module with one image input, (N, 3, H, W) -> one tensor, run by `runtime` as an
    ONNX graph: exported and checked against torch on the first input of each shape, into a
    private folder that `close()` removes. For networks outside `AccelNet` (the benchmark's
    torchvision peers); raises NotExportableError where a network does not export."""

    def __init__(
        self,
        module: torch.nn.Module,
        name: str,
        runtime: str,
        precision: str = "fp32",
        threads: int | None = None,
    ) -> None:
        check_runtime(runtime, precision)
        if precision == "int8":  # quantizing needs a model's own calibration (quantize.py)
            raise NotExportableError(f"{name} has no int8 graphs: precision int8 quantizes "
                                     f"AccelNet's graphs only")
        self.module = module.eval()
        self.name = name
        self.runtime = runtime
        self.precision = precision
        self.threads = threads
        self.notes: list[str] = []
        self._folder = Path(tempfile.mkdtemp(prefix=f"accel_ros_{name}_"))
        self._sessions: dict[tuple[int, ...], GraphSession] = {}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        shape = tuple(image.shape)
        session = self._sessions.get(shape) or self._prepare(image)
        return torch.from_numpy(session(image.detach().float().contiguous().cpu().numpy()))

    def _prepare(self, image: torch.Tensor) -> GraphSession:
        start = time.perf_counter()
        image = image.detach().float().contiguous().cpu()
        with torch.no_grad():
            expected = self.module(image)
        spec = GraphSpec(self.name, self.module, {"image": image}, "scores", expected)
        path = self._folder / f"{self.name}-{'x'.join(str(side) for side in image.shape)}.onnx"
        try:
            export_graph(spec, path)
            check_graph(spec, path, self.runtime)
        except Exception as error:  # any exporter or check failure: "does not export"
            first_line = (str(error).splitlines() or [""])[0]
            raise NotExportableError(f"{self.name} does not export for {self.runtime}: "
                             f"{type(error).__name__}: {first_line}") from error
        threads = self.threads or torch.get_num_threads()
        session = open_session(self.runtime, path, threads, self.precision)
        self._sessions[tuple(image.shape)] = session
        self.notes.append(f"{self.name} through {self.runtime} ({self.precision}, {threads} "
                          f"thread(s)): exported at {image.shape[-2]}x{image.shape[-1]} in "
                          f"{time.perf_counter() - start:.1f} s")
        return session

    def close(self) -> None:
        """Drop the sessions and the exported files."""
        self._sessions.clear()
        shutil.rmtree(self._folder, ignore_errors=True)

