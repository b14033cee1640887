"""Fast paths (model/fastpath.py): each switch gives the plain path's labels on a tiny
random-init model, falls back cleanly where it cannot run, and TorchFlow measures real motion.

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
from accel_ros.model import AccelNet, AccelSegmenter, DISFlow
from accel_ros.model.fastpath import (
    CompiledCall,
    CudaGraphCall,
    FastOps,
    TorchFlow,
    build_flow,
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


def test_channels_last_with_overlap_gives_identical_labels(plain: PlainRun) -> None:
    fast = _labels(plain.model(), plain.frames, channels_last=True, overlap_flow=True)
    for expected, got in zip(plain.labels, fast, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_bf16_autocast_agrees_on_99_percent_of_pixels(plain: PlainRun) -> None:
    half = _labels(plain.model(), plain.frames, precision="bf16")
    for expected, got in zip(plain.labels, half, strict=True):
        assert got.shape == expected.shape and got.dtype == np.uint8
        assert float((got == expected).mean()) >= 0.99


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_match_eager_on_gpu(plain: PlainRun) -> None:
    model = plain.model()
    eager = _labels(model, plain.frames, device="cuda")
    graphed = _labels(model, plain.frames, device="cuda", cuda_graphs=True)
    for expected, got in zip(eager, graphed, strict=True):
        assert float((got == expected).mean()) >= 0.999  # cuDNN may pick other kernels


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
            ops.fuse(features, update[..., :1])
    assert ops.fuse.failure is None


def test_compile_failure_falls_back_to_eager_with_a_warning(tiny_config) -> None:
    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("no C++ compiler in this test")

    model = AccelNet(tiny_config).eval()
    call = CompiledCall(model.reference_scores, "reference_scores", backend=broken_backend)
    features = torch.rand(1, 512, 2, 3)
    with torch.inference_mode():
        expected = model.reference_scores(features)
        with pytest.warns(RuntimeWarning, match="torch.compile of reference_scores failed"):
            got = call(features)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        assert call.failure is not None and "no C++ compiler" in call.failure
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the fallback is decided once: no warning per frame
            torch.testing.assert_close(call(features), expected, rtol=0, atol=0)


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
