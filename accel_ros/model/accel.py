"""The Accel network: reference branch, update branch, fusion, (optional) learnable flow."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import ResNetFeatures, load_backbone_weights
from .flow import FlowNetLite
from .fusion import FeatureFusion, ScoreFusion
from .heads import ScoreUpsampler, TaskHead
from .warp import resize_flow, warp

FORWARD_MODES = ("accel", "dff", "deeplab", "reference")


class SegmentationBranch(nn.Module):
    """Feature network + task head: (N, 3, H, W) -> features (N, C, h, w) -> scores (N, K, h, w)."""

    def __init__(
        self, backbone: str, num_classes: int, head_channels: int, project_to: int | None = None
    ) -> None:
        super().__init__()
        self.features = ResNetFeatures(backbone, project_to=project_to)
        self.head = TaskHead(self.features.out_channels, num_classes, head_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


class AccelNet(nn.Module):
    """Accel (Jain et al., CVPR 2019), end-to-end trainable.

    - `reference` (N_R + N_task): deep dilated ResNet, run on keyframes; its features are warped.
    - `update` (N_U + its own head): cheap dilated ResNet, run on every non-key frame.
    - `fusion`: 1x1 conv over concat(s_R, s_U) (score fusion) or over the two feature maps
      (feature fusion, then the reference head scores the fused features).
    - `flow_net`: optional `FlowNetLite` so flow can be trained with everything else.

    Inputs are float RGB in [0, 1]; normalisation happens inside the backbones.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k = config.num_classes
        self.reference = SegmentationBranch(
            config.reference_backbone, k, config.head_channels, config.feature_channels
        )
        self.update: SegmentationBranch | None = None
        self.fusion: nn.Module | None = None
        if config.update_backbone is not None:
            # Feature fusion needs both maps at one width: project N_U to N_R's width.
            project = (
                self.reference.features.out_channels
                if config.fusion == "feature"
                else config.feature_channels
            )
            self.update = SegmentationBranch(
                config.update_backbone, k, config.head_channels, project
            )
            if config.fusion == "score":
                self.fusion = ScoreFusion(k)
            else:
                self.fusion = FeatureFusion(self.reference.features.out_channels)
        self.upsampler = ScoreUpsampler(k, config.upsample)
        self.flow_net = FlowNetLite() if config.flow_net else None

    # -- building blocks, used one by one by the streaming pipeline --------------------------
    def reference_features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_R, h, w)."""
        return self.reference.features(image)

    def reference_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C_R, h, w) -> s_R (N, K, h, w)."""
        return self.reference.head(features)

    def update_features(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_U, h, w)."""
        return self._require_update().features(image)

    def update_scores(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C_U, h, w) -> s_U (N, K, h, w)."""
        return self._require_update().head(features)

    @property
    def fuses_features(self) -> bool:
        return isinstance(self.fusion, FeatureFusion)

    def fuse(
        self,
        reference_features: torch.Tensor,
        update_features: torch.Tensor,
        reference_scores: torch.Tensor | None = None,
        update_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Corrected scores (N, K, h, w) from the warped reference and the update branch.

        Score fusion uses the given scores (computing any that are missing); feature fusion
        ignores them and scores the fused features with the reference head.
        """
        if self.fusion is None:
            raise RuntimeError("this model has no update branch, so there is nothing to fuse")
        if self.fuses_features:
            fused = self.fusion(reference_features, update_features)
            return self.reference.head(fused)
        if reference_scores is None:
            reference_scores = self.reference_scores(reference_features)
        if update_scores is None:
            update_scores = self.update_scores(update_features)
        return self.fusion(reference_scores, update_scores)

    def upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, K, h, w) -> (N, K, H, W)."""
        return self.upsampler(scores, size)

    def propagate(
        self, features: torch.Tensor, flow: torch.Tensor, out_of_frame: str = "border"
    ) -> torch.Tensor:
        """One incremental warp step: cached features (N, C, h, w) moved by backward flow
        (N, 2, h', w') given at any resolution (pixels of that resolution). The one place that
        knows how flow meets features; training, evaluation and the streaming pipeline call it."""
        return warp(features, resize_flow(flow, features.shape[-2:]), out_of_frame)

    def estimate_flow(self, previous: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """Learnable backward flow (N, 2, H/4, W/4) between two (N, 3, H, W) frames."""
        if self.flow_net is None:
            raise RuntimeError("model was built with flow_net=False; pass flows explicitly")
        return self.flow_net(previous, current)

    # -- end-to-end training / evaluation ----------------------------------------------------
    def forward(
        self,
        frames: torch.Tensor,
        flows: torch.Tensor | None = None,
        mode: str = "accel",
        out_of_frame: str = "border",
    ) -> torch.Tensor:
        """Scores for the last frame of a clip whose first frame is the keyframe.

        frames: (N, T, 3, H, W), T >= 1. flows: (N, T-1, 2, h', w') backward flows between
        consecutive frames (any resolution, pixels of that resolution), or None to use the
        learnable flow net. Features are warped incrementally, keyframe -> 1 -> ... -> T-1,
        exactly as at inference. Returns logits (N, K, H, W).
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, T, 3, H, W), got {tuple(frames.shape)}")
        if mode not in FORWARD_MODES:
            raise ValueError(f"mode {mode!r} is not one of {FORWARD_MODES}")
        n, steps, _, height, width = frames.shape
        current = frames[:, -1]
        if mode == "deeplab":
            return self.upsample(self.update_scores(self.update_features(current)), (height, width))
        if mode == "reference":
            return self.upsample(
                self.reference_scores(self.reference_features(current)), (height, width)
            )
        features = self.reference_features(frames[:, 0])
        if flows is not None and (flows.dim() != 5 or flows.shape[:3] != (n, steps - 1, 2)):
            raise ValueError(
                f"flows must be (N, T-1, 2, h, w) = ({n}, {steps - 1}, 2, h, w), "
                f"got {tuple(flows.shape)}"
            )
        for step in range(1, steps):
            if flows is not None:
                flow = flows[:, step - 1]
            else:
                flow = self.estimate_flow(frames[:, step - 1], frames[:, step])
            features = self.propagate(features, flow, out_of_frame)
        if mode == "dff" or steps == 1 or self.update is None:
            # A keyframe (T == 1) is answered by N_R alone, as at inference.
            scores = self.reference_scores(features)
        else:
            scores = self.fuse(features, self.update_features(current))
        return self.upsample(scores, (height, width))

    def load_backbone(self, branch: str, path: str | Path) -> list[str]:
        """Load torchvision-format ImageNet ResNet weights into the `reference` or `update`
        feature network; returns the trunk parameters the file did not provide."""
        target = {"reference": self.reference, "update": self.update}.get(branch)
        if target is None:
            raise ValueError(f"branch must be 'reference' or 'update' (present), got {branch!r}")
        return load_backbone_weights(target.features, path)

    def _require_update(self) -> SegmentationBranch:
        if self.update is None:
            raise RuntimeError("this model has no update branch (update_backbone=None)")
        return self.update
