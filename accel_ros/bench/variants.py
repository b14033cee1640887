"""What `accel-ros bench` can time: the variants, the models they need, and the torchvision
peers behind `AccelSegmenter`'s interface.

- `reference`: N_R (DeepLab on the reference backbone, ResNet-101 by default) on every frame.
- `dff`: N_R on keyframes, warped features + N_R's head elsewhere (no update branch).
- `deeplab18/34/50`: the update network N_U alone on every frame.
- `accel18/34/50/101`: the paper's presets (score fusion; feature fusion for Accel-101).
- `deeplab` / `accel`: the update branch alone / Accel of the `--model` configuration.
- peers, what a user would pick instead, every frame: torchvision `tv_deeplabv3_resnet101`,
  `tv_deeplabv3_resnet50`, `tv_deeplabv3_mobilenet_v3_large`, `tv_lraspp_mobilenet_v3_large`
  (weights=None, weights_backbone=None: timing only).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import MODES, PipelineConfig
from ..model import AccelNet, load_model
from ..stream import resolve_device
from ..stream.fastpath import (
    AUTOCAST_DTYPES,
    CompiledCall,
    CudaGraphCall,
    calls_outcome,
    fallback_notes,
)
from ..stream.labels import class_argmax
from ..stream.segmenter import FrameUploader, StageTimer, cuda_device_context, frame_to_tensor

MODEL_KEY = "--model"
# Models of the reference and dff variants: N_R alone.
REFERENCE_ONLY = "reference-only"
# The preset behind the --model variants when no --model is given.
BASE_PRESET = "accel18"
# variant -> (pipeline mode, preset that supplies the update branch or None; MODEL_KEY: the
# --model configuration; for mode "peer": the torchvision builder)
VARIANTS: dict[str, tuple[str, str | None]] = {
    "reference": ("reference", None),
    "dff": ("dff", None),
    "deeplab18": ("deeplab", "accel18"),
    "deeplab34": ("deeplab", "accel34"),
    "deeplab50": ("deeplab", "accel50"),
    "accel18": ("accel", "accel18"),
    "accel34": ("accel", "accel34"),
    "accel50": ("accel", "accel50"),
    "accel101": ("accel", "accel101"),
    # The --model configuration (default accel18's update branch).
    "deeplab": ("deeplab", MODEL_KEY),
    "accel": ("accel", MODEL_KEY),
    # Peers: torchvision single-frame segmentation networks, random init (timing only).
    "tv_deeplabv3_resnet101": ("peer", "deeplabv3_resnet101"),
    "tv_deeplabv3_resnet50": ("peer", "deeplabv3_resnet50"),
    "tv_deeplabv3_mobilenet_v3_large": ("peer", "deeplabv3_mobilenet_v3_large"),
    "tv_lraspp_mobilenet_v3_large": ("peer", "lraspp_mobilenet_v3_large"),
}
PEERS = tuple(v for v, (mode, _) in VARIANTS.items() if mode == "peer")
# "--variants all": the paper's family (the --model variants and the peers are named apart).
FAMILY = tuple(
    v for v, (mode, source) in VARIANTS.items() if mode != "peer" and source != MODEL_KEY
)
# No keyframes: the interval does not apply (the pipeline's single-frame modes, and the peers).
EVERY_FRAME_MODES = (*MODES.select(lambda mode: mode.every_frame), "peer")


def canonical_variant(name: str, reference_backbone: str = "resnet101") -> str:
    """'Accel-18' -> 'accel18', 'DeepLab-101' (the reference backbone) -> 'reference'."""
    key = re.sub(r"[\s_\-]", "", str(name).lower())
    depth = reference_backbone.removeprefix("resnet")
    if key in (f"deeplab{depth}", "reference", "nr", "deeplabreference"):
        return "reference"
    return key


def parse_variants(text: str) -> tuple[str, ...]:
    """A comma list of variant names (loose spelling accepted), where 'all' stands for every
    Accel-family variant (not the peers) and 'peers' for the four torchvision networks."""
    names: list[str] = []
    for raw in (v.strip() for v in text.split(",")):
        if not raw:
            continue
        if raw.lower() == "all":
            names.extend(FAMILY)
        elif raw.lower() == "peers":
            names.extend(PEERS)
        elif raw.lower() in VARIANTS:
            names.append(raw.lower())
        else:
            names.append(canonical_variant(raw))
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ValueError(f"unknown variants {unknown or text!r}; choose from {list(VARIANTS)}")
    return tuple(names)


# -- Accel models ------------------------------------------------------------------------------
def _structure(module: torch.nn.Module) -> tuple:
    return tuple((name, tuple(t.shape)) for name, t in module.state_dict().items())


def model_names(variants: Iterable[str]) -> set[str]:
    """The models `variants` need: preset names, MODEL_KEY and/or REFERENCE_ONLY."""
    return {
        VARIANTS[v][1] or REFERENCE_ONLY for v in variants if VARIANTS[v][0] != "peer"
    }


def build_models(
    variants: Iterable[str], model: str | None = None, **overrides: Any
) -> dict[str, AccelNet]:
    """One AccelNet per model the variants need (`model_names`), all through `load_model`:
    MODEL_KEY is `model` (a preset name or a checkpoint; default BASE_PRESET), REFERENCE_ONLY
    its N_R alone, a preset name that preset; `overrides` (ModelConfig fields, e.g.
    reference_backbone) apply to each. Models whose reference branches have the same shape
    share a single N_R. Weights: a checkpoint's where no override changes it, else random
    (timing does not depend on them)."""
    names = model_names(variants)
    base: AccelNet | None = None
    if names & {MODEL_KEY, REFERENCE_ONLY}:
        base = load_model(model or BASE_PRESET, **overrides).model
    models: dict[str, AccelNet] = {}
    shared: dict[tuple, torch.nn.Module] = {}
    for name in sorted(names):
        if name == MODEL_KEY:
            net = base
        elif name == REFERENCE_ONLY:
            assert base is not None
            net = load_model(dataclasses.replace(base.config, update_backbone=None)).model
        else:
            net = load_model(name, **overrides).model
        assert net is not None
        net = net.eval()
        key = _structure(net.reference)
        if key in shared:
            net.reference = shared[key]  # type: ignore[assignment]
        else:
            shared[key] = net.reference
        models[name] = net
    return models


# -- torchvision peers -------------------------------------------------------------------------
@dataclass
class PeerResult:
    """What `PeerSegmenter.process` returns (the fields of SegmentationResult bench reads)."""

    labels: np.ndarray
    timings: dict[str, float]
    is_keyframe: bool = False


class _NormalisedPeer(torch.nn.Module):
    """A torchvision segmentation network with its ImageNet normalisation, returning the
    "out" scores: image (N, 3, H, W) in [0, 1] -> (N, K, H, W), the graph an exported
    backend runs."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.network((image - self.mean) / self.std)["out"]


class PeerSegmenter:
    """A torchvision single-frame segmentation network behind `AccelSegmenter`'s interface
    (process / reset / close / device / fast_path_notes), every frame a "keyframe" of its own.

    Same frame path as Accel: uint8 upload, float on the device, ImageNet normalisation,
    network, argmax, labels to the host. Precision, channels_last, torch.compile and CUDA
    graphs follow the PipelineConfig; flow and keyframe options do not apply. With backend
    onnxruntime / openvino the network (normalisation included) runs as an exported graph in
    that runtime (`deploy.backends.ExportedModule`, at the PipelineConfig's precision).
    Network time is billed to "feature", argmax and the copy to "output". `close()` frees the
    network at once: a graph or compiled wrapper holds `self._forward`, a reference cycle that
    would otherwise keep the weights (on the GPU) alive until the next garbage collection."""

    def __init__(
        self, builder: str, num_classes: int, pipeline: PipelineConfig, sync_stages: bool = False
    ) -> None:
        from torchvision.models import segmentation

        from ..deploy.auto import resolve_backend

        self.builder = builder
        self.device = resolve_device(pipeline.device)
        # backend auto: the runtime it stands for, as for the Accel segmenters beside it.
        pipeline, backend_note = resolve_backend(pipeline, self.device)
        self.pipeline_config = pipeline
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None,
                                  "num_classes": num_classes}
        if builder.startswith("deeplabv3"):
            kwargs["aux_loss"] = False
        network = _NormalisedPeer(getattr(segmentation, builder)(**kwargs)).eval().to(self.device)
        if pipeline.channels_last:
            network = network.to(memory_format=torch.channels_last)
        self.network: torch.nn.Module | None = network
        self.sync_stages = sync_stages
        self._upload = FrameUploader(self.device)
        # Another runtime runs its own precision: torch's autocast stays off.
        torch_runs = pipeline.backend == "torch"
        self._dtype = AUTOCAST_DTYPES.get(pipeline.precision) if torch_runs else None
        self._notes = [note for note in (backend_note, f"torchvision {builder}, random weights")
                       if note]
        self._compiled: dict[str, CompiledCall] = {}
        self._graphs: dict[str, CudaGraphCall] = {}
        call: Any = self._forward
        if pipeline.torch_compile:
            call = self._compiled[builder] = CompiledCall(call, builder)
        if pipeline.cuda_graphs:
            if self.device.type == "cuda":
                call = self._graphs[builder] = CudaGraphCall(call, builder, self.device)
            else:
                self._notes.append(f"cuda_graphs is on but the device is {self.device}: "
                                   "the network runs eagerly")
        self._exported = None
        if not torch_runs:
            # deploy/ is imported on use: the torch path needs no ONNX packages.
            from ..deploy.backends import ExportedModule

            call = self._exported = ExportedModule(network, builder, pipeline.backend,
                                                   pipeline.precision)
        self._call: Any = call

    @property
    def fast_path_notes(self) -> list[str]:
        exported = self._exported.notes if self._exported is not None else []
        return self._notes + exported + fallback_notes(self._graphs, self._compiled)

    def fast_path_outcome(self) -> dict[str, Any]:
        cfg = self.pipeline_config
        return calls_outcome(self._graphs, self._compiled, cfg.cuda_graphs, cfg.torch_compile)

    def _forward(self, image: torch.Tensor) -> torch.Tensor:
        assert self.network is not None, "PeerSegmenter used after close()"
        return self.network(image)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        """Free the network and its graphs now (the outcome and notes stay readable)."""
        for graph in self._graphs.values():
            graph.release()
        if self._exported is not None:
            self._exported.close()
        self._call = None
        self.network = None

    @torch.inference_mode()
    def process(self, frame: np.ndarray, stamp: float | None = None) -> PeerResult:
        host = frame_to_tensor(frame)
        timer = StageTimer(self.device, self.sync_stages)
        autocast = (
            torch.autocast(self.device.type, dtype=self._dtype, cache_enabled=False)
            if self._dtype is not None else contextlib.nullcontext()
        )
        with cuda_device_context(self.device), autocast:
            image = self._upload(host)
            if self.pipeline_config.channels_last:
                image = image.contiguous(memory_format=torch.channels_last)
            with timer.stage("feature"):
                logits = self._call(image)
            with timer.stage("output"):
                labels = class_argmax(logits)[0].cpu().numpy()
        return PeerResult(labels, timer.finish())
