"""backend auto (the default): the measured table's choice on a CPU, torch where no runtime is
installed or the networks run on CUDA, and the start-up notes say which and why."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.deploy import auto
from accel_ros.deploy.auto import AGREEMENT, MEASURED, choose_backend
from accel_ros.deploy.export import CACHE_ENV
from accel_ros.machine import CpuInfo
from accel_ros.model import AccelNet
from accel_ros.stream import AccelSegmenter

CPU = torch.device("cpu")
AMX = CpuInfo("Intel Xeon", ("AMX", "AVX512-BF16", "VNNI", "AVX512"))
EPYC = CpuInfo("AMD EPYC", ("AVX512-BF16", "VNNI", "AVX512"))  # no AMX (issue #31's CPU)
PLAIN = CpuInfo("x86", ())
OPENVINO = frozenset({"openvino"})


def test_auto_is_the_default_backend() -> None:
    assert PipelineConfig().backend == "auto"


def test_auto_takes_the_fastest_measured_row_whose_labels_agree() -> None:
    # bf16 was measured below AGREEMENT on street frames, with AMX or without: fp32 everywhere.
    for cpu in (AMX, EPYC, PLAIN):
        choice = choose_backend(PipelineConfig(), CPU, cpu, OPENVINO)
        assert (choice.backend, choice.precision) == ("openvino", "fp32")
        assert choice.reason.startswith("backend auto: openvino fp32 (any x86 CPU; labels 100.00%")
    bf16 = next(row for row in MEASURED if row.precision == "bf16")
    assert bf16.agreement < AGREEMENT
    assert not any(row.precision == "int8" for row in MEASURED)


def test_a_row_measured_to_agree_is_taken_where_the_cpu_has_its_features(monkeypatch) -> None:
    fast = dataclasses.replace(MEASURED[0], agreement=0.998)
    monkeypatch.setattr(auto, "MEASURED", (fast, *MEASURED[1:]))
    amx = choose_backend(PipelineConfig(), CPU, AMX, OPENVINO)
    assert (amx.backend, amx.precision) == ("openvino", "bf16")
    assert amx.reason.startswith("backend auto: openvino bf16 (CPU has AMX; labels 99.80% equal")
    epyc = choose_backend(PipelineConfig(), CPU, EPYC, OPENVINO)
    assert (epyc.backend, epyc.precision) == ("openvino", "fp32")


def test_auto_is_torch_without_a_runtime_or_on_cuda() -> None:
    none = choose_backend(PipelineConfig(), CPU, AMX, frozenset())
    assert (none.backend, none.precision) == ("torch", "fp32")
    assert none.reason == ("backend auto: torch (openvino not installed: pip install "
                           "'accel_ros[openvino]')")
    cuda = choose_backend(PipelineConfig(), torch.device("cuda"), AMX, OPENVINO)
    assert cuda.backend == "torch" and "device cuda" in cuda.reason
    compiled = choose_backend(PipelineConfig(torch_compile=True), CPU, AMX, OPENVINO)
    assert compiled.backend == "torch"
    fp16 = choose_backend(PipelineConfig(precision="fp16"), CPU, AMX, OPENVINO)
    assert (fp16.backend, fp16.precision) == ("torch", "fp16")


def test_auto_keeps_a_precision_asked_for() -> None:
    int8 = choose_backend(PipelineConfig(precision="int8"), CPU, AMX, OPENVINO)
    assert (int8.backend, int8.precision) == ("openvino", "int8")
    bf16 = choose_backend(PipelineConfig(precision="bf16"), CPU, PLAIN, frozenset())
    assert (bf16.backend, bf16.precision) == ("torch", "bf16")
    named = choose_backend(PipelineConfig(backend="torch"), CPU, AMX, OPENVINO)
    assert (named.backend, named.reason) == ("torch", "")


def _tiny() -> AccelNet:
    return AccelNet(ModelConfig(num_classes=4, reference_backbone="resnet18",
                                update_backbone="resnet18", head_channels=8,
                                input_size=(32, 48))).eval()


def test_segmenter_names_the_choice_when_no_runtime_is_installed() -> None:
    segmenter = AccelSegmenter(_tiny(), PipelineConfig(device="cpu"))
    assert segmenter.pipeline_config.backend == "torch"
    assert segmenter.fast_path_notes[0].startswith("backend auto: torch (openvino not installed")


@pytest.mark.runtimes_installed
def test_segmenter_runs_the_table_choice_where_openvino_is_installed(tmp_path,
                                                                     monkeypatch) -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(auto, "cpu_info", lambda: CpuInfo("x86", ()))  # no features: the fp32 row
    segmenter = AccelSegmenter(_tiny(), PipelineConfig(device="cpu"))
    config = segmenter.pipeline_config
    assert (config.backend, config.precision) == ("openvino", "fp32")
    notes = segmenter.fast_path_notes
    assert notes[0].startswith("backend auto: openvino fp32 (any x86 CPU; labels 100.00% equal")
    assert notes[1].startswith("backend openvino (fp32, ") and "graphs for 32x48" in notes[1]
