"""precision int8: graphs quantized by NNCF on calibration frames, cached with their own key
(weights, input size, calibration set) and pinned by sha256; their labels against fp32."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from accel_ros.cli.main import main as cli_main
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.data.synthetic import SceneConfig, SyntheticDrivingScene
from accel_ros.deploy.backends import check_runtime
from accel_ros.deploy.export import CACHE_ENV, ExportKey, read_manifest
from accel_ros.deploy.quantize import (
    CALIBRATION_ENV,
    QUANTIZED_GRAPHS,
    CalibrationMissingError,
    cached_int8_graphs,
    calibration_set,
    int8_key,
    quantization_settings,
)
from accel_ros.machine import CpuInfo
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.stream import AccelSegmenter

pytest.importorskip("onnx")
pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = (64, 96)


@pytest.fixture(scope="module")
def model() -> AccelNet:
    """The shipped architecture in small (Lite0 / Lite0 at half scale, narrow heads)."""
    torch.manual_seed(0)
    return AccelNet(ModelConfig(
        num_classes=5, reference_backbone="efficientnet_lite0",
        update_backbone="efficientnet_lite0", head_channels=16, update_head_channels=8,
        update_input_scale=0.5, input_size=SIZE)).eval()


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    scene = SyntheticDrivingScene(SceneConfig(height=SIZE[0], width=SIZE[1], seed=3), 20)
    return [scene.render(t).image for t in range(0, 20, 2)]


@pytest.fixture
def frames_folder(tmp_path: Path, clip) -> Path:
    """A folder of calibration frames, as a user's camera would give them (PNG, BGR on disk)."""
    folder = tmp_path / "calibration"
    folder.mkdir()
    for index, frame in enumerate(clip[:6]):
        cv2.imwrite(str(folder / f"frame_{index:03d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def test_int8_graphs_round_trip_through_the_cache(model, frames_folder, tmp_path) -> None:
    root = tmp_path / "cache"
    first = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    assert first.exported
    key = first.manifest.key
    assert key.precision == "int8"
    assert key.calibration == calibration_set(frames_folder).identity
    assert first.folder.name.endswith(f"-int8-{key.calibration[:12]}")
    assert first.manifest.calibration["frames"] == [f"frame_{i:03d}.png" for i in range(6)]
    for name in QUANTIZED_GRAPHS:  # OpenVINO IR, both files pinned
        entry = first.manifest.graphs[name]
        assert entry["file"] == f"{name}.xml" and entry["weights"]["file"] == f"{name}.bin"
        assert (first.folder / entry["weights"]["file"]).stat().st_size == entry["weights"]["bytes"]
    assert first.manifest.graphs["reference_scores"]["file"] == "reference_scores.onnx"

    again = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    assert not again.exported and again.folder == first.folder

    # A changed .bin (same size) is stale: quantized again, in the same folder.
    weights = first.folder / "reference_features.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    lines: list[str] = []
    repaired = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root,
                                  log=lines.append)
    assert repaired.exported and repaired.folder == first.folder
    assert "reference_features.bin changed on disk" in lines[-1]

    # Another calibration set, or other weights: another key, quantized again.
    cv2.imwrite(str(frames_folder / "frame_000.png"), np.zeros((*SIZE, 3), np.uint8))
    other_frames = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    assert other_frames.exported and other_frames.folder != first.folder
    changed = AccelNet(model.config).eval()
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    other_weights = cached_int8_graphs(changed, SIZE, calibration=frames_folder, root=root,
                                       log=None)
    assert other_weights.exported
    assert other_weights.manifest.key.weights_sha256 != key.weights_sha256


def test_a_start_without_calibration_uses_the_exported_int8_graphs(model, frames_folder,
                                                                   tmp_path, monkeypatch) -> None:
    root = tmp_path / "cache"
    monkeypatch.setenv(CALIBRATION_ENV, str(tmp_path / "no such folder"))
    with pytest.raises(CalibrationMissingError) as missing:
        cached_int8_graphs(model, SIZE, root=root, log=None)
    message = str(missing.value)
    assert "\n" not in message and "no such folder is missing" in message
    assert "accel-ros export --precision int8 --calibration DIR" in message

    made = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    found = cached_int8_graphs(model, SIZE, root=root, log=None)  # the frames are not needed
    assert not found.exported and found.folder == made.folder


AMX_XEON = CpuInfo("Intel(R) Xeon(R) Processor", ("AMX", "AVX512-BF16", "VNNI", "AVX512", "AVX2"))
AVX2_ONLY = CpuInfo("Intel(R) Core(TM) i7-6700", ("AVX2",))


def _stem_weight_range(xml: Path) -> int:
    """The largest |int8 weight| of the first convolution in the IR `xml` (127 or 128: full
    8-bit weights; 64 at most: NNCF's overflow fix gave them 7 bits)."""
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    first = next(op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution")
    node = first.input_value(1).get_node()
    while node.get_type_name() != "Constant":  # back through the dequantization ops
        node = node.input_value(0).get_node()
    return int(np.abs(node.get_data().astype(np.int32)).max())


def test_the_overflow_fix_is_off_on_cpus_that_sum_int8_products_in_int32(
        model, frames_folder, tmp_path, monkeypatch) -> None:
    assert quantization_settings(AMX_XEON)["nncf_overflow_fix"] == "disable"
    assert quantization_settings(CpuInfo("AMD EPYC", ("VNNI", "AVX2")))["nncf_overflow_fix"] \
        == "disable"
    assert quantization_settings(AVX2_ONLY)["nncf_overflow_fix"] == "first_layer_only"
    fp32_key = ExportKey.for_model(model, SIZE)
    frames = calibration_set(frames_folder)
    assert int8_key(fp32_key, frames, AMX_XEON) != int8_key(fp32_key, frames, AVX2_ONLY)

    root = tmp_path / "cache"
    monkeypatch.setattr("accel_ros.deploy.quantize.cpu_info", lambda: AMX_XEON)
    full = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    assert _stem_weight_range(full.folder / "reference_features.xml") >= 127
    # Graphs quantized for a VNNI CPU are not taken on a CPU without it: quantized again.
    monkeypatch.setattr("accel_ros.deploy.quantize.cpu_info", lambda: AVX2_ONLY)
    monkeypatch.setenv(CALIBRATION_ENV, str(tmp_path / "no such folder"))
    with pytest.raises(CalibrationMissingError):
        cached_int8_graphs(model, SIZE, root=root, log=None)
    fixed = cached_int8_graphs(model, SIZE, calibration=frames_folder, root=root, log=None)
    assert fixed.exported and dict(fixed.manifest.key.versions)["nncf_overflow_fix"] \
        == "first_layer_only"
    assert _stem_weight_range(fixed.folder / "reference_features.xml") <= 64


def test_int8_labels_agree_with_fp32_on_most_pixels(model, clip, frames_folder, tmp_path,
                                                    monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(CALIBRATION_ENV, str(frames_folder))
    int8 = AccelSegmenter(model, PipelineConfig(device="cpu", backend="openvino",
                                                precision="int8"))
    fp32 = AccelSegmenter(model, PipelineConfig(device="cpu", backend="torch"))
    assert "calibrated on 6 frames of" in int8.fast_path_notes[0]
    with torch.inference_mode():
        equal = [float((int8.process(frame).labels == fp32.process(frame).labels).mean())
                 for frame in clip]
    # Random weights have many near-ties between classes; the shipped model's labels agree on
    # 98-99% of a street's pixels (docs/deploy.md).
    assert np.mean(equal) >= 0.9, equal


def test_int8_runs_on_openvino_only_and_the_export_needs_frames(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match=re.escape(
            "backend torch runs precision fp32 or fp16 or bf16, got 'int8' (int8 runs quantized "
            "graphs in backend openvino or auto)")):
        PipelineConfig(backend="torch", precision="int8")
    with pytest.raises(ValueError, match="backend onnxruntime runs precision fp32, got 'int8'"):
        check_runtime("onnxruntime", "int8")
    assert cli_main(["export", "--checkpoint", "none", "--precision", "int8",
                     "--output", str(tmp_path / "graphs")]) == 2
    assert "--precision int8 needs --calibration DIR" in capsys.readouterr().err
    assert not (tmp_path / "graphs").exists()


def test_export_command_quantizes_beside_the_fp32_graphs(frames_folder, tmp_path, capsys,
                                                         model) -> None:
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", model)
    out = tmp_path / "graphs"
    arguments = ["export", "--checkpoint", str(checkpoint), "--output", str(out),
                 "--precision", "int8", "--calibration", str(frames_folder)]
    assert cli_main(arguments) == 0
    printed = capsys.readouterr().out
    assert "quantizing to int8 on 6 frames of" in printed
    manifest = read_manifest(tmp_path / "graphs-int8")
    assert manifest is not None and manifest.key.precision == "int8"
    assert cli_main(arguments) == 0
    assert "holds these int8 graphs" in capsys.readouterr().out
