"""Fast paths (model/fastpath.py): each switch gives the plain path's labels on a tiny
random-init model, falls back cleanly where it cannot run and says afterwards what really ran,
TorchFlow measures real motion, and the on-device path builds no tensor from host data per
frame. The GPU checks of the same paths are in test_cuda.py.

torch.compile with the default inductor backend needs ~1 min of C++ compilation on a 2-core CPU,
so the default suite checks the compile wiring with dynamo's "eager" backend and the fallback
with a failing backend; the inductor end-to-end test runs only with ACCEL_ROS_SLOW_TESTS=1.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.model import AccelNet, DISFlow
from accel_ros.model.flow import FLOW_ESTIMATORS, TorchFlow, build_flow
from accel_ros.stream import AccelSegmenter
from accel_ros.stream.fastpath import (
    OVERLAPPABLE_FLOWS,
    CompiledCall,
    CudaGraphCall,
    FastOps,
    ScoreFusionCall,
    flow_can_overlap,
)


@dataclass
class PlainRun:
    """The plain path's labels on four moving frames (keyframe, 2 warped frames, keyframe),
    computed once per module: each fast-path test compares against them."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    frames: list[np.ndarray]
    labels: list[np.ndarray]

    def model(self) -> AccelNet:
        """A fresh copy of the model the labels came from (channels_last converts in place)."""
        model = AccelNet(self.config)
        model.load_state_dict(self.state)
        return model


@pytest.fixture(scope="module")
def plain() -> PlainRun:
    import cv2

    # Same model and frames as conftest's tiny_config / moving_frames (module scope cannot use
    # those function-scoped fixtures).
    torch.manual_seed(0)
    config = ModelConfig(
        num_classes=5, reference_backbone="resnet18", update_backbone="resnet18", head_channels=16
    )
    model = AccelNet(config)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, size=(64, 160, 3), dtype=np.uint8), (0, 0), 2.0)
    frames = [np.ascontiguousarray(base[:, 40 - 2 * t : 136 - 2 * t]) for t in range(4)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return PlainRun(config, state, frames, _labels(model, frames))


def _labels(model: AccelNet, frames: list[np.ndarray], **pipeline) -> list[np.ndarray]:
    pipeline.setdefault("device", "cpu")
    pipeline.setdefault("keyframe_interval", 3)
    segmenter = AccelSegmenter(model, PipelineConfig(**pipeline))
    try:
        return [segmenter.process(frame).labels for frame in frames]
    finally:
        segmenter.close()


class _ThreadRecordingDIS(DISFlow):
    """DIS that remembers which thread computed each flow."""

    def __init__(self) -> None:
        super().__init__(scale=0.5)
        self.threads: list[int] = []

    def estimate(self, previous, current):  # type: ignore[override]
        self.threads.append(threading.get_ident())
        return super().estimate(previous, current)


def test_overlap_flow_same_labels_and_flow_runs_in_worker(plain: PlainRun) -> None:
    flow = _ThreadRecordingDIS()
    segmenter = AccelSegmenter(
        plain.model(), PipelineConfig(device="cpu", keyframe_interval=3, overlap_flow=True),
        flow=flow,
    )
    results = [segmenter.process(frame) for frame in plain.frames]
    segmenter.close()
    for expected, result in zip(plain.labels, results, strict=True):
        np.testing.assert_array_equal(result.labels, expected)
    assert [r.is_keyframe for r in results] == [True, False, False, True]
    assert len(flow.threads) == 2 and threading.get_ident() not in flow.threads
    warped = results[1].timings
    assert warped["flow"] > 0 and warped["update"] > 0 and warped["fusion"] > 0


def test_overlap_flow_applies_only_to_cpu_flow(tiny_config) -> None:
    assert flow_can_overlap(DISFlow()) and flow_can_overlap(build_flow("farneback"))
    assert not flow_can_overlap(TorchFlow()) and not flow_can_overlap(build_flow("zero"))
    # Derived from flow.py's registry (the OpenCV estimators), not a list of its own.
    assert OVERLAPPABLE_FLOWS == ("dis", "farneback")
    assert set(OVERLAPPABLE_FLOWS) <= set(FLOW_ESTIMATORS)


def test_channels_last_with_overlap_gives_identical_labels(plain: PlainRun) -> None:
    fast = _labels(plain.model(), plain.frames, channels_last=True, overlap_flow=True)
    for expected, got in zip(plain.labels, fast, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_bf16_autocast_agrees_on_97_percent_of_pixels(plain: PlainRun) -> None:
    # Random-init tiny model: class margins are tiny, and bf16 keeps 8 mantissa bits. Measured
    # 99.6% on keyframes and 98.2% on warped frames (the warp itself runs in float32).
    half = _labels(plain.model(), plain.frames, precision="bf16")
    for expected, got in zip(plain.labels, half, strict=True):
        assert got.shape == expected.shape and got.dtype == np.uint8
        assert float((got == expected).mean()) >= 0.97


def test_cuda_graphs_fall_back_on_cpu_with_a_clear_message(plain: PlainRun) -> None:
    with pytest.warns(RuntimeWarning, match="CUDA graphs need a CUDA device"):
        segmenter = AccelSegmenter(
            plain.model(), PipelineConfig(device="cpu", keyframe_interval=3, cuda_graphs=True)
        )
    assert any("CUDA graphs need a CUDA device" in note for note in segmenter.fast_path_notes)
    for expected, frame in zip(plain.labels, plain.frames, strict=True):
        np.testing.assert_array_equal(segmenter.process(frame).labels, expected)


def test_cuda_graph_call_passes_cpu_tensors_through() -> None:
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return 2 * x

    graphed = CudaGraphCall(double, "double")
    x = torch.arange(6.0).view(1, 6)
    torch.testing.assert_close(graphed(x), 2 * x)
    assert graphed.captured_shapes == 0 and len(calls) == 1


def test_compiled_ops_equal_the_model_ops(tiny_config) -> None:
    """Dynamo tracing with the "eager" backend: same wiring as inductor, no C++ build."""
    model = AccelNet(tiny_config).eval()
    ops = FastOps(model, torch.device("cpu"), torch_compile=True, compile_backend="eager")
    assert any("torch.compile" in note for note in ops.notes)
    image = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        features = model.reference_features(image)
        update = model.update_features(image)
        expected = model.fuse(features, update)
        # One backbone is traced (seconds on a busy CPU); the update branch is the same code.
        torch.testing.assert_close(ops.reference_features(image), features, rtol=0, atol=0)
        got = ops.fuse(ops.reference_features(image), update)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        # A bad input is the caller's error, not the compiler's: it propagates, compile stays.
        with pytest.raises(ValueError, match="fusion inputs differ"):
            scores = model.reference_scores(features)
            ops.fuse(features, update, scores, scores[:, :2])  # class counts differ
    assert isinstance(ops.fuse, ScoreFusionCall) and ops.fuse.full.failure is None


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny_config) -> None:
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler in this test")

    model = AccelNet(tiny_config).eval()
    call = CompiledCall(model.reference_scores, "reference_scores", backend=broken_backend)
    with torch.inference_mode():
        features = model.reference_features(torch.rand(1, 3, 32, 48))
        expected = model.reference_scores(features)
        with pytest.warns(RuntimeWarning, match="torch.compile of reference_scores failed"):
            got = call(features)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert call.failure is not None and "no C++ compiler" in call.failure
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fallback is decided once: no warning per frame
            torch.testing.assert_close(call(features), expected, rtol=0, atol=0)
    # Afterwards it says what ran: two eager calls, no compiled one, and why.
    assert call.outcome() == {"compiled_calls": 0, "eager_calls": 2, "failure": call.failure}


def test_compile_failure_is_reported_by_the_ops_after_the_run(tiny_config) -> None:
    """A compile that fails at run time must show in the notes and the outcome, which a
    benchmark row records: eager timings are never labelled as compiled."""

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler in this test")

    model = AccelNet(tiny_config).eval()
    ops = FastOps(model, torch.device("cpu"), torch_compile=True, compile_backend=broken_backend)
    assert ops.outcome()["torch_compile"]["active"] is False  # nothing ran yet
    assert not any("failed" in note for note in ops.notes)
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="torch.compile of"):
        ops.reference_scores(model.reference_features(torch.rand(1, 3, 32, 48)))
    outcome = ops.outcome()["torch_compile"]
    assert outcome["active"] is False and outcome["eager_calls"] == 1
    assert "no C++ compiler" in outcome["failures"]["reference_scores"]
    assert any("torch.compile of reference_scores failed" in note for note in ops.notes)


@pytest.mark.skipif(
    os.environ.get("ACCEL_ROS_SLOW_TESTS") != "1",
    reason="SLOW: inductor compiles C++ for ~1 min on 2 CPU cores; set ACCEL_ROS_SLOW_TESTS=1",
)
def test_torch_compile_inductor_same_labels(plain: PlainRun) -> None:
    compiled = _labels(plain.model(), plain.frames, torch_compile=True)
    for expected, got in zip(plain.labels, compiled, strict=True):
        np.testing.assert_array_equal(got, expected)


def _texture(seed: int = 0) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (128, 256, 3), dtype=np.uint8), (0, 0), 2.0)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize(("dx", "dy"), [(2, 0), (3, -2), (6, 4)])
def test_torch_flow_recovers_a_known_shift(dx: int, dy: int) -> None:
    base = _texture()
    previous = base[20:84, 60:188]
    current = base[20 - dy : 84 - dy, 60 - dx : 188 - dx]  # current(p) = previous(p - d)
    flow = TorchFlow(scale=1.0)(_tensor(previous), _tensor(current))
    assert flow.shape == (1, 2, 64, 128) and flow.dtype == torch.float32
    inner = flow[0, :, 8:-8, 8:-8]  # away from the border, where content is missing
    # Backward flow: the content at p came from p - d in the previous frame.
    assert abs(float(inner[0].median()) + dx) < 0.1
    assert abs(float(inner[1].median()) + dy) < 0.1
    assert float((inner[0] + dx).abs().mean()) < 0.3


def test_torch_flow_in_the_pipeline(tiny_config, moving_frames) -> None:
    segmenter = AccelSegmenter(
        AccelNet(tiny_config),
        PipelineConfig(device="cpu", keyframe_interval=3, flow_method="torch", flow_scale=1.0),
    )
    assert isinstance(segmenter.flow, TorchFlow)
    segmenter.process(moving_frames[0])
    result = segmenter.process(moving_frames[1])
    assert not result.is_keyframe and result.timings["flow"] > 0
    # The fixture slides 2 px per frame, so the accumulated flow is ~2 input pixels.
    assert abs(segmenter.cache.accumulated_flow - 2.0) < 0.5


@pytest.mark.parametrize("name", ["overlap_flow", "torch_compile", "cuda_graphs"])
def test_fast_path_switches_must_be_booleans(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be true or false"):
        PipelineConfig(**{name: "yes"})
    assert getattr(PipelineConfig(), name) is False


# -- CUDA graph bookkeeping, checked on the CPU with a stand-in for capture/replay -------------
class CpuGraphCall(CudaGraphCall):
    """CudaGraphCall on CPU tensors: "capture" runs fn on the static inputs once, "replay"
    re-runs it and writes into the same static outputs, as a real graph does."""

    def _graphable(self, tensor: torch.Tensor) -> bool:
        return True

    def _record(self, inputs):  # type: ignore[override]
        outputs = self.fn(*inputs)

        def replay() -> None:
            fresh = self.fn(*inputs)
            if isinstance(outputs, torch.Tensor):
                outputs.copy_(fresh)
            else:
                for out, new in zip(outputs, fresh, strict=True):
                    out.copy_(new)

        return replay, outputs

    def _replay(self, graph) -> None:  # type: ignore[override]
        graph()


def _graphed_segmenter(model: AccelNet, **pipeline) -> AccelSegmenter:
    pipeline.setdefault("device", "cpu")
    pipeline.setdefault("keyframe_interval", 3)
    segmenter = AccelSegmenter(model, PipelineConfig(**pipeline))
    segmenter._ops = FastOps(
        segmenter.model, segmenter.device, cuda_graphs=True,
        graph_factory=lambda fn, name: CpuGraphCall(fn, name),
    )
    return segmenter


def test_graph_replay_gives_the_plain_labels_and_fuse_copies_only_scores(plain: PlainRun) -> None:
    segmenter = _graphed_segmenter(plain.model())
    labels = [segmenter.process(frame).labels for frame in plain.frames]
    for expected, got in zip(plain.labels, labels, strict=True):
        np.testing.assert_array_equal(got, expected)
    graphs = segmenter._ops.graphs
    assert set(graphs) == {"reference_scores", "update_features", "update_scores", "fuse"}
    # Score fusion reads two (1, K, h, w) score maps: the graph copies those and nothing else,
    # not the cached (1, C_R, h, w) and update (1, C_U, h, w) features.
    (fuse_inputs,) = graphs["fuse"].static_inputs()
    k = plain.config.num_classes
    assert [tuple(t.shape[:2]) for t in fuse_inputs] == [(1, k), (1, k)]
    # The cache is float32 on keyframes and warped frames: one reference_scores signature.
    assert graphs["reference_scores"].captured_shapes == 1
    assert segmenter.cache.features.dtype == torch.float32


def test_resolution_change_releases_graphs_and_lru_keeps_two(plain: PlainRun) -> None:
    segmenter = _graphed_segmenter(plain.model())
    for frame in plain.frames[:2]:
        segmenter.process(frame)
    update = segmenter._ops.graphs["update_features"]
    assert update.captured_shapes == 1
    small = [np.ascontiguousarray(f[:48, :80]) for f in plain.frames[:2]]
    for frame in small:
        segmenter.process(frame)
    shapes = [tuple(inputs[0].shape) for inputs in update.static_inputs()]
    assert shapes == [(1, 3, 48, 80)]  # the 64x96 graph went with the resolution change

    call = CpuGraphCall(lambda x: 2 * x, "double", max_signatures=2)
    for width in (3, 4, 5, 4):
        torch.testing.assert_close(call(torch.ones(1, width)), torch.full((1, width), 2.0))
    assert [tuple(i[0].shape) for i in call.static_inputs()] == [(1, 5), (1, 4)]  # LRU order
    call.release()
    assert call.captured_shapes == 0


def test_graph_capture_uses_the_configured_device_not_the_current_one(monkeypatch) -> None:
    """With device cuda:1, the warm-up stream, the capture stream, the device context and the
    replay all name cuda:1 (never the current device). torch.cuda is faked: no GPU needed."""
    seen: list[tuple[str, object]] = []

    class FakeStream:
        def __init__(self, device=None) -> None:
            seen.append(("Stream", device))

        def wait_stream(self, other) -> None:
            pass

    class FakeGraph:
        def replay(self) -> None:
            seen.append(("replay", None))

    class Recorder:
        def __init__(self, what: str, value: object) -> None:
            seen.append((what, value))

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            return None

    monkeypatch.setattr(torch.cuda, "device", lambda d: Recorder("device", d))
    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: (
        seen.append(("current_stream", d)), FakeStream(d))[1])
    monkeypatch.setattr(torch.cuda, "stream", lambda s: Recorder("stream", None))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(
        torch.cuda, "graph",
        lambda g, stream=None, capture_error_mode=None: Recorder("graph", stream is not None),
    )
    target = torch.device("cuda", 1)
    call = CudaGraphCall(lambda x: x + 1, "inc", device=target, warmup=1)
    graph, outputs = call._record((torch.zeros(2),))
    call._replay(graph)
    devices = [value for what, value in seen if what in ("device", "Stream", "current_stream")]
    assert devices and all(d == target for d in devices)
    assert ("graph", True) in seen  # an explicit capture stream, made on cuda:1
    assert seen[-2:] == [("device", target), ("replay", None)]
    torch.testing.assert_close(outputs, torch.ones(2))


class FailingCapture(CpuGraphCall):
    """A capture that fails the way a host sync inside the graph makes it fail."""

    def _record(self, inputs):  # type: ignore[override]
        raise RuntimeError("operation not permitted when stream is capturing")


def test_failed_capture_is_recorded_and_the_frames_still_match(plain: PlainRun) -> None:
    """The silent fallback of issue 20: a failed capture ran eagerly with only a warning, and
    the segmenter's notes still claimed graphs. Now the outcome and the notes say it."""
    segmenter = AccelSegmenter(plain.model(), PipelineConfig(device="cpu", keyframe_interval=3))
    segmenter._ops = FastOps(
        segmenter.model, segmenter.device, cuda_graphs=True,
        graph_factory=lambda fn, name: FailingCapture(fn, name),
    )
    with pytest.warns(RuntimeWarning, match="CUDA graph capture of .* failed"):
        labels = [segmenter.process(frame).labels for frame in plain.frames]
    for expected, got in zip(plain.labels, labels, strict=True):
        np.testing.assert_array_equal(got, expected)
    graphs = segmenter._ops.outcome()["cuda_graphs"]
    assert graphs["active"] is False and graphs["replays"] == 0 and graphs["eager_calls"] > 0
    assert all(op["failures"] for op in graphs["ops"].values())
    assert "stream is capturing" in next(iter(graphs["ops"]["fuse"]["failures"].values()))
    assert any("CUDA graph capture of fuse failed" in note
               for note in segmenter.fast_path_notes)


def test_graph_replays_are_counted(plain: PlainRun) -> None:
    segmenter = _graphed_segmenter(plain.model())
    for frame in plain.frames:
        segmenter.process(frame)
    graphs = segmenter._ops.outcome()["cuda_graphs"]
    assert graphs["active"] and graphs["eager_calls"] == 0
    # Two warped frames: update_features, update_scores and fuse replay twice. The caches hold
    # warped scores (exact for this model), so reference_scores replays on the two keyframes
    # only.
    assert graphs["ops"]["fuse"]["replays"] == 2
    assert graphs["ops"]["reference_scores"]["replays"] == 2
    assert graphs["ops"]["fuse"]["shapes"] == [[[1, plain.config.num_classes, 4, 6]] * 2]
    assert FastOps(plain.model(), torch.device("cpu")).outcome() == {}  # nothing requested


# -- no tensor built from host data on the per-frame path -------------------------------------
class HostTensorCounter:
    """Counts tensors built from host (Python or numpy) data: `aten.lift_fresh`, what
    `new_tensor([...])` and `torch.tensor([...])` dispatch to. On a CUDA device each is a
    blocking host->device copy, so the per-frame path must not build any beyond the frame."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if "lift_fresh" in str(func):
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.count = 0
        self.mode = Mode()

    def __enter__(self) -> HostTensorCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)


def test_flow_and_warp_build_no_tensor_from_host_data() -> None:
    from accel_ros.model.warp import flow_to_features, resize_flow, warp

    frames = [_tensor(_texture(seed)[:64, :96]) for seed in (0, 1)]
    flow = TorchFlow(scale=0.5)
    with HostTensorCounter() as counter:
        estimated = flow.estimate(flow.prepare(frames[0]), flow.prepare(frames[1]))
        resized = resize_flow(estimated, (16, 24))
        cells = flow_to_features(estimated, (4, 6), (64, 96))
        warp(torch.rand(1, 8, 4, 6), cells)
    assert counter.count == 0
    assert resized.shape == (1, 2, 16, 24) and cells.shape == (1, 2, 4, 6)


def test_non_key_frame_uploads_only_the_frame(tiny_config, moving_frames) -> None:
    segmenter = AccelSegmenter(
        AccelNet(tiny_config),
        PipelineConfig(device="cpu", keyframe_interval=3, flow_method="torch"),
    )
    segmenter.process(moving_frames[0])
    with HostTensorCounter() as counter:
        result = segmenter.process(moving_frames[1])
    assert not result.is_keyframe
    assert counter.count == 1  # the frame itself (torch.from_numpy), nothing else
