"""`backend: auto`: which runtime and precision run the networks, from measured facts.

Measuring every runtime at each start would take seconds and, on a CPU shared with other
work, give a different answer from one start to the next. `MEASURED` is instead the table of
what was measured (docs/deploy.md, "backend auto"): each runtime and precision with the CPU
features it needs, its time against PyTorch eager and how many of its labels equal torch fp32's
on real street frames. `auto` takes the fastest row whose features this CPU has, whose runtime
is installed and whose labels agree on at least `AGREEMENT` of the pixels; torch where none
qualifies or the networks run on CUDA. int8 (97-99% agreement) never qualifies: it stays
opt-in (`precision: int8`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

import torch

from ..config import PipelineConfig
from ..machine import CpuInfo, cpu_info

# The least share of pixels whose labels equal torch fp32's for auto to take a row.
AGREEMENT = 0.995


@dataclass(frozen=True)
class Measured:
    """One runtime and precision as measured: the CPU `features` it needs (all of them, names
    of `machine.FEATURES`; `cpu_note` says so in words), `agreement`: share of labels equal to
    torch fp32's, `ratio`: Accel k=5 frame time over PyTorch eager's, both on `measured`."""

    backend: str
    precision: str
    features: tuple[str, ...]
    cpu_note: str
    agreement: float
    ratio: float
    measured: str


# Fastest first. Measured with the shipped model (trained on them) on the first 40 frames of
# street 0001TP at 360x480 stamped 1 s apart as recorded, Accel k=5, `process()` on 1 thread
# pinned to one core of a 2-vCPU Intel Xeon with AMX, alternating with torch frame by frame,
# 2026-12-07 (`accel-ros bench --source`, docs/deploy.md "What int8 costs and gains"). bf16
# changed 1.00% of the labels there (0.64% on an AMD EPYC without AMX, issue #31): below
# AGREEMENT, so auto leaves it to those who ask for it (`precision: bf16`).
MEASURED = (
    Measured("openvino", "bf16", ("AMX",), "CPU has AMX", 0.9900, 0.32,
             "Intel Xeon with AMX, 2026-12-07"),
    Measured("openvino", "fp32", (), "any x86 CPU", 0.9999997, 0.55,
             "Intel Xeon with AMX, 2026-12-07; AMD EPYC: 0.650x, 100% (issue #31)"),
)


@dataclass(frozen=True)
class BackendChoice:
    """What runs the networks, and the start-up line that says why."""

    backend: str
    precision: str
    reason: str


def installed_runtimes() -> frozenset[str]:
    """The runtimes `auto` may take: OpenVINO where it and onnx (which exports the graphs)
    import. Looked up, not imported: start-up stays fast."""
    found = set()
    if _importable("openvino") and _importable("onnx"):
        found.add("openvino")
    return frozenset(found)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def choose_backend(
    pipeline: PipelineConfig,
    device: torch.device,
    cpu: CpuInfo | None = None,
    installed: frozenset[str] | None = None,
) -> BackendChoice:
    """The backend and precision of `pipeline` (backend "auto" resolved on `device`). With
    auto, `precision` fp32 asks for torch fp32's labels (within AGREEMENT), so a faster
    precision may be chosen; bf16 / fp16 / int8 are taken as asked."""
    if pipeline.backend != "auto":
        return BackendChoice(pipeline.backend, pipeline.precision, "")
    cpu = cpu_info() if cpu is None else cpu
    installed = installed_runtimes() if installed is None else installed
    why_torch = _torch_only(pipeline, device)
    if why_torch:
        return BackendChoice("torch", pipeline.precision, f"backend auto: torch ({why_torch})")
    if pipeline.precision in ("bf16", "int8"):
        runtime = "openvino" if "openvino" in installed or pipeline.precision == "int8" else "torch"
        return BackendChoice(runtime, pipeline.precision, f"backend auto: {runtime} "
                             f"{pipeline.precision} (precision {pipeline.precision} asked)")
    for row in MEASURED:
        if row.backend not in installed or row.agreement < AGREEMENT:
            continue
        if all(cpu.has(feature) for feature in row.features):
            return BackendChoice(row.backend, row.precision, (
                f"backend auto: {row.backend} {row.precision} ({row.cpu_note}; labels "
                f"{row.agreement:.2%} equal to torch fp32 on CamVid streets at "
                f"{row.ratio:.2f}x its time)"))
    return BackendChoice("torch", "fp32", "backend auto: torch (openvino not installed: "
                         "pip install 'accel_ros[openvino]')")


def _torch_only(pipeline: PipelineConfig, device: torch.device) -> str:
    """Why only torch can run `pipeline` on `device` ('' when a runtime could)."""
    if device.type != "cpu":
        return f"device {device.type}: the runtimes run on the CPU"
    if pipeline.torch_compile or pipeline.cuda_graphs:
        return "torch_compile / cuda_graphs asked"
    if pipeline.precision == "fp16":
        return "precision fp16"
    return ""


def resolve_backend(pipeline: PipelineConfig, device: torch.device
                    ) -> tuple[PipelineConfig, str]:
    """`pipeline` with backend "auto" replaced by its choice, and the line that says what was
    chosen and why ('' for another backend)."""
    choice = choose_backend(pipeline, device)
    if not choice.reason:
        return pipeline, ""
    resolved = dataclasses.replace(pipeline, backend=choice.backend, precision=choice.precision)
    return resolved, choice.reason
