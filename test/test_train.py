"""Training: a few steps lower the loss, augmentation stays aligned, the CLI runs end to end on a
tiny fake CamVid tree and resumes from the saved epoch."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from accel_ros.cli import train as train_cli
from accel_ros.config import ModelConfig
from accel_ros.data import frames as frames_module
from accel_ros.data.clips import motion_clips
from accel_ros.learn.augment import augment
from accel_ros.learn.config import TrainConfig, config_from
from accel_ros.learn.loop import StagePlan, poly_lr
from accel_ros.learn.optim import class_weights
from accel_ros.learn.pair_cache import build_pair_cache, update_scores
from accel_ros.learn.stages import branch_logits
from accel_ros.learn.train import FINAL_NAME, build_model, run_training
from accel_ros.metrics import IGNORE_INDEX
from accel_ros.model import AccelNet, DISFlow, load_checkpoint

PNG_MAGIC = b"\x89PNG"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def parse_train(argv: list[str]) -> TrainConfig:
    """The TrainConfig `accel-ros train ARGV` runs with."""
    parser = argparse.ArgumentParser(prog="accel-ros")
    train_cli.add_parser(parser.add_subparsers(dest="command"))
    # The thread count the test process already has (`accel-ros train` would set it).
    args = parser.parse_args(["train", "--threads", str(torch.get_num_threads()), *argv])
    return config_from(TrainConfig, vars(args))


TINY = ["--preset", "camvid34", "--reference-backbone", "resnet18", "--update-backbone",
        "resnet18", "--head-channels", "16", "--height", "32", "--width", "48", "--batch-size",
        "2", "--val-every", "1", "--holdout", "none", "--imagenet", "no"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_a_few_steps_lower_the_loss(tiny_config: ModelConfig) -> None:
    model = AccelNet(tiny_config)
    images = torch.rand(2, 3, 32, 32)
    # Labels that depend on the image (brightest channel), so there is something to learn.
    targets = images.argmax(1)
    targets[:, :4] = IGNORE_INDEX
    optimizer = torch.optim.AdamW(model.reference.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(
            branch_logits(model, "reference", images), targets, ignore_index=IGNORE_INDEX
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_augment_keeps_image_and_labels_aligned() -> None:
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = (220, 30, 30)  # red half, class 0
    image[:, 40:] = (30, 30, 220)  # blue half, class 1
    labels = np.zeros((60, 80), np.uint8)
    labels[:, 40:] = 1
    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        out_image, out_labels = augment(image, labels, (30, 40), generator)
        assert out_image.shape == (3, 30, 40) and out_image.dtype == torch.float32
        assert out_labels.shape == (30, 40) and out_labels.dtype == torch.int64
        assert set(out_labels.unique().tolist()) <= {0, 1, IGNORE_INDEX}
        # Jitter scales red - blue by positive factors, so its sign still tells the half;
        # only the one blended column at the boundary may disagree.
        redder = out_image[0] > out_image[2]
        for cls, colour_matches in ((0, redder), (1, ~redder)):
            mask = out_labels == cls
            if mask.any():
                assert (colour_matches & mask).sum() >= 0.9 * mask.sum()


def test_augment_pads_with_ignore_when_zoomed_out() -> None:
    image = np.full((60, 80, 3), 128, np.uint8)
    labels = np.ones((60, 80), np.uint8)
    generator = torch.Generator().manual_seed(0)
    _, out_labels = augment(image, labels, (30, 40), generator, scale_range=(0.5, 0.5))
    assert (out_labels == IGNORE_INDEX).sum() == 30 * 40 - 15 * 20
    assert (out_labels == 1).sum() == 15 * 20


def test_class_weights_favour_rare_classes() -> None:
    labels = np.zeros((10, 10), np.uint8)
    labels[0, :2] = 1  # class 1 is rare, class 2 absent, 255 ignored
    labels[9] = IGNORE_INDEX
    frames = frames_module.FrameSet([np.zeros((10, 10, 3), np.uint8)], [labels], ["a"])
    weights = class_weights(frames, 3, "median")
    assert weights is not None
    assert weights[1] > weights[0]
    assert weights[2] == pytest.approx(1.0)  # absent: neutral
    assert class_weights(frames, 3, "none") is None


def test_poly_lr_schedule() -> None:
    assert poly_lr(0.1, 0.0) == pytest.approx(0.1)
    assert poly_lr(0.1, 0.5) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 1.0) == 0.0
    assert poly_lr(0.1, 2.0) == 0.0


def test_loads_camvid_with_void_ignored_and_segments(fake_camvid: Path) -> None:
    frames = frames_module.load_frames("camvid", fake_camvid, "train", num_classes=11)
    assert len(frames) == 8
    assert frames.images[0].shape == (48, 64, 3) and frames.images[0].dtype == np.uint8
    assert frames.labels[0][0, -1] == IGNORE_INDEX  # void 11 -> 255
    assert frames.labels[0][0, 0] == 0
    assert len(set(frames.sequences)) == 2
    with pytest.raises(FileNotFoundError, match="nowhere"):
        frames_module.load_frames("camvid", fake_camvid / "nowhere", "train", 11)


def test_train_cli_all_stages_end_to_end(fake_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = parse_train(["--data-root", str(fake_camvid), "--out", str(out), "--epochs", "1",
                          "--fusion-epochs", "1", "--max-iters", "1", "--half", *TINY])
    assert run_training(config) == out / FINAL_NAME
    for stage in ("reference", "update", "fusion"):
        rows = read_csv(out / stage / "metrics.csv")
        assert len(rows) == 1
        assert rows[0]["stage"] == stage and rows[0]["iteration"] == "1"
        assert np.isfinite(float(rows[0]["train_loss"]))
        assert 0.0 <= float(rows[0]["val_miou"]) <= 1.0
        assert (out / stage / "curves.png").read_bytes()[:4] == PNG_MAGIC
        assert (out / stage / "final.pt").is_file()
    assert (out / "curves.png").read_bytes()[:4] == PNG_MAGIC
    model, extra = load_checkpoint(out / FINAL_NAME)
    assert model.config.reference_backbone == "resnet18"
    assert model.config.head_channels == 16
    assert extra["resolution"] == [32, 48]
    assert set(extra["val_miou"]) == {"reference", "update", "fusion"}
    assert extra["recipe"]["lr"] == pytest.approx(2e-3)
    stored = torch.load(out / FINAL_NAME, weights_only=True)["state_dict"]
    assert stored["fusion.conv.weight"].dtype == torch.float16  # --half


def test_resume_continues_from_the_saved_epoch(fake_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--data-root", str(fake_camvid), "--out", str(out), "--stage", "reference",
              "--update-backbone", "none", *TINY]
    run_training(parse_train([*common, "--epochs", "1"]))
    first = read_csv(out / "reference" / "metrics.csv")
    assert [row["epoch"] for row in first] == ["1"]
    assert json.loads((out / "reference" / "progress.json").read_text())["iteration"] == 4

    run_training(parse_train([*common, "--epochs", "2", "--resume"]))
    rows = read_csv(out / "reference" / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert [row["iteration"] for row in rows] == ["4", "8"]  # 8 frames / batch 2 per epoch
    assert rows[0] == first[0]  # the first epoch's record was kept, not retrained
    log = (out / "reference" / "log.txt").read_text()
    assert "resumed at epoch 1, iteration 4" in log

    # Resuming a finished stage with no more epochs to run changes nothing.
    run_training(parse_train([*common, "--epochs", "2", "--resume"]))
    assert read_csv(out / "reference" / "metrics.csv") == rows


def test_holdout_sequence_is_left_out_of_training_and_validates(
    fake_camvid: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tiny = [arg for arg in TINY]
    tiny[tiny.index("--holdout") + 1] = "0006R0"
    run_training(parse_train(["--data-root", str(fake_camvid), "--out", str(out), "--stage",
                              "reference", "--epochs", "1", *tiny]))
    log = (out / "log.txt").read_text()
    assert "4 train, 4 validation (held-out 0006R0) frames" in log
    # 4 training frames (0001TP only) at batch 2: 2 iterations per epoch.
    assert json.loads((out / "reference" / "progress.json").read_text())["iteration"] == 2
    _, extra = load_checkpoint(out / FINAL_NAME)
    assert extra["validation"] == "held-out 0006R0"
    assert extra["train_data"] == "camvid train (4 frames, without 0006R0)"


def test_train_rejects_missing_data_root(tmp_path: Path) -> None:
    config = parse_train(["--out", str(tmp_path / "run"), *TINY])
    with pytest.raises(ValueError, match="--data-root"):
        run_training(config)
    assert not (tmp_path / "run").exists()


def test_joint_stage_tunes_update_and_fusion_and_freezes_the_reference(
    fake_camvid: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = parse_train(["--data-root", str(fake_camvid), "--out", str(out), "--stage",
                          "joint", "--joint-epochs", "2", "--offsets", "1", "2", *TINY])
    torch.manual_seed(config.seed)
    before = build_model(config)[0].state_dict()  # what run_training builds from the same seed
    run_training(config)
    rows = read_csv(out / "joint" / "metrics.csv")
    # 8 train frames x 2 offsets = 16 pairs at batch 2: 8 iterations per epoch.
    assert [(row["epoch"], row["iteration"]) for row in rows] == [("1", "8"), ("2", "16")]
    assert all(0.0 <= float(row["val_miou"]) <= 1.0 for row in rows)
    log = (out / "joint" / "log.txt").read_text()
    assert "joint: 16 train pairs" in log and "val mIoU before fine-tuning" in log
    model, extra = load_checkpoint(out / FINAL_NAME)
    after = model.state_dict()
    changed = {key.split(".")[0] for key in before
               if before[key].is_floating_point() and not torch.equal(before[key], after[key])}
    assert changed == {"update", "fusion"}
    assert set(extra["val_miou"]) == {"joint"}
    assert extra["stages"]["joint"]["aux_weight"] == pytest.approx(0.4)


def test_pair_cache_keeps_current_frames_only_when_asked(fake_camvid: Path) -> None:
    frames = frames_module.load_frames("camvid", fake_camvid, "val", 11)
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                                 head_channels=16, num_classes=11)).eval()
    lean = build_pair_cache(model, frames, (1, 2), (32, 48), torch.device("cpu"))
    assert lean.current is None
    with pytest.raises(ValueError, match="without its current frames"):
        lean.frames(torch.tensor([0]), torch.device("cpu"))
    full = build_pair_cache(model, frames, (1, 2), (32, 48), torch.device("cpu"),
                                  keep_frames=True)
    assert full.current.shape == (len(frames) * 2, 3, 32, 48)
    assert full.current.dtype == torch.uint8
    # The kept frames are exactly the frames N_U was scored on.
    with torch.no_grad():
        rescored = update_scores(model, full.frames(torch.arange(4), torch.device("cpu")))
    assert torch.allclose(rescored, full.update[:4], atol=1e-5)


def test_average_checkpoints_means_weights_and_refuses_other_models(tmp_path: Path) -> None:
    from accel_ros.cli.main import main as cli_main
    from accel_ros.model import average_checkpoints, save_checkpoint

    config = ModelConfig(reference_backbone="resnet18", update_backbone=None, head_channels=16,
                         num_classes=5)
    torch.manual_seed(0)
    first, second = AccelNet(config), AccelNet(config)
    with torch.no_grad():
        for module in (first, second):
            module.reference.backbone.stem[1].running_mean.uniform_(-1, 1)  # not zeros in both
    save_checkpoint(tmp_path / "a.pt", first, extra={"cycle": 1})
    save_checkpoint(tmp_path / "b.pt", second, extra={"cycle": 2})
    model, extra = average_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"])
    for key, value in model.state_dict().items():
        a, b = first.state_dict()[key], second.state_dict()[key]
        expected = (a + b) / 2 if a.is_floating_point() else b
        assert torch.allclose(value, expected), key
    assert extra == {"cycle": 2}

    assert cli_main(["average", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                     "--out", str(tmp_path / "avg.pt")]) == 0
    loaded, extra = load_checkpoint(tmp_path / "avg.pt")
    assert extra["averaged_from"] == [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]
    head = model.reference.head.classify.weight
    assert torch.allclose(loaded.reference.head.classify.weight, head)

    other = ModelConfig(reference_backbone="resnet18", update_backbone=None, head_channels=8,
                        num_classes=5)
    save_checkpoint(tmp_path / "c.pt", AccelNet(other))
    with pytest.raises(ValueError, match="another architecture"):
        average_checkpoints([tmp_path / "a.pt", tmp_path / "c.pt"])
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints([tmp_path / "a.pt"])


def test_pair_cache_warps_clips_as_forward_does(fake_camvid: Path) -> None:
    """The cache's warped scores come from the model's one clip warp: upsampled, they equal
    AccelNet.forward in `dff` mode on the same clip and flows."""
    frames = frames_module.load_frames("camvid", fake_camvid, "val", 11, limit=2)
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                                 head_channels=16, num_classes=11)).eval()
    size = (32, 48)
    cache = build_pair_cache(model, frames, (1, 3), size, torch.device("cpu"), seed=5)
    assert cache.offsets.tolist() == [1, 3, 1, 3]
    resized = [frames_module.resize_pair(i, lab, size)
               for i, lab in zip(frames.images, frames.labels, strict=True)]
    clips = motion_clips([r[0] for r in resized], [r[1] for r in resized], 4, 5, frames.names)
    flow = DISFlow(scale=0.5)
    with torch.no_grad():
        for index, clip in enumerate(clips):
            images = frames_module.to_tensor(clip.frames)  # (4, 3, 32, 48)
            flows = torch.stack([flow(images[t - 1 : t], images[t : t + 1])[0]
                                 for t in range(1, 4)])
            assert len(model.warp_clip(model.reference_features(images[:1]), flows[None],
                                       size)) == 3  # frames 1..T-1
            for pair, offset in ((2 * index, 1), (2 * index + 1, 3)):
                expected = model(images[None, : offset + 1], flows[None, :offset], mode="dff")
                cached = model.upsample(cache.warped[pair : pair + 1], size)
                torch.testing.assert_close(cached, expected, rtol=0, atol=1e-5)


def test_stage_plan_rounds_partial_batches_as_asked() -> None:
    # Branch and joint stages drop the last partial batch; fusion uses every pair.
    assert StagePlan(epochs=3, count=5, batch_size=2, base_lr=1.0).steps_per_epoch == 2
    fusion = StagePlan(epochs=3, count=5, batch_size=2, base_lr=1.0, drop_last=False)
    assert fusion.steps_per_epoch == 3 and fusion.total_iters == 9
    capped = StagePlan(epochs=3, count=5, batch_size=2, base_lr=1.0, max_iters=4)
    assert capped.total_iters == 4
    assert StagePlan(epochs=1, count=1, batch_size=8, base_lr=1.0).steps_per_epoch == 1


def test_train_config_checks_choices_and_records_plain_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stage"):
        TrainConfig(stage="everything")
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=(1.0, 2.0, 3.0))
    config = config_from(TrainConfig, {"out": tmp_path, "offsets": [1, 2], "command": "train",
                                       "time_budget": [30.0]})
    assert config.offsets == (1, 2) and config.epochs == TrainConfig().epochs
    assert config.budget_of("reference") == config.budget_of("update") == 30.0
    assert config.budget_of("fusion") is None
    recipe = config.recipe()
    assert recipe["out"] == str(tmp_path) and recipe["offsets"] == [1, 2]
    assert "command" not in recipe
    json.dumps(recipe)  # plain JSON values


def test_fusion_stage_runs_in_the_one_loop_and_resumes(fake_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--data-root", str(fake_camvid), "--out", str(out), "--stage", "fusion",
              "--offsets", "1", "--fusion-batch-size", "3", *TINY]
    run_training(parse_train([*common, "--fusion-epochs", "1"]))
    # 8 pairs at batch 3: ceil -> 3 iterations per epoch (the last batch has 2 pairs).
    assert json.loads((out / "fusion" / "progress.json").read_text())["iteration"] == 3
    run_training(parse_train([*common, "--fusion-epochs", "2", "--resume"]))
    rows = read_csv(out / "fusion" / "metrics.csv")
    assert [(row["epoch"], row["iteration"]) for row in rows] == [("1", "3"), ("2", "6")]
    log = (out / "fusion" / "log.txt").read_text()
    assert "fusion: resumed at epoch 1, iteration 3" in log
    assert "fusion: finished after 2 epochs / 6 iterations" in log


def test_batch_augment_keeps_frame_labels_and_soft_targets_aligned() -> None:
    from accel_ros.learn.batch_augment import augment_batch

    image = np.zeros((2, 3, 60, 80), np.uint8)
    image[:, 0, :, :40] = 220  # red left half: class 0
    image[:, 2, :, 40:] = 220  # blue right half: class 1
    labels = np.zeros((2, 60, 80), np.uint8)
    labels[:, :, 40:] = 1
    soft = torch.zeros(2, 2, 6, 8)  # a teacher's scores on a coarser grid, same view
    soft[:, 0, :, :4] = 5.0
    soft[:, 1, :, 4:] = 5.0
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        batch = augment_batch(torch.from_numpy(image), torch.from_numpy(labels), (30, 40),
                              generator, (0.5, 1.5), reference_height=30, soft=soft)
        assert batch.images.shape == (2, 3, 30, 40) and batch.labels.dtype == torch.int64
        assert batch.soft.shape == (2, 2, 30, 40)
        assert set(batch.labels.unique().tolist()) <= {0, 1, IGNORE_INDEX}
        assert torch.equal(batch.labels == IGNORE_INDEX, ~batch.inside)
        inside = batch.inside
        colour = batch.images[:, 0] > batch.images[:, 2]  # red wins: class 0
        teacher = batch.soft[:, 0] > batch.soft[:, 1]
        # Only the blended columns at the boundary may disagree.
        assert (colour[inside] == (batch.labels[inside] == 0)).float().mean() > 0.9
        assert (teacher[inside] == (batch.labels[inside] == 0)).float().mean() > 0.85


def test_distillation_loss_is_cross_entropy_plus_kl_to_the_teacher() -> None:
    from accel_ros.learn.distill import distillation_loss

    logits = torch.randn(2, 4, 5, 6)
    labels = torch.randint(0, 4, (2, 5, 6))
    inside = torch.ones(2, 5, 6, dtype=torch.bool)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
    ce = criterion(logits, labels)
    assert torch.allclose(distillation_loss(logits, logits * 3, labels, inside, criterion, 0.0),
                          ce)
    # The student agreeing with the teacher leaves only the labels' term.
    assert torch.allclose(distillation_loss(logits, logits, labels, inside, criterion, 0.5),
                          0.5 * ce, atol=1e-6)
    student = torch.zeros(2, 4, 5, 6, requires_grad=True)
    teacher = torch.zeros(2, 4, 5, 6)
    teacher[:, 2] = 4.0
    distillation_loss(student, teacher, labels, inside, criterion, 1.0).backward()
    assert (student.grad[:, 2] < 0).all()  # pulled towards the teacher's class


def test_update_stage_distils_and_the_checkpoint_records_its_data(
    fake_camvid: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    config = parse_train(["--data-root", str(fake_camvid), "--out", str(out), "--epochs", "1",
                          "--fusion-epochs", "1", "--max-iters", "2", "--distill-from", "self",
                          "--data-splits", "train", "val", *TINY])
    assert config.data_splits == ("train", "val") and config.distill_from == "self"
    run_training(config)
    log = (out / "update" / "log.txt").read_text()
    assert "distilled from self (weight 0.5, T 2.0)" in log
    scores = torch.load(out / "update" / "teacher_scores.pt", weights_only=True)
    assert scores.shape == (14, 11, 2, 3) and scores.dtype == torch.float16  # 32x48 / 16
    _, extra = load_checkpoint(out / FINAL_NAME)
    assert extra["train_data"] == "camvid train+val (14 frames)"
    assert extra["train_frames"] == {
        "splits": ["train", "val"], "holdout": [], "frames": 14,
        "frames_per_sequence": {"train:0001TP": 4, "train:0006R0": 4, "val:0016E5": 6}}
    assert extra["validation"] == "camvid val (trained on)"
    with pytest.raises(ValueError, match="data split"):
        TrainConfig(data_splits=("test",))
    with pytest.raises(ValueError, match="jitter"):
        TrainConfig(jitter=1.0)
    assert parse_train(["--jitter", "0.5", "--motion-steps", "1", "2"]).motion_steps == (1, 2)


def test_age_pairs_span_real_and_synthetic_ages(fake_camvid: Path) -> None:
    from accel_ros.learn.age_pairs import FRAME_STEPS, build_age_pair_cache, real_windows

    frames = frames_module.load_frames("camvid", fake_camvid, "train", 11)  # 1 s apart
    windows = real_windows(frames, (32, 48), max_age=2.0)
    assert sorted(len(w[0]) for w in windows) == [2, 2, 3, 3, 3, 3]
    assert windows[0][2] == pytest.approx([0.0, 1.0, 2.0])
    model = AccelNet(ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                                 head_channels=16, num_classes=11)).eval()
    cache = build_age_pair_cache(model, frames, (32, 48), torch.device("cpu"), max_age=2.0)
    ages = cache.ages.tolist()
    assert len(ages) == len(cache) == len(cache.labels)
    assert ages.count(1.0) >= 6 and ages.count(2.0) >= 4  # the real 1 s / 2 s pairs
    assert min(ages) == pytest.approx(FRAME_STEPS[0] / 30) and max(ages) <= 2.0 + 1e-6
    assert cache.ages_of(torch.tensor([0])).tolist() == ages[:1]
    fast = build_age_pair_cache(model, frames, (32, 48), torch.device("cpu"), real=False,
                                steps=(1,))  # a 30 fps camera: 6 kept frames, up to 0.2 s
    assert sorted(set(round(age * 30) for age in fast.ages.tolist())) == [1, 2, 3, 4, 5, 6]


def test_fusion_stage_trains_an_age_aware_fusion(fake_camvid: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    common = ["--data-root", str(fake_camvid), "--out", str(out), "--stage", "fusion",
              "--fusion-ages", "0.033", "0.5", "2", *TINY]
    run_training(parse_train([*common, "--fusion-epochs", "1"]))
    model, extra = load_checkpoint(out / FINAL_NAME)
    assert model.fusion_uses_age and model.config.fusion_ages == (0.033, 0.5, 2.0)
    assert extra["stages"]["fusion"]["ages"] == [0.033, 0.5, 2.0]
    assert extra["stages"]["fusion"]["pairs"] > 0
    knots = model.fusion.weight.detach()
    assert not torch.equal(knots[0], knots[-1])  # each age learns its own weights
    # Resuming with more epochs rebuilds the age-aware fusion before loading its state.
    run_training(parse_train([*common, "--fusion-epochs", "2", "--resume"]))
    rows = read_csv(out / "fusion" / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
