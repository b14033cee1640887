"""CUDA-only checks of the GPU path (skipped without a GPU; the device check script runs them
with `pytest -k cuda`), and the device check's CPU dry run, which CI runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from accel_ros.bench import device_check
from accel_ros.config import PipelineConfig
from accel_ros.model import AccelNet, AccelSegmenter

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.filterwarnings("ignore:cuda_graphs is on but the device is cpu")
def test_device_check_cpu_dry_run(tmp_path: Path) -> None:
    """The prepared GPU check, at toy size on the CPU: every step runs and writes its files."""
    code = device_check.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert code == 0 and report["passed"], report["failures"]
    steps = report["steps"]
    assert set(steps) == {
        "parity", "cuda_tests", "flow_epe", "bench", "bench_torch_flow", "bench_streams",
        "bench_compile",
    }
    streams = json.loads((tmp_path / "bench_streams.json").read_text())
    assert {(row["streams"], row["setup"]) for row in streams["rows"]} == {
        (1, "one_node"), (1, "separate"), (2, "one_node"), (2, "separate")
    }
    torch_flow = json.loads((tmp_path / "bench_torch_flow.json").read_text())
    assert torch_flow["meta"]["flow"] == "torch"
    parity = steps["parity"]["configs"]
    assert set(parity) == set(device_check.TOLERANCES)
    assert parity["fp32"]["vs_cpu_fp32"] == {"labels": 1.0, "max_probability": 0.0}
    # Every fp32 path is judged and passes; CPU bf16 is reported, not judged (fp16 tolerances).
    judged = {name for name, entry in parity.items() if entry.get("judged", True)}
    assert judged == {"fp32", "fp32_graphs", "fp32_torch_flow"}
    assert all(parity[name]["passed"] for name in judged)
    assert 0.5 < parity["fp16"]["vs_cpu_fp32"]["labels"] <= 1.0
    flows = {row["method"]: row["epe"] for row in steps["flow_epe"]["methods"]}
    assert flows["dis"] < flows["zero"] and flows["torch"] < flows["zero"]
    bench = json.loads((tmp_path / "bench.json").read_text())
    variants = {r["variant"] for r in bench["results"]}
    assert {"reference", "dff", "deeplab", "accel", "tv_lraspp_mobilenet_v3_large"} <= variants
    assert {r["fastpath"] for r in bench["results"]} == {"plain", "bf16"}
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")


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
    from accel_ros.model import StreamFrame

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
