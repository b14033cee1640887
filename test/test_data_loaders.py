"""CamVid / Cityscapes loaders on tiny fake trees, paired transforms, and (when present) the
real CamVid copy in ../shared/camvid."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from accel_ros.data.camvid import (
    CAMVID_32_CLASSES,
    CamVidFrames,
    CamVidPairs,
    camvid_colors_to_ids,
    list_camvid,
    parse_frame_name,
    read_ids,
)
from accel_ros.data.cityscapes import CityscapesFrames, CityscapesPairs, label_ids_to_train_ids
from accel_ros.data.transforms import (
    IGNORE_INDEX,
    ColorJitter,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    hflip,
    train_transform,
)

REAL_CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "camvid"
SIZE = (6, 8)  # (H, W) of every fake image


def _write_rgb(path: Path, value: int) -> None:
    """Solid image whose red channel is `value`: lets a test tell which file it got."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    image[..., 0] = value
    image[..., 1] = 7
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _write_gray(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), ids.astype(np.uint8))


def _red(image: torch.Tensor) -> int:
    return round(float(image[0, 0, 0]) * 255)


# ----------------------------------------------------------------------- CamVid, SegNet layout

# sequence -> frame names (the part after the underscore)
SEGNET_TRAIN = {
    "0001TP": ["006690", "006720", "006750", "006780", "006810"],
    "0006R0": ["f00930", "f00960", "f00990"],
    # A jump of 1950 frames, as in the real train split: not a video pair across it.
    "0016E5": ["00390", "00420", "02370", "02400"],
}


@pytest.fixture()
def segnet_root(tmp_path: Path) -> Path:
    root = tmp_path / "camvid"
    value = 10
    for sequence, frames in SEGNET_TRAIN.items():
        for frame in frames:
            name = f"{sequence}_{frame}.png"
            _write_rgb(root / "train" / name, value)
            ids = np.full(SIZE, value % 11, dtype=np.uint8)
            ids[0, 0] = 11  # void
            _write_gray(root / "trainannot" / name, ids)
            value += 10
    _write_rgb(root / "val" / "0016E5_07959.png", 5)
    _write_gray(root / "valannot" / "0016E5_07959.png", np.full(SIZE, 3))
    return root


def _file_value(root: Path, name: str) -> int:
    image = cv2.imread(str(root / "train" / f"{name}.png"))
    return int(image[0, 0, 2])  # BGR on disk


def test_parse_frame_name() -> None:
    assert parse_frame_name("0001TP_006690") == ("0001TP", 6690)
    assert parse_frame_name("0006R0_f00930") == ("0006R0", 930)
    assert parse_frame_name("Seq05VD_f02370") == ("Seq05VD", 2370)
    with pytest.raises(ValueError, match="sequence"):
        parse_frame_name("nounderscore")


def test_segnet_frames(segnet_root: Path) -> None:
    frames = CamVidFrames(segnet_root, "train")
    assert len(frames) == sum(len(v) for v in SEGNET_TRAIN.values())
    sample = frames[0]
    assert set(sample) == {"image", "labels", "name"}
    assert sample["name"] == "0001TP_006690"
    assert sample["image"].shape == (3, *SIZE) and sample["image"].dtype == torch.float32
    assert sample["labels"].shape == SIZE and sample["labels"].dtype == torch.int64
    assert _red(sample["image"]) == _file_value(segnet_root, "0001TP_006690")
    assert int(sample["labels"][0, 0]) == IGNORE_INDEX  # void 11 -> ignore
    assert int(sample["labels"][1, 1]) == _file_value(segnet_root, "0001TP_006690") % 11
    assert len(CamVidFrames(segnet_root, "val")) == 1


def test_segnet_pairs_stay_in_sequence_with_correct_offsets(segnet_root: Path) -> None:
    pairs = CamVidPairs(segnet_root, "train", offsets=(1, 2))
    # Runs: 0001TP (5 files), 0006R0 (3), 0016E5 split by the gap into 2 + 2.
    expected = sum(max(0, n - 1) + max(0, n - 2) for n in (5, 3, 2, 2))
    assert len(pairs) == expected
    for i in range(len(pairs)):
        sample = pairs[i]
        key_seq, key_frame = parse_frame_name(sample["key_name"])
        seq, frame = parse_frame_name(sample["name"])
        assert key_seq == seq
        assert frame - key_frame == sample["frame_gap"] and sample["frame_gap"] < 90
        assert _red(sample["key_image"]) == _file_value(segnet_root, sample["key_name"])
        assert _red(sample["image"]) == _file_value(segnet_root, sample["name"])
        names = [f"{seq}_{f}" for f in SEGNET_TRAIN[seq]]
        assert names.index(sample["name"]) - names.index(sample["key_name"]) == sample["offset"]
    # Without the gap rule the 0016E5 run is one: 3 + 2 pairs instead of 1 + 1 + 0 + 0.
    assert len(CamVidPairs(segnet_root, "train", (1, 2), max_frame_gap=None)) == expected + 3


def test_segnet_errors_name_the_missing_path(segnet_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CamVidFrames(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="test"):
        CamVidFrames(segnet_root, "test")
    (segnet_root / "trainannot" / "0006R0_f00960.png").unlink()
    with pytest.raises(FileNotFoundError, match="0006R0_f00960"):
        CamVidPairs(segnet_root, "train")
    with pytest.raises(ValueError, match="offsets"):
        CamVidPairs(segnet_root, "val", offsets=(0,))


# --------------------------------------------------------------------- CamVid, original layout


def test_colour_table_is_complete_and_unique() -> None:
    colours = [c for _, c, _ in CAMVID_32_CLASSES]
    assert len(CAMVID_32_CLASSES) == 32 and len(set(colours)) == 32
    assert {i for _, _, i in CAMVID_32_CLASSES} == set(range(12))


def test_original_layout_maps_32_colours_to_11_classes(tmp_path: Path) -> None:
    root = tmp_path / "CamVid"
    names = {"LaneMkgsDriv": 3, "SUVPickupTruck": 8, "Child": 9, "Sky": 0, "Wall": 1,
             "VegetationMisc": 5, "MotorcycleScooter": 10, "Void": IGNORE_INDEX}
    colour = {n: c for n, c, _ in CAMVID_32_CLASSES}
    stems = ["0001TP_006690", "0001TP_006720", "Seq05VD_f00000"]
    for i, stem in enumerate(stems):
        _write_rgb(root / "701_StillsRaw_full" / f"{stem}.png", 50 + i)
        label = np.zeros((*SIZE, 3), dtype=np.uint8)
        for j, name in enumerate(names):
            label[0, j] = colour[name]
        label[1, 0] = (1, 2, 3)  # not a CamVid colour
        path = root / "LabeledApproved_full" / f"{stem}_L.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(label, cv2.COLOR_RGB2BGR))
    every = CamVidFrames(root, "all")
    assert [s.name for s in every.items] == sorted(stems)
    labels = every[0]["labels"]
    assert labels[0, : len(names)].tolist() == list(names.values())
    assert int(labels[1, 0]) == IGNORE_INDEX
    assert int(labels[2, 2]) == IGNORE_INDEX  # black (0, 0, 0) is CamVid's Void
    # A SegNet-style list file selects the split.
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/0001TP_006690.png /SegNet/CamVid/trainannot/0001TP_006690.png\n"
        "/SegNet/CamVid/train/0001TP_006720.png /SegNet/CamVid/trainannot/0001TP_006720.png\n"
    )
    pairs = CamVidPairs(root, "train", offsets=(1,))
    assert len(pairs) == 1
    sample = pairs[0]
    assert (sample["key_name"], sample["name"]) == ("0001TP_006690", "0001TP_006720")
    assert (_red(sample["key_image"]), _red(sample["image"])) == (50, 51)
    with pytest.raises(FileNotFoundError, match=r"val\.txt"):
        CamVidFrames(root, "val")
    (root / "LabeledApproved_full" / "Seq05VD_f00000_L.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"Seq05VD_f00000_L\.png"):
        CamVidFrames(root, "all")


def test_colours_to_ids_vectorised() -> None:
    rgb = np.array([[[128, 64, 128], [64, 0, 128], [9, 9, 9]]], dtype=np.uint8)
    assert camvid_colors_to_ids(rgb).tolist() == [[3, 8, 11]]


# -------------------------------------------------------------------------------- Cityscapes


@pytest.fixture()
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for city, seq, labelled in (("aachen", "000000", 19), ("bochum", "000042", 1019)):
        folder = root / "leftImg8bit_sequence" / "train" / city
        for frame in range(labelled - 4, labelled + 2):
            _write_rgb(folder / f"{city}_{seq}_{frame:06d}_leftImg8bit.png", frame % 200)
        ids = np.array([[7, 26, 0, 24, 33, 255, 4, 23]] * SIZE[0], dtype=np.uint8)
        gt = root / "gtFine" / "train" / city / f"{city}_{seq}_{labelled:06d}_gtFine_labelIds.png"
        _write_gray(gt, ids)
    return root


def test_label_ids_to_train_ids() -> None:
    ids = np.array([[7, 8, 11, 26, 33, 0, 1, 255, 6]], dtype=np.uint8)
    assert label_ids_to_train_ids(ids).tolist() == [[0, 1, 2, 13, 18, 255, 255, 255, 255]]


def test_cityscapes_pairs(cityscapes_root: Path) -> None:
    pairs = CityscapesPairs(cityscapes_root, "train", offsets=(1, 2, 3))
    assert len(pairs) == 2 * 3
    for i in range(len(pairs)):
        sample = pairs[i]
        city, seq, frame = sample["name"].split("_")
        key_city, key_seq, key_frame = sample["key_name"].split("_")
        assert (key_city, key_seq) == (city, seq)
        assert int(frame) - int(key_frame) == sample["offset"]
        assert _red(sample["image"]) == int(frame) % 200
        assert _red(sample["key_image"]) == int(key_frame) % 200
        assert sample["labels"][0].tolist() == [0, 13, 255, 11, 18, 255, 255, 10]
    frames = CityscapesFrames(cityscapes_root, "train")
    assert [frames[i]["name"] for i in range(2)] == ["aachen_000000_000019",
                                                     "bochum_000042_001019"]


def test_cityscapes_errors(cityscapes_root: Path) -> None:
    with pytest.raises(ValueError, match="snippet"):
        CityscapesPairs(cityscapes_root, "train", offsets=(20,))
    with pytest.raises(FileNotFoundError, match="val"):
        CityscapesPairs(cityscapes_root, "val")
    with pytest.raises(FileNotFoundError, match="aachen_000000_000014_leftImg8bit"):
        CityscapesPairs(cityscapes_root, "train", offsets=(5,))


# -------------------------------------------------------------------------------- transforms


def _aligned_sample(height: int = 12, width: int = 16) -> dict:
    """Image channels encode x and y; key = image / 2; labels = (x + y) % 11."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    image = torch.stack([xs / (width - 1), ys / (height - 1), torch.full((height, width), 0.5)])
    return {"key_image": image / 2, "image": image, "labels": (xs + ys) % 11, "name": "x"}


def _decode(sample: dict, height: int = 12, width: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.round(sample["image"][0] * (width - 1)).long()
    y = torch.round(sample["image"][1] * (height - 1)).long()
    return x, y


def test_hflip_twice_is_identity_and_keeps_alignment() -> None:
    sample = _aligned_sample()
    once = hflip(sample)
    assert torch.equal(once["labels"][:, 0], sample["labels"][:, -1])
    twice = hflip(once)
    for key in ("key_image", "image", "labels"):
        assert torch.equal(twice[key], sample[key])
    flipped = RandomHorizontalFlip(p=1.0)(sample)
    assert torch.equal(flipped["image"], once["image"]) and flipped["name"] == "x"


def test_random_crop_takes_the_same_window_everywhere() -> None:
    sample = _aligned_sample()
    out = RandomCrop((5, 7))(sample, torch.Generator().manual_seed(3))
    assert out["image"].shape == (3, 5, 7) and out["labels"].shape == (5, 7)
    assert torch.allclose(out["key_image"], out["image"] / 2)
    x, y = _decode(out)
    assert torch.equal(out["labels"], (x + y) % 11)
    # Contiguous window: x increases by one per column.
    assert torch.equal(x[0], x[0, 0] + torch.arange(7))


def test_random_crop_pads_labels_with_ignore_index() -> None:
    out = RandomCrop((20, 24))(_aligned_sample(), torch.Generator().manual_seed(0))
    assert out["labels"].shape == (20, 24)
    assert (out["labels"][12:, :] == IGNORE_INDEX).all()
    assert (out["labels"][:, 16:] == IGNORE_INDEX).all()
    assert (out["image"][:, 12:, :] == 0).all()
    assert (out["labels"][:12, :16] < 11).all()


def test_random_scale_and_resize_keep_alignment() -> None:
    sample = _aligned_sample()
    out = RandomScale(1.5, 1.5)(sample, torch.Generator().manual_seed(0))
    assert out["image"].shape == (3, 18, 24) and out["labels"].shape == (18, 24)
    assert torch.allclose(out["key_image"], out["image"] / 2, atol=1e-6)
    assert set(out["labels"].unique().tolist()) <= set(range(11))
    small = Resize((6, 8))(sample)
    assert small["image"].shape == (3, 6, 8) and small["labels"].shape == (6, 8)
    assert set(small["labels"].unique().tolist()) <= set(sample["labels"].unique().tolist())


def test_colour_jitter_same_on_both_frames_labels_untouched() -> None:
    sample = _aligned_sample()
    sample["key_image"] = sample["image"].clone()
    out = ColorJitter(0.4, 0.4, 0.4)(sample, torch.Generator().manual_seed(5))
    assert torch.equal(out["key_image"], out["image"])
    assert not torch.equal(out["image"], sample["image"])
    assert torch.equal(out["labels"], sample["labels"])
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0


def test_transforms_are_seeded_and_leave_global_rng_alone() -> None:
    state = torch.get_rng_state()
    make = lambda: train_transform((8, 8), scale=(0.75, 1.5), seed=0)  # noqa: E731
    first, second = make(), make()
    a = first(_aligned_sample())
    b = second(_aligned_sample())
    for key in ("key_image", "image", "labels"):
        assert torch.equal(a[key], b[key])
    assert a["image"].shape == (3, 8, 8)
    c = first(_aligned_sample(), torch.Generator().manual_seed(123))
    d = second(_aligned_sample(), torch.Generator().manual_seed(123))
    assert torch.equal(c["labels"], d["labels"])
    assert torch.equal(torch.get_rng_state(), state)


def test_transform_rejects_mismatched_sizes() -> None:
    sample = _aligned_sample()
    sample["labels"] = sample["labels"][:-1]
    with pytest.raises(ValueError, match="mismatched"):
        RandomCrop((4, 4))(sample)


# ------------------------------------------------------------------------- real CamVid data


@pytest.mark.skipif(not REAL_CAMVID.is_dir(), reason="../shared/camvid not present")
def test_real_camvid_counts_and_labels() -> None:
    assert len(list_camvid(REAL_CAMVID, "train")) == 367
    assert len(list_camvid(REAL_CAMVID, "val")) == 101
    items = list_camvid(REAL_CAMVID, "val")
    for item in items[::25]:
        ids = read_ids(item.label_path)
        assert ids.shape == (360, 480) and int(ids.max()) <= 11
    pairs = CamVidPairs(REAL_CAMVID, "val", offsets=(1, 4))
    assert len(pairs) == 100 + 97  # one sequence, no gaps
    sample = pairs[0]
    assert sample["image"].shape == (3, 360, 480)
    labels = sample["labels"]
    assert (((labels >= 0) & (labels <= 10)) | (labels == IGNORE_INDEX)).all()
