"""AccelSegmenter: keyframe schedule, modes, resets, adaptive policy, bad inputs."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.model import AccelNet, ZeroFlow
from accel_ros.stream import AccelSegmenter, build_segmenter


def _segmenter(config: ModelConfig, **pipeline) -> AccelSegmenter:
    pipeline.setdefault("device", "cpu")
    return AccelSegmenter(AccelNet(config), PipelineConfig(**pipeline))


@pytest.mark.parametrize("mode", ["accel", "dff", "deeplab", "reference"])
def test_every_mode_gives_int_labels_in_range(tiny_config, moving_frames, mode) -> None:
    seg = _segmenter(tiny_config, mode=mode, keyframe_interval=3, return_probabilities=True)
    for frame in moving_frames[:4]:
        result = seg.process(frame)
        assert result.labels.shape == (64, 96)
        assert result.labels.dtype == np.uint8
        assert int(result.labels.max()) < tiny_config.num_classes
        assert result.probabilities.shape == (5, 64, 96)
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
        assert 0.0 < result.confidence <= 1.0
        assert result.timings["total"] > 0
        assert result.timings["total"] >= result.timings["update"] + result.timings["feature"]


def test_keyframe_every_fifth_frame(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=5)
    frames = moving_frames * 2  # 12 frames
    results = [seg.process(frame) for frame in frames]
    assert [r.is_keyframe for r in results] == [i % 5 == 0 for i in range(12)]
    assert [r.keyframe_age for r in results] == [i % 5 for i in range(12)]
    keyframe, warped = results[0].timings, results[1].timings
    assert keyframe["feature"] > 0 and keyframe["update"] == 0
    assert warped["feature"] == 0 and warped["flow"] > 0 and warped["warp"] > 0
    assert warped["update"] > 0 and warped["fusion"] > 0


def test_interval_one_equals_reference_mode(tiny_config, moving_frames) -> None:
    model = AccelNet(tiny_config)
    accel = AccelSegmenter(model, PipelineConfig(keyframe_interval=1, device="cpu"))
    reference = AccelSegmenter(model, PipelineConfig(mode="reference", device="cpu"))
    for frame in moving_frames:
        a, r = accel.process(frame), reference.process(frame)
        assert a.is_keyframe
        np.testing.assert_array_equal(a.labels, r.labels)


def test_dff_with_zero_flow_reuses_keyframe_labels(tiny_config, moving_frames) -> None:
    seg = AccelSegmenter(
        AccelNet(tiny_config), PipelineConfig(mode="dff", keyframe_interval=10, device="cpu"),
        flow=ZeroFlow(),
    )
    first = seg.process(moving_frames[0]).labels
    for frame in moving_frames[1:]:
        np.testing.assert_array_equal(seg.process(frame).labels, first)


def test_warped_features_follow_the_motion(tiny_config) -> None:
    """A 32 px shift of the input moves cached features by exactly 2 cells (stride 16)."""
    seg = AccelSegmenter(
        AccelNet(tiny_config), PipelineConfig(mode="dff", keyframe_interval=10, device="cpu")
    )
    seg.flow = _ConstantFlow(dx=-32.0)  # content moved 32 px right
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)
    seg.process(frame)
    keyframe_features = seg.cache.features.clone()
    seg.process(frame)
    torch.testing.assert_close(
        seg.cache.features[..., 2:], keyframe_features[..., :-2], rtol=0, atol=1e-5
    )


class _ConstantFlow(ZeroFlow):
    def __init__(self, dx: float) -> None:
        self.dx = dx

    def estimate(self, previous, current):  # type: ignore[override]
        flow = super().estimate(previous, current)
        flow[:, 0] = self.dx
        return flow


def test_resolution_change_resets_the_cache(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=10)
    seg.process(moving_frames[0])
    assert not seg.process(moving_frames[1]).is_keyframe
    smaller = np.ascontiguousarray(moving_frames[2][:48, :80])
    result = seg.process(smaller)
    assert result.is_keyframe and "resolution changed" in result.reset_reason
    assert result.labels.shape == (48, 80)


def test_time_gap_and_backwards_time_reset(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=10, max_time_gap=0.5)
    seg.process(moving_frames[0], stamp=10.0)
    assert not seg.process(moving_frames[1], stamp=10.033).is_keyframe
    gap = seg.process(moving_frames[2], stamp=11.0)
    assert gap.is_keyframe and "time gap" in gap.reset_reason
    back = seg.process(moving_frames[3], stamp=5.0)
    assert back.is_keyframe and "backwards" in back.reset_reason


def test_adaptive_flow_threshold_forces_keyframe(tiny_config) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=100, adaptive_flow_threshold=50.0)
    seg.flow = _ConstantFlow(dx=-20.0)
    frame = np.zeros((64, 96, 3), dtype=np.uint8)
    flags = [seg.process(frame).is_keyframe for _ in range(8)]
    # 20 px per frame: the accumulated 60 px passes 50 px on the third frame after a keyframe.
    assert flags == [True, False, False, True, False, False, True, False]


def test_adaptive_confidence_drop_forces_next_keyframe(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=100, adaptive_confidence_drop=1e-9)
    seg.process(moving_frames[0])
    seg.cache.keyframe_confidence = 1.0  # any real frame is then a confidence drop
    assert not seg.process(moving_frames[1]).is_keyframe
    assert seg.process(moving_frames[2]).is_keyframe


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((0, 0, 3), np.uint8), "empty image"),
        (np.zeros((32, 32), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((32, 32, 4), np.uint8), r"\(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.float32), "uint8"),
    ],
)
def test_bad_frames_raise_and_keep_the_stream(tiny_config, moving_frames, frame, message) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=10)
    seg.process(moving_frames[0])
    with pytest.raises(ValueError, match=message):
        seg.process(frame)
    assert not seg.process(moving_frames[1]).is_keyframe  # the cache survived the bad frame


def test_input_resize_keeps_output_at_frame_size(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, input_size=(32, 48))
    result = seg.process(moving_frames[0])
    assert result.labels.shape == (64, 96)


def test_bf16_autocast_and_channels_last_run_on_cpu(tiny_config, moving_frames) -> None:
    model = AccelNet(tiny_config)
    plain = AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=2))
    fast = AccelSegmenter(
        model, PipelineConfig(device="cpu", keyframe_interval=2, channels_last=True)
    )
    for frame in moving_frames[:3]:
        np.testing.assert_array_equal(plain.process(frame).labels, fast.process(frame).labels)
    half = AccelSegmenter(model, PipelineConfig(device="cpu", precision="bf16"))
    assert half.process(moving_frames[0]).labels.shape == (64, 96)


def test_modes_needing_update_branch_are_refused() -> None:
    config = ModelConfig(reference_backbone="resnet18", update_backbone=None, head_channels=8)
    with pytest.raises(ValueError, match="update branch"):
        build_segmenter(config, PipelineConfig(mode="accel", device="cpu"))
    dff = build_segmenter(config, PipelineConfig(mode="dff", device="cpu"))
    assert dff.process(np.zeros((32, 32, 3), np.uint8)).labels.shape == (32, 32)


def test_non_finite_tensor_frame_is_refused(tiny_config, moving_frames) -> None:
    seg = _segmenter(tiny_config, keyframe_interval=10)
    seg.process(moving_frames[0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        seg.process(torch.full((3, 64, 96), float("nan")))
    assert not seg.process(moving_frames[1]).is_keyframe


# -- GPU-path logic that can be checked on the CPU ---------------------------------------------
def test_frames_cross_as_uint8_and_become_the_same_floats(moving_frames) -> None:
    from accel_ros.stream.segmenter import FrameUploader, frame_to_tensor

    host = frame_to_tensor(moving_frames[0])
    assert host.dtype == torch.uint8 and host.shape == (1, 3, 64, 96)  # 1 byte/px/channel
    uploader = FrameUploader(torch.device("cpu"))
    assert not uploader.pinned  # page-locked staging only for CUDA
    image = uploader(host)
    expected = torch.from_numpy(moving_frames[0]).permute(2, 0, 1)[None].float() / 255.0
    assert image.dtype == torch.float32
    torch.testing.assert_close(image, expected, rtol=0, atol=0)
    as_float = frame_to_tensor(expected[0])
    assert as_float.dtype == torch.float32
    torch.testing.assert_close(uploader(as_float), expected, rtol=0, atol=0)


def test_max_probability_is_reduced_before_the_transfer(tiny_config, moving_frames) -> None:
    model = AccelNet(tiny_config)
    both = AccelSegmenter(
        model, PipelineConfig(device="cpu", keyframe_interval=2, return_probabilities=True),
        return_max_probability=True,
    )
    only_max = AccelSegmenter(
        model, PipelineConfig(device="cpu", keyframe_interval=2), return_max_probability=True
    )
    for frame in moving_frames[:3]:
        full, small = both.process(frame), only_max.process(frame)
        assert small.probabilities is None  # K x H x W never crossed
        assert small.max_probability.shape == (64, 96)
        assert small.max_probability.dtype == np.float32
        np.testing.assert_allclose(small.max_probability, full.probabilities.max(axis=0),
                                   rtol=0, atol=1e-6)
        np.testing.assert_array_equal(small.labels, full.labels)
    plain = _segmenter(tiny_config).process(moving_frames[0])
    assert plain.max_probability is None and plain.probabilities is None


def test_cache_stays_float32_under_autocast(tiny_config, moving_frames) -> None:
    """Keyframe features come out of N_R in bf16 under autocast; the cache holds float32 on
    keyframes and warped frames alike (one dtype for graphs and compiled kernels)."""
    seg = _segmenter(tiny_config, keyframe_interval=3, precision="bf16")
    dtypes = []
    for frame in moving_frames[:3]:
        seg.process(frame)
        dtypes.append(seg.cache.features.dtype)
    assert dtypes == [torch.float32] * 3


def test_stage_timer_syncs_only_in_breakdown_mode(monkeypatch, tiny_config) -> None:
    from accel_ros.stream.segmenter import StageTimer

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    cuda = torch.device("cuda", 1)
    timer = StageTimer(cuda)
    with timer.stage("flow"):
        pass
    timer.finish()
    assert calls == []  # production: no synchronise per stage
    timer = StageTimer(cuda, sync=True)
    with timer.stage("flow"):
        pass
    assert calls == [cuda, cuda, cuda]  # start, stage start, stage end: on cuda:1
    StageTimer(torch.device("cpu"), sync=True).finish()
    assert len(calls) == 3
    assert _segmenter(tiny_config).sync_stages is False


def test_cuda_work_runs_under_the_configured_device(monkeypatch) -> None:
    from accel_ros.stream.segmenter import cuda_device_context

    entered = []
    monkeypatch.setattr(
        torch.cuda, "device", lambda d: entered.append(d) or contextlib.nullcontext()
    )
    with cuda_device_context(torch.device("cuda", 1)):
        pass
    with cuda_device_context(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]


def test_flow_checks_do_not_read_device_values() -> None:
    """check_flow scans for NaN only on the host: on a device tensor the scan would be a sync.
    A meta tensor has no values at all, so any scan would raise."""
    from accel_ros.model.warp import check_flow

    meta = torch.empty(1, 2, 4, 4, device="meta")
    check_flow(meta)  # shape checked, values untouched
    with pytest.raises(ValueError, match="NaN or infinite"):
        check_flow(torch.full((1, 2, 4, 4), float("nan")))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        check_flow(torch.empty(1, 3, 4, 4, device="meta"))


def test_adaptive_motion_is_read_after_the_labels_without_threshold(tiny_config) -> None:
    """accumulated_flow is still tracked (in input pixels) when no threshold needs it mid-frame."""
    seg = _segmenter(tiny_config, keyframe_interval=100)
    seg.flow = _ConstantFlow(dx=-6.0)
    frame = np.zeros((64, 96, 3), dtype=np.uint8)
    for _ in range(3):
        seg.process(frame)
    assert seg.cache.accumulated_flow == pytest.approx(12.0)


@pytest.mark.parametrize("upsample", ["bilinear", "deconv"])
def test_fast_output_labels_equal_the_plain_argmax(tiny_config, upsample) -> None:
    """Channels-last upsampling + max(dim=1) gives exactly the contiguous argmax's labels."""
    import dataclasses

    from accel_ros.stream.segmenter import upsample_labels

    model = AccelNet(dataclasses.replace(tiny_config, upsample=upsample)).eval()
    scores = torch.randn(1, 5, 12, 15) * 3
    with torch.inference_mode():
        labels, logits = upsample_labels(model, scores, (180, 240))
        expected = model.upsample(scores, (180, 240)).argmax(dim=1)
    assert labels.dtype == torch.uint8 and labels.shape == (1, 180, 240)
    torch.testing.assert_close(labels.long(), expected, rtol=0, atol=0)
    torch.testing.assert_close(logits, model.upsample(scores, (180, 240)))


def test_max_probability_switches_live(tiny_config, moving_frames) -> None:
    seg = build_segmenter(tiny_config, PipelineConfig(device="cpu"), return_max_probability=True)
    assert seg.process(moving_frames[0]).max_probability.shape == (64, 96)
    seg.return_max_probability = False
    assert seg.process(moving_frames[1]).max_probability is None


class _FractionalFlow(ZeroFlow):
    """A flow that changes every frame and lands between feature cells (bilinear weights)."""

    def __init__(self) -> None:
        self.calls = 0

    def estimate(self, previous, current):  # type: ignore[override]
        flow = super().estimate(previous, current)
        self.calls += 1
        flow[:, 0] = -5.3 * self.calls
        flow[:, 1] = 2.7
        return flow


@pytest.mark.parametrize("mode", ["accel", "dff"])
def test_warping_scores_equals_warping_features(tiny_config, moving_frames, mode) -> None:
    """With a 1x1 N_task and border sampling the caches hold s_R (K channels, not C_R) and
    give the scores and labels of warping the features and scoring them."""
    torch.manual_seed(0)
    model = AccelNet(tiny_config).eval()
    results = {}
    for warps_scores in (True, False):
        seg = AccelSegmenter(model, PipelineConfig(mode=mode, keyframe_interval=6, device="cpu",
                                                   return_probabilities=True))
        seg.flow = _FractionalFlow()
        if not warps_scores:
            seg.model.warps_scores = lambda out_of_frame: False  # the paper's literal order
        results[warps_scores] = [seg.process(frame) for frame in moving_frames]
        channels = tiny_config.num_classes if warps_scores else tiny_config.head_channels
        assert seg.cache.holds_scores is warps_scores
        assert seg.cache.features.shape[1] == channels
    assert [r.is_keyframe for r in results[True]] == [True] + [False] * 5
    for scores_path, features_path in zip(results[True], results[False], strict=True):
        np.testing.assert_allclose(scores_path.probabilities, features_path.probabilities,
                                   rtol=0, atol=1e-5)
        np.testing.assert_array_equal(scores_path.labels, features_path.labels)


def test_out_of_frame_zeros_warps_features_and_a_live_switch_reanchors(
    tiny_config, moving_frames
) -> None:
    """Zero padding does not commute with N_task's bias, so the cache holds features then;
    switching out_of_frame mid-interval makes the next frame a keyframe of the right kind."""
    seg = _segmenter(tiny_config, keyframe_interval=10)
    assert seg.process(moving_frames[0]).is_keyframe and seg.cache.holds_scores
    assert not seg.process(moving_frames[1]).is_keyframe
    seg.pipeline_config.out_of_frame = "zeros"
    assert seg.process(moving_frames[2]).is_keyframe
    assert not seg.cache.holds_scores
    assert seg.cache.features.shape[1] == tiny_config.head_channels
    assert not seg.process(moving_frames[3]).is_keyframe


def test_labels_without_probabilities_take_the_label_path_and_agree(
    tiny_config, moving_frames
) -> None:
    """Without probabilities the CPU output step reduces scores straight to labels
    (model/labels.py); the labels are those of the full upsampling."""
    torch.manual_seed(1)
    model = AccelNet(tiny_config).eval()
    plain = AccelSegmenter(model, PipelineConfig(keyframe_interval=3, device="cpu",
                                                 return_probabilities=True))
    direct = AccelSegmenter(model, PipelineConfig(keyframe_interval=3, device="cpu"))
    assert direct._labels is not None
    for frame in moving_frames:
        expected, got = plain.process(frame), direct.process(frame)
        assert got.probabilities is None
        np.testing.assert_array_equal(got.labels, expected.labels)
    assert direct._labels._tables  # the label path ran


def test_frames_without_a_usable_stamp_are_said_once_per_stream(tiny_config, moving_frames):
    """An unstamped frame (or one whose stamp is no time, or repeats the last) has its
    keyframe age counted at 1/30 s a frame: one warning per stream and kind of problem, and a
    note on each such result; stamped frames say nothing."""
    from accel_ros.stream import NOMINAL_FRAME_TIME_S, UnstampedFrameWarning

    config = ModelConfig(**{**tiny_config.__dict__, "fusion_ages": (0.033, 1.0)})
    model = AccelNet(config).eval()
    seen: list[float] = []
    fuse = model.fuse

    def spy(*args, age_s=None, **kwargs):
        seen.append(round(float(age_s[0]), 4))
        return fuse(*args, age_s=age_s, **kwargs)

    model.fuse = spy
    seg = AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=3))
    with pytest.warns(UnstampedFrameWarning) as caught:
        stamped = [seg.process(frame, stamp=1.0 * i, stream="timed")
                   for i, frame in enumerate(moving_frames[:3])]
        bare = [seg.process(frame) for frame in moving_frames[:3]]
        other = [seg.process(frame, stream="second") for frame in moving_frames[:2]]
    messages = [str(w.message) for w in caught if w.category is UnstampedFrameWarning]
    assert len(messages) == 2  # once for each unstamped stream, never for "timed"
    assert "'default'" in messages[0] and "'second'" in messages[1]
    assert "frames carry no stamp" in messages[0] and "--fps" in messages[0]
    assert [r.stamp_note for r in stamped] == [None] * 3
    assert all(r.stamp_note and "0.033 s per frame" in r.stamp_note for r in bare + other)
    # The fusion saw 1 and 2 s on the stamped stream, 1 and 2 frames at 1/30 s on the other.
    assert seen[:2] == [1.0, 2.0]
    assert seen[2:4] == [round(NOMINAL_FRAME_TIME_S, 4), round(2 * NOMINAL_FRAME_TIME_S, 4)]

    with pytest.warns(UnstampedFrameWarning) as caught:
        results = [seg.process(frame, stamp=stamp, stream="odd") for frame, stamp in
                   zip(moving_frames, [0.0, 0.5, 0.5, -3.0, float("nan"), 0.6], strict=True)]
    kinds = [str(w.message) for w in caught if w.category is UnstampedFrameWarning]
    assert len(kinds) == 2  # "repeats the stamp" once, "is not a time" once (-3, then nan)
    assert "repeat the stamp 0.500000" in kinds[0] and "-3.0 is not a time" in kinds[1]
    assert [r.stamp_note is None for r in results] == [True, True, False, False, False, True]
    seg.reset(stream="odd")  # a clip that starts over may reuse its times
    assert seg.process(moving_frames[0], stamp=0.6, stream="odd").stamp_note is None


def test_backend_info_names_what_runs(tiny_config) -> None:
    seg = _segmenter(tiny_config, precision="bf16")
    info = seg.backend_info()
    assert (info.backend, info.precision, info.device) == ("torch", "bf16", "cpu")
    assert info.threads == torch.get_num_threads() >= 1
    assert info.describe().startswith(f"backend torch, bf16 on cpu, {info.threads} thread")
    assert info.to_dict()["notes"] == seg.fast_path_notes
