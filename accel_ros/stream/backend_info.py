"""What runs a segmenter's networks, as the run summaries report it: the backend actually
running (not the one asked for: `backend: auto` resolves to one), its precision, the device,
the threads and the fast-path notes (graphs exported or loaded from the cache, fallbacks)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..config import PipelineConfig


@dataclass(frozen=True)
class BackendInfo:
    """`backend`: torch, onnxruntime or openvino; `threads`: the CPU threads its networks (and
    torch's warp and flow) run on; `notes`: `AccelSegmenter.fast_path_notes`."""

    backend: str
    precision: str
    device: str
    threads: int
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line: "backend torch, fp32 on cpu, 2 threads", then the notes after ';'."""
        plural = "s" if self.threads != 1 else ""
        line = (f"backend {self.backend}, {self.precision} on {self.device}, "
                f"{self.threads} thread{plural}")
        return "; ".join([line, *self.notes])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the notes as a list)."""
        data = asdict(self)
        data["notes"] = list(self.notes)
        return data


def backend_info(calls: Any, pipeline: PipelineConfig, device: torch.device,
                 notes: list[str] | None = None) -> BackendInfo:
    """The `BackendInfo` of a segmenter's network calls (`FastOps` for backend torch, else
    deploy's `GraphNetworks`, which name their runtime, precision and threads); `notes`
    default to the calls' own."""
    threads = getattr(calls, "threads", None) or torch.get_num_threads()
    return BackendInfo(
        backend=str(getattr(calls, "runtime", "torch")),
        precision=str(getattr(calls, "precision", pipeline.precision)),
        device=str(device),
        threads=int(threads),
        notes=tuple(calls.notes if notes is None else notes),
    )
