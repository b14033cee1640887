"""Data: synthetic driving video with exact flow, CamVid and Cityscapes loaders, augmentation.

All datasets return dicts of torch tensors: images (3, H, W) float RGB in [0, 1], labels
(H, W) int64 with void/ignored pixels = IGNORE_INDEX (255); pair datasets add "key_image"
(the keyframe) and "offset" (how many frames before the current frame it is).
"""

from .camvid import CAMVID_32_CLASSES, CamVidFrames, CamVidPairs, camvid_colors_to_ids
from .cityscapes import CityscapesFrames, CityscapesPairs, label_ids_to_train_ids
from .synthetic import (
    SceneConfig,
    SyntheticDrivingScene,
    SyntheticFrame,
    SyntheticPairs,
    generate_clip,
    write_clip_video,
)
from .transforms import (
    IGNORE_INDEX,
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    eval_transform,
    train_transform,
    worker_init_fn,
)

__all__ = [
    "CAMVID_32_CLASSES",
    "IGNORE_INDEX",
    "CamVidFrames",
    "CamVidPairs",
    "CityscapesFrames",
    "CityscapesPairs",
    "ColorJitter",
    "Compose",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "Resize",
    "SceneConfig",
    "SyntheticDrivingScene",
    "SyntheticFrame",
    "SyntheticPairs",
    "camvid_colors_to_ids",
    "eval_transform",
    "generate_clip",
    "label_ids_to_train_ids",
    "train_transform",
    "worker_init_fn",
    "write_clip_video",
]
