"""CUDA-only checks of the GPU path. Every test here needs a GPU (skipped without one): the
device check (accel_ros/bench/device_check.py) runs this whole file and fails a GPU run in
which none of them executed, or any skipped. CPU tests, the device check's dry run among them,
belong elsewhere (test_bench.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from accel_ros.config import PipelineConfig
from accel_ros.model import AccelNet
from accel_ros.stream import AccelSegmenter

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
pytestmark = needs_cuda


def _segmenter(tiny_config, **pipeline) -> AccelSegmenter:
    pipeline.setdefault("device", "cuda")
    pipeline.setdefault("keyframe_interval", 3)
    return AccelSegmenter(AccelNet(tiny_config), PipelineConfig(**pipeline),
                          return_max_probability=True)


@needs_cuda
def test_cuda_fp16_cache_is_float32_and_graphs_capture_once(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, precision="fp16", cuda_graphs=True)
    for frame in moving_frames:
        result = seg.process(frame)
        assert seg.cache.features.dtype == torch.float32
        assert result.max_probability.shape == (64, 96)
    assert seg.device.index is not None  # 'cuda' resolved to an indexed device
    graphs = seg._ops.graphs
    assert graphs["reference_scores"].captured_shapes == 1
    (fuse_inputs,) = graphs["fuse"].static_inputs()
    assert [t.shape[1] for t in fuse_inputs] == [tiny_config.num_classes] * 2


@needs_cuda
def test_cuda_matches_cpu_labels_in_fp32(tiny_config, moving_frames) -> None:
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        model = AccelNet(tiny_config)
        cpu = AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=3,
                                                   flow_method="torch"))
        cpu_labels = [cpu.process(f).labels for f in moving_frames]
        gpu = AccelSegmenter(model, PipelineConfig(device="cuda", keyframe_interval=3,
                                                   flow_method="torch"))
        for expected, frame in zip(cpu_labels, moving_frames, strict=True):
            assert float((gpu.process(frame).labels == expected).mean()) >= 0.995
    finally:
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cuda.matmul.allow_tf32 = True


@needs_cuda
def test_cuda_upload_is_pinned_uint8(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config)
    seg.process(moving_frames[0])
    staging = seg._upload.staging()
    assert staging is not None and staging.is_pinned() and staging.dtype == torch.uint8
    np.testing.assert_array_equal(staging.numpy(), moving_frames[0])


@needs_cuda
def test_cuda_batch_frames_stage_in_their_own_buffers(tiny_config, moving_frames) -> None:
    """Frames of one batch are staged while the previous frame's copy may be in flight: each
    needs its own page-locked buffer, and each stream gets its own frame's labels."""
    from accel_ros.stream import StreamFrame

    seg = _segmenter(tiny_config)
    seg.configure_streams(["a", "b"])
    flipped = np.ascontiguousarray(moving_frames[0][:, ::-1])
    results = seg.process_batch([StreamFrame("a", moving_frames[0]), StreamFrame("b", flipped)])
    np.testing.assert_array_equal(seg._upload.staging(0).numpy(), moving_frames[0])
    np.testing.assert_array_equal(seg._upload.staging(1).numpy(), flipped)
    for result, frame in zip(results, (moving_frames[0], flipped), strict=True):
        alone = AccelSegmenter(seg.model, PipelineConfig(device="cuda", keyframe_interval=3))
        assert float((result.labels == alone.process(frame).labels).mean()) >= 0.995


@needs_cuda
def test_cuda_torch_flow_stays_on_the_device(moving_frames) -> None:
    from accel_ros.model.flow import TorchFlow

    frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float().cuda() / 255
              for f in moving_frames[:2]]
    flow = TorchFlow(scale=1.0)(frames[0], frames[1])
    assert flow.is_cuda and flow.dtype == torch.float32
    # The fixture slides 2 px right per frame: backward flow u ~ -2 inside the frame.
    assert abs(float(flow[0, 0, 8:-8, 8:-8].median()) + 2.0) < 0.3


@needs_cuda
def test_cuda_graphs_match_eager_and_really_replay(tiny_config, moving_frames) -> None:
    model = AccelNet(tiny_config)
    eager_seg = AccelSegmenter(model, PipelineConfig(device="cuda", keyframe_interval=3))
    graphed = AccelSegmenter(model, PipelineConfig(device="cuda", keyframe_interval=3,
                                                   cuda_graphs=True))
    for frame in moving_frames:
        expected = eager_seg.process(frame).labels
        got = graphed.process(frame).labels
        assert float((got == expected).mean()) >= 0.999  # cuDNN may pick other kernels
    # What ran: graphs captured and replayed, no capture failure, no eager fallback.
    outcome = graphed._ops.outcome()["cuda_graphs"]
    assert outcome["active"] and outcome["replays"] > 0 and outcome["eager_calls"] == 0
    assert not any(op["failures"] for op in outcome["ops"].values())
    assert not any("failed" in note for note in graphed.fast_path_notes)


@needs_cuda
def test_cuda_torch_flow_and_warp_never_wait_for_the_host(moving_frames) -> None:
    """The on-device flow path runs without a blocking host copy or sync (issue 20: constants
    built with new_tensor([...]) cost one wait each, about 6 per non-key frame)."""
    from accel_ros.model.flow import TorchFlow
    from accel_ros.model.warp import flow_to_features, warp

    frames = [torch.from_numpy(f).permute(2, 0, 1)[None].float().cuda() / 255
              for f in moving_frames[:2]]
    features = torch.rand(1, 8, 4, 6, device="cuda")
    flow = TorchFlow(scale=0.5)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        estimated = flow.estimate(flow.prepare(frames[0]), flow.prepare(frames[1]))
        warped = warp(features, flow_to_features(estimated, (4, 6), (64, 96)))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert warped.shape == features.shape and warped.is_cuda
