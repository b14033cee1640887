"""Switchable fast paths of the streaming pipeline (`PipelineConfig` fields in brackets).

- `FastOps` [torch_compile, cuda_graphs]: the network calls `AccelSegmenter` makes, either the
  model's own bound methods (plain path), `torch.compile`d, and/or replayed from CUDA graphs
  captured once per input shape. Every fast path falls back to the plain call with a warning
  that says why (no CUDA device, compiler failure, capture failure) instead of failing a frame,
  and `FastOps.outcome()` / `FastOps.notes` say afterwards what really ran (graphs captured and
  replayed, calls that ran eagerly, compile failures), so a benchmark never labels eager
  timings as graphs or compile.
- `FlowWorker` [overlap_flow]: one background thread that computes CPU optical flow (OpenCV
  releases the GIL) while the main thread runs the update branch, which does not need the flow.
- The flow that stays on a CUDA device (`TorchFlow`, flow_method="torch") is in model/flow.py
  with every other estimator.

Nothing here changes numbers on the plain path: with every switch off `FastOps` hands out the
model's methods unchanged.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from ..model.flow import FLOW_ESTIMATORS, FlowEstimator, _OpenCVFlow

# The calls AccelSegmenter makes on AccelNet, in the order of a non-key frame.
OP_NAMES = ("reference_features", "reference_scores", "update_features", "update_scores", "fuse")
# The fixed-shape per-frame path of non-key frames; keyframes (the big N_R) stay eager so the
# graphs' private memory pools hold only the cheap branch's activations.
GRAPHED_OPS = ("reference_scores", "update_features", "update_scores", "fuse")
# Estimators that run on the CPU through OpenCV, which releases the GIL: worth a thread.
# Derived from flow.py's registry (whose names are config.FLOW_METHODS), not listed again.
OVERLAPPABLE_FLOWS = tuple(
    name for name, make in FLOW_ESTIMATORS.items()
    if isinstance(make, type) and issubclass(make, _OpenCVFlow)
)


def cuda_device_context(device: torch.device) -> contextlib.AbstractContextManager:
    """`torch.cuda.device(device)` for a CUDA device, else a no-op. Streams, CUDA graphs and
    synchronise calls use the *current* device: with `device: cuda:1` everything must run
    inside this, or work lands on (or waits for) cuda:0. The current device is per thread, so
    the flow worker enters it too."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


class CompiledCall:
    """`torch.compile(fn)` that falls back to `fn` for good if compilation fails.

    A failure of the compiled call is only blamed on the compiler when the eager call then
    succeeds; an error the eager call raises too (a bad input) propagates unchanged and leaves
    the compiled path enabled.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        backend: str | Callable[..., Any] = "inductor",
        mode: str | None = None,
    ) -> None:
        self.name = name
        self.eager = fn
        # dynamic=False: the stream's frame size is fixed, so one specialised graph per shape.
        self.compiled = torch.compile(fn, backend=backend, mode=mode, dynamic=False)
        self.failure: str | None = None
        # What really ran: calls that returned from the compiled function, calls run eagerly.
        self.compiled_calls = 0
        self.eager_calls = 0

    def __call__(self, *args: Any) -> Any:
        if self.failure is None:
            try:
                result = self.compiled(*args)
                self.compiled_calls += 1
                return result
            except Exception as error:  # dynamo/inductor raise many types; judged below
                result = self.eager(*args)  # raises again if the input itself was bad
                # Dynamo puts the real cause on later lines of its message: keep them all.
                self.failure = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
                _warn(f"torch.compile of {self.name} failed ({self.failure}); running eagerly")
                self.eager_calls += 1
                return result
        self.eager_calls += 1
        return self.eager(*args)

    def outcome(self) -> dict[str, Any]:
        """What ran: {"compiled_calls", "eager_calls", "failure" (None or the reason)}."""
        return {"compiled_calls": self.compiled_calls, "eager_calls": self.eager_calls,
                "failure": self.failure}


# The torch dtype autocast runs at, per PipelineConfig.precision that torch runs in autocast
# (fp32: none). Training's mixed precision reads it too.
AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph (or a test double)
    inputs: tuple[torch.Tensor | None, ...]  # static input buffers, copied into before replay
    outputs: Any  # tensor or tuple of tensors


class CudaGraphCall:
    """Replays `fn(*tensors)` from a CUDA graph captured on first use of each input signature
    (shapes, dtypes, strides, device; None arguments are part of the signature).

    Inputs are copied into static buffers before each replay and outputs are cloned after it,
    so callers may keep results across frames. Autocast inside a capture must run with
    `cache_enabled=False` (`AccelSegmenter` does so when cuda_graphs is on), otherwise the graph
    would point at cast weights that are freed when the autocast context exits.

    `device` is the CUDA device the graphs belong to (with its index): capture, warm-up
    stream and replay all run under `torch.cuda.device(device)` on streams of that device, so
    `device: cuda:1` works whatever the current device is. Arguments on another device run
    eagerly. At most `max_signatures` graphs are kept, least recently used first out, so a
    stream whose resolution changed does not keep the old resolution's graphs (and their memory
    pools) alive; `release()` drops them all.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        name: str,
        device: torch.device | None = None,
        warmup: int = 3,
        max_signatures: int = 2,
    ) -> None:
        self.fn = fn
        self.name = name
        self.device = device
        self.warmup = warmup
        self.max_signatures = max(1, max_signatures)
        # signature -> captured graph, or None: capture failed, run eagerly
        self._graphs: OrderedDict[tuple, _Captured | None] = OrderedDict()
        # What really ran, for benchmarks and parity checks: replays of a captured graph,
        # calls that ran `fn` eagerly (arguments not graphable, or capture failed), and the
        # reason of every failed capture (input shapes -> error).
        self.replays = 0
        self.eager_calls = 0
        self.failures: dict[str, str] = {}

    @staticmethod
    def _signature(args: tuple[torch.Tensor | None, ...]) -> tuple:
        return tuple(
            None if a is None else (tuple(a.shape), a.dtype, tuple(a.stride()), str(a.device))
            for a in args
        )

    @property
    def captured_shapes(self) -> int:
        """How many input signatures have a live graph."""
        return sum(entry is not None for entry in self._graphs.values())

    def static_inputs(self) -> list[tuple[torch.Tensor | None, ...]]:
        """The static input buffers of every live graph (what each replay copies into)."""
        return [entry.inputs for entry in self._graphs.values() if entry is not None]

    def release(self) -> None:
        """Drop every captured graph (and with it its memory pool)."""
        self._graphs.clear()

    def outcome(self) -> dict[str, Any]:
        """What ran: live graphs (`captured_shapes` and their input shapes), `replays`,
        `eager_calls`, and `failures` (input shapes -> why the capture failed)."""
        shapes = [
            [None if t is None else list(t.shape) for t in inputs]
            for inputs in self.static_inputs()
        ]
        return {"captured_shapes": self.captured_shapes, "shapes": shapes,
                "replays": self.replays, "eager_calls": self.eager_calls,
                "failures": dict(self.failures)}

    def _graphable(self, tensor: torch.Tensor) -> bool:
        if tensor.device.type != "cuda":
            return False
        return self.device is None or tensor.device == self.device

    def __call__(self, *args: torch.Tensor | None) -> Any:
        if any(a is not None and not self._graphable(a) for a in args):
            self.eager_calls += 1
            return self.fn(*args)
        key = self._signature(args)
        if key in self._graphs:
            self._graphs.move_to_end(key)
        else:
            self._graphs[key] = self._capture(args)
            while len(self._graphs) > self.max_signatures:
                self._graphs.popitem(last=False)
        entry = self._graphs[key]
        if entry is None:
            self.eager_calls += 1
            return self.fn(*args)
        for static, arg in zip(entry.inputs, args, strict=True):
            if static is not None:
                static.copy_(arg)
        self._replay(entry.graph)
        self.replays += 1
        if isinstance(entry.outputs, torch.Tensor):
            return entry.outputs.clone()
        return tuple(out.clone() for out in entry.outputs)

    def _capture(self, args: tuple[torch.Tensor | None, ...]) -> _Captured | None:
        try:
            inputs = tuple(
                None
                if a is None
                else torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device=a.device)
                for a in args
            )
            for static, arg in zip(inputs, args, strict=True):
                if static is not None:
                    static.copy_(arg)
            graph, outputs = self._record(inputs)
            return _Captured(graph, inputs, outputs)
        except Exception as error:  # capture fails for ops that sync or allocate on the host
            reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
            shapes = ", ".join("None" if a is None else "x".join(map(str, a.shape)) for a in args)
            self.failures[shapes] = reason
            _warn(f"CUDA graph capture of {self.name} failed ({reason}); running it eagerly")
            return None

    def _graph_device(self, inputs: tuple[torch.Tensor | None, ...]) -> torch.device:
        if self.device is not None:
            return self.device
        return next(a.device for a in inputs if a is not None)

    def _record(self, inputs: tuple[torch.Tensor | None, ...]) -> tuple[Any, Any]:
        """Warm up and capture `fn(*inputs)` on the graph's device. Returns (graph, outputs)."""
        device = self._graph_device(inputs)
        with torch.cuda.device(device):
            # Warm-up on a side stream (cuDNN autotuning, lazy init) must precede capture.
            current = torch.cuda.current_stream(device)
            side = torch.cuda.Stream(device=device)
            side.wait_stream(current)
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.fn(*inputs)
            current.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # An explicit capture stream: torch.cuda.graph's default is a class-wide stream made
            # on whichever device was current first. thread_local: the overlap_flow worker may
            # copy frames on its own stream while this thread captures.
            capture = torch.cuda.Stream(device=device)
            with torch.cuda.graph(graph, stream=capture, capture_error_mode="thread_local"):
                outputs = self.fn(*inputs)
        return graph, outputs

    def _replay(self, graph: Any) -> None:
        if self.device is None:
            graph.replay()
            return
        with torch.cuda.device(self.device):
            graph.replay()


class ScoreFusionCall:
    """`AccelNet.fuse` for score fusion, whose result depends on the two score maps only.

    Given both scores it calls `scores_call(reference_scores, update_scores)` (a CUDA graph in
    `FastOps`), so a graph copies two (1, K, h, w) maps per frame and not the (1, C, h, w) cached
    and update features that score fusion ignores; otherwise it calls `full(*args)`."""

    def __init__(self, full: Callable[..., torch.Tensor], scores_call: Callable[..., Any]) -> None:
        self.full = full
        self.scores_call = scores_call

    def __call__(
        self,
        reference_features: torch.Tensor | None,
        update_features: torch.Tensor | None,
        reference_scores: torch.Tensor | None = None,
        update_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if reference_scores is not None and update_scores is not None:
            return self.scores_call(reference_scores, update_scores)
        return self.full(reference_features, update_features, reference_scores, update_scores)


class FastOps:
    """The network calls of `AccelSegmenter` (names in `OP_NAMES`) with the requested fast
    paths applied. `notes` says, in words, which fast paths are active or why one is not,
    including fallbacks that happened while running (a failed capture or compile);
    `outcome()` gives the same as data.

    `graph_factory(fn, name)` makes the graph wrapper (default: `CudaGraphCall` on `device`);
    tests pass a CPU stand-in to check which buffers each graph copies."""

    # The image calls take float frames only (`deploy.backends.GraphNetworks` may take pixels).
    takes_pixels = False

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        torch_compile: bool = False,
        cuda_graphs: bool = False,
        compile_backend: str | Callable[..., Any] = "inductor",
        compile_mode: str | None = None,
        graph_factory: Callable[[Callable[..., Any], str], Any] | None = None,
    ) -> None:
        self._notes: list[str] = []  # fixed when built; `notes` adds what happened since
        self.graphs: dict[str, Any] = {}  # op name -> its graph wrapper
        self.compiled: dict[str, CompiledCall] = {}  # op name -> its compiled call
        self.requested = {"torch_compile": torch_compile, "cuda_graphs": cuda_graphs}
        graphs = cuda_graphs and (
            graph_factory is not None or (device.type == "cuda" and torch.cuda.is_available())
        )
        if cuda_graphs and not graphs:
            message = (
                f"cuda_graphs is on but the device is {device}: CUDA graphs need a CUDA device, "
                "so the per-frame path runs eagerly"
            )
            self._notes.append(message)
            _warn(message)
        elif graphs:
            self._notes.append(
                "CUDA graphs for the non-key-frame path ("
                + ", ".join(GRAPHED_OPS)
                + f") on {device}, captured once per input shape"
            )
        if graph_factory is None:
            def graph_factory(fn: Callable[..., Any], name: str) -> CudaGraphCall:
                return CudaGraphCall(fn, name, device)
        if torch_compile:
            self._notes.append(f"torch.compile (backend={compile_backend}, mode={compile_mode})")
        score_fusion = not getattr(model, "fuses_features", False)
        for name in OP_NAMES:
            fn: Callable[..., Any] = getattr(model, name)
            if name == "fuse" and score_fusion:
                fusion = model.fusion
                if fusion is None:
                    setattr(self, name, fn)
                    continue
                scores_fn: Callable[..., Any] = fusion
                if torch_compile:
                    fn = self.compiled[name] = CompiledCall(
                        fn, name, compile_backend, compile_mode
                    )
                    scores_fn = self.compiled["fusion"] = CompiledCall(
                        fusion, "fusion", compile_backend, compile_mode
                    )
                if graphs:
                    scores_fn = self.graphs[name] = graph_factory(scores_fn, name)
                setattr(self, name, ScoreFusionCall(fn, scores_fn))
                continue
            if torch_compile:
                fn = self.compiled[name] = CompiledCall(fn, name, compile_backend, compile_mode)
            if graphs and name in GRAPHED_OPS:
                fn = self.graphs[name] = graph_factory(fn, name)
            setattr(self, name, fn)

    def release(self) -> None:
        """Drop every captured CUDA graph (the stream's resolution changed)."""
        for graph in self.graphs.values():
            graph.release()

    @property
    def notes(self) -> list[str]:
        """The notes fixed when built, then every fallback that happened since, in words."""
        return self._notes + fallback_notes(self.graphs, self.compiled)

    def outcome(self) -> dict[str, Any]:
        """What really ran, as data (see `calls_outcome`)."""
        return calls_outcome(self.graphs, self.compiled, **self.requested)

    # Declared for type checkers; bound in __init__.
    reference_features: Callable[[torch.Tensor], torch.Tensor]
    reference_scores: Callable[[torch.Tensor], torch.Tensor]
    update_features: Callable[[torch.Tensor], torch.Tensor]
    update_scores: Callable[[torch.Tensor], torch.Tensor]
    fuse: Callable[..., torch.Tensor]


def fallback_notes(graphs: dict[str, Any], compiled: dict[str, CompiledCall]) -> list[str]:
    """In words, every fallback of these wrappers so far: failed captures, failed compiles."""
    notes = []
    for name, graph in graphs.items():
        for shapes, reason in getattr(graph, "failures", {}).items():
            notes.append(f"CUDA graph capture of {name} failed for inputs {shapes} ({reason}): "
                         "it ran eagerly")
    for name, call in compiled.items():
        if call.failure is not None:
            notes.append(f"torch.compile of {name} failed ({call.failure}): it ran eagerly")
    return notes


def calls_outcome(
    graphs: dict[str, Any],
    compiled: dict[str, CompiledCall],
    cuda_graphs: bool = False,
    torch_compile: bool = False,
) -> dict[str, Any]:
    """What really ran, as data, per requested fast path: `active` (at least one graph
    replay, or one call that returned from compiled code), how many calls ran eagerly
    instead, and the per-op records of `CudaGraphCall.outcome` / `CompiledCall.outcome`.
    Graphs requested off CUDA have no ops and are not active. An op that never ran (no
    non-key frame yet) shows zeros. `{}` when neither fast path was requested."""
    result: dict[str, Any] = {}
    if cuda_graphs:
        ops = {name: graph.outcome() for name, graph in graphs.items() if hasattr(graph, "outcome")}
        result["cuda_graphs"] = {
            "requested": True,
            "active": any(op["replays"] for op in ops.values()),
            "replays": sum(op["replays"] for op in ops.values()),
            "eager_calls": sum(op["eager_calls"] for op in ops.values()),
            "ops": ops,
        }
    if torch_compile:
        ops = {name: call.outcome() for name, call in compiled.items()}
        result["torch_compile"] = {
            "requested": True,
            "active": any(op["compiled_calls"] for op in ops.values()),
            "eager_calls": sum(op["eager_calls"] for op in ops.values()),
            "failures": {name: op["failure"] for name, op in ops.items() if op["failure"]},
            "ops": ops,
        }
    return result


@dataclass
class FlowJob:
    """What the worker thread hands back: the prepared current frame (for the next frame's
    flow), backward flow (N, 2, h, w) float32 on the estimator's device, and its cost in ms."""

    prepared: Any
    flow: torch.Tensor
    milliseconds: float


def flow_can_overlap(estimator: FlowEstimator) -> bool:
    """True for CPU (OpenCV) estimators, which release the GIL and so gain from a thread.
    The torch flow would only compete with the update branch for the same device."""
    return estimator.name in OVERLAPPABLE_FLOWS


class FlowWorker:
    """One lazily started background thread for optical flow (used with `overlap_flow`).

    On a non-key frame the update branch needs only the current image, so the main thread runs
    it while this thread runs `prepare` + `estimate`. Jobs (one per stream of a batch) run one
    after another on the single thread, so the estimator is never used concurrently.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, estimator: FlowEstimator, previous: Any, image: torch.Tensor) -> Future:
        """Start flow from `previous` (prepared) to `image` (1, 3, H, W); returns a Future of
        `FlowJob`."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="accel-flow")
        return self._executor.submit(_flow_job, estimator, previous, image)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _flow_job(estimator: FlowEstimator, previous: Any, image: torch.Tensor) -> FlowJob:
    # Grad mode and the current CUDA device are thread-local: the worker sets its own.
    with torch.inference_mode(), cuda_device_context(image.device):
        start = time.perf_counter()
        prepared = estimator.prepare(image)
        flow = estimator.estimate(previous, prepared).float()
        return FlowJob(prepared, flow, (time.perf_counter() - start) * 1000.0)
