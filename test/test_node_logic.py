"""ROS-free node logic: parameters, config file, stats message, frame slot, statistics,
diagnostics and the batch processor (with real rosbags messages and a tiny segmenter)."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
from recording_logger import RecordingLogger
from rosbags.rosbag2 import Reader, Writer
from rosbags.typesys import Stores, get_typestore

from accel_ros.config import CHOICES, RANGES, ModelConfig, PipelineConfig, load_yaml
from accel_ros.io.bridge import from_array, from_rgb8, image_to_array, rgb8_to_compressed
from accel_ros.io.messages import (
    STATS_MSG_TEXT,
    STATS_TYPE_NAME,
    register_stats_type,
    seconds_to_stamp,
    stamp_to_seconds,
    stats_fields,
    stats_to_json,
)
from accel_ros.ros.camera_info import (
    CameraInfoRelay,
    RelayDecision,
    calibrated_image_size,
    camera_info_topic,
)
from accel_ros.ros.diagnostics import (
    ERROR,
    OK,
    STALE,
    WARN,
    ErrorCounters,
    StreamStatistics,
    diagnostic_report,
)
from accel_ros.ros.input_rate import InputRate
from accel_ros.ros.parameters import (
    PARAMETER_SPECS,
    PARAMETERS,
    SOURCE_PARAMS_FILE,
    NodeOptions,
    apply_live_pipeline,
    default_parameters,
    parse_parameters,
    plan_parameter_update,
    unknown_parameters,
)
from accel_ros.ros.processing import BatchProcessor
from accel_ros.ros.slots import FrameSlot, ReadyFrame, StampGapMonitor, StreamSlots
from accel_ros.ros.streams import StreamPlan, plan_streams, stream_name, stream_names
from accel_ros.ros.throttled_log import Throttle, ThrottledLog

ROOT = Path(__file__).resolve().parents[1]
PARAMS_FILE = ROOT / "config" / "accel.yaml"
CAMVID = ROOT.parent / "shared" / "camvid"


@pytest.fixture(scope="module")
def store():
    return get_typestore(Stores.ROS2_HUMBLE)




def image_msg(store, rgb: np.ndarray, encoding: str = "rgb8", stamp: float = 1.0):
    """A CDR round-tripped sensor_msgs/Image carrying `rgb` in `encoding`."""
    sec, nanosec = seconds_to_stamp(stamp)
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
        frame_id="camera",
    )
    msg = store.types["sensor_msgs/msg/Image"](header=header, **from_rgb8(rgb, encoding))
    typename = "sensor_msgs/msg/Image"
    return store.deserialize_cdr(store.serialize_cdr(msg, typename), typename)


# --- config file and parameters ------------------------------------------------------------


def test_params_file_has_every_pipeline_field_with_a_valid_value():
    values = load_yaml(PARAMS_FILE)
    for field in dataclasses.fields(PipelineConfig):
        assert field.name in values, f"config/accel.yaml lacks PipelineConfig.{field.name}"
    settings = parse_parameters(values)
    assert settings.pipeline == PipelineConfig()  # input_size [0, 0] -> None (native size)
    assert settings.options == NodeOptions()
    assert settings.options.checkpoint == "default"
    assert settings.options.palette == "camvid_cityscapes"


def test_params_file_matches_declared_parameters_and_types():
    values = load_yaml(PARAMS_FILE)
    assert set(values) == {spec.name for spec in PARAMETERS}
    assert values == default_parameters()  # the file and the code defaults cannot drift
    assert default_parameters(PARAMS_FILE) == values
    python_types = {"bool": bool, "int": int, "float": float, "str": str, "int_array": list,
                    "str_array": list}
    for spec in PARAMETERS:
        # rclpy refuses a value of another type than the declared default (1 vs 1.0).
        assert type(values[spec.name]) is python_types[spec.kind], spec.name
        assert spec.description
    assert values["input_size"] == [0, 0]


def test_a_source_checkout_finds_its_params_file():
    """ros/ is one level deeper than the old node_logic.py: the node run from a checkout (no
    ament index) must still find config/accel.yaml."""
    assert SOURCE_PARAMS_FILE == PARAMS_FILE and SOURCE_PARAMS_FILE.is_file()


def test_default_parameters_rejects_unknown_names(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("/**:\n  ros__parameters:\n    keyframe_intreval: 3\n")
    with pytest.raises(ValueError, match=r"keyframe_intreval \(did you mean keyframe_interval"):
        default_parameters(path)
    # What `ros2 param dump` writes (rclpy's own parameters included) loads back.
    path.write_text("/accel_segmentation:\n  ros__parameters:\n    use_sim_time: true\n"
                    "    start_type_description_service: true\n    keyframe_interval: 3\n")
    assert default_parameters(path)["keyframe_interval"] == 3
    assert "use_sim_time" not in default_parameters(path)


def test_unknown_parameters_names_typos_and_allows_rclpy_builtins():
    assert unknown_parameters(["keyframe_interval", "use_sim_time",
                               "qos_overrides./image.subscription.depth"]) == []
    assert unknown_parameters(["keyframe_intervall", "zzz"]) == [
        "keyframe_intervall (did you mean keyframe_interval?)", "zzz"]


def test_output_qos_parameters():
    settings = parse_parameters({"output_qos": "best_effort", "output_qos_depth": 3})
    assert (settings.options.output_qos, settings.options.output_qos_depth) == ("best_effort", 3)
    assert parse_parameters({}).options.output_qos_depth == 100
    with pytest.raises(ValueError, match=r"output_qos_depth must be in \[1, "):
        parse_parameters({"output_qos_depth": 0})
    with pytest.raises(ValueError, match="output_qos 'lossy'"):
        parse_parameters({"output_qos": "lossy"})


def test_parse_parameters_maps_onto_pipeline_config():
    settings = parse_parameters(
        {"keyframe_interval": 3, "input_size": [64, 96], "flow_scale": 1, "device": "cpu",
         "mode": "dff", "overlay_alpha": 0.25, "preset": "accel18"}
    )
    assert settings.pipeline.keyframe_interval == 3
    assert settings.pipeline.input_size == (64, 96)
    assert settings.pipeline.flow_scale == 1.0 and isinstance(settings.pipeline.flow_scale, float)
    assert (settings.pipeline.device, settings.pipeline.mode) == ("cpu", "dff")
    assert settings.options.overlay_alpha == 0.25 and settings.options.preset == "accel18"
    assert parse_parameters({}).parameter_values() == default_parameters()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"keyframe_interval": 0}, r"keyframe_interval must be in \[1, 1000\], got 0"),
        ({"keyframe_interval": "5"}, "'keyframe_interval' must be of type int"),
        ({"publish_color": 1}, "'publish_color' must be of type bool"),
        ({"flow_method": "lucas"}, "flow_method 'lucas'"),
        ({"input_size": [8, 8]}, "input_size must be"),
        ({"palette": "rainbow"}, "palette 'rainbow'"),
        ({"overlay_alpha": 1.5}, "overlay_alpha must be in"),
        ({"preset": "accel99"}, "preset 'accel99'"),
        ({"input_transport": "theora"}, "input_transport 'theora'"),
        ({"flow_scale": math.nan}, "'flow_scale' must be finite"),
        ({"overlay_alpha": "1"}, "'overlay_alpha' must be of type float"),
        ({"no_such_thing": 1}, "unknown parameters"),
    ],
)
def test_parse_parameters_rejects_bad_values_naming_them(values, message):
    with pytest.raises(ValueError, match=message):
        parse_parameters(values)


def test_live_parameters_apply_and_unsafe_ones_are_rejected_with_a_reason():
    current = parse_parameters({})
    plan = plan_parameter_update(current, {"keyframe_interval": 9, "overlay_alpha": 0.8})
    assert plan.successful and plan.settings is not None
    assert set(plan.changed) == {"keyframe_interval", "overlay_alpha"}
    assert plan.settings.pipeline.keyframe_interval == 9
    assert plan.settings.options.overlay_alpha == 0.8
    assert current.pipeline.keyframe_interval == 5  # the current settings are not mutated

    plan = plan_parameter_update(current, {"device": "cuda:0"})
    assert not plan.successful and "'device' cannot change while the node runs" in plan.reason
    plan = plan_parameter_update(current, {"keyframe_interval": 2, "flow_method": "zero"})
    assert not plan.successful and "flow_method" in plan.reason  # all or nothing
    # ROS may re-send unchanged values of restart-only parameters: accepted as no-ops.
    plan = plan_parameter_update(current, {"device": "auto", "keyframe_interval": 4})
    assert plan.successful and plan.changed == ("keyframe_interval",)
    plan = plan_parameter_update(current, {"keyframe_interval": 0})
    assert not plan.successful and "keyframe_interval must be in [1, 1000]" in plan.reason
    plan = plan_parameter_update(current, {"overlay_alpha": "half"})
    assert not plan.successful and "must be of type float" in plan.reason


def test_rejected_values_are_shortened_in_the_reason():
    """A 1 MB value used to come back whole in the reason (and the log line)."""
    current = parse_parameters({})
    huge = "x" * 1_000_000
    for changes in ({"palette": huge}, {"keyframe_interval": huge}, {"image_topics": [huge]},
                    {huge: 1}):
        plan = plan_parameter_update(current, changes)
        assert not plan.successful and len(plan.reason) < 250, len(plan.reason)
    plan = plan_parameter_update(current, {"palette": huge})
    assert plan.reason.startswith("invalid parameters: palette 'xxx")
    assert plan.reason.endswith("characters)")
    with pytest.raises(ValueError) as error:
        parse_parameters({"palette": huge})
    assert len(str(error.value)) < 250 and "palette" in str(error.value)


def test_integer_and_float_parameters_have_sane_ranges():
    """keyframe_interval used to accept 2**63 - 1 (only the first frame was a keyframe)."""
    numbers = {spec.name for spec in PARAMETERS if spec.kind in ("int", "float")}
    assert numbers == {spec.name for spec in PARAMETERS if spec.range is not None}
    for name in numbers:
        spec = PARAMETER_SPECS[name]
        assert spec.range == RANGES[name] and spec.default in spec.range, name
        with pytest.raises(ValueError, match=f"{name} must be in"):
            parse_parameters({name: spec.range.high + 1})
    plan = plan_parameter_update(parse_parameters({}), {"keyframe_interval": 2**63 - 1})
    assert not plan.successful and "keyframe_interval must be in [1, 1000]" in plan.reason
    assert parse_parameters({"keyframe_interval": 1000}).pipeline.keyframe_interval == 1000


def test_allowed_values_come_from_config():
    """One registry per setting (config.CHOICES): the node offers exactly its keys, what the
    code takes (it used to offer the removed `flownet` and omit `torch`)."""
    assert {spec.name: spec.choices for spec in PARAMETERS if spec.choices} == {
        name: tuple(registry) for name, registry in CHOICES.items()}
    from accel_ros.model.flow import FLOW_ESTIMATORS

    assert set(PARAMETER_SPECS["flow_method"].choices) == set(FLOW_ESTIMATORS)
    for spec in PARAMETERS:
        assert "flownet" not in spec.description + spec.constraints()
        if spec.choices:
            assert spec.constraints() == f"one of {list(spec.choices)}"
            with pytest.raises(ValueError, match=f"{spec.name} 'nonsense' is not one of"):
                parse_parameters({spec.name: "nonsense"})
    # Every parameter is described (a new config field must not fall back to its name).
    assert [s.name for s in PARAMETERS if s.description == f"{s.target} {s.name}"] == []
    # input_size: [0, 0] means the checkpoint's own size, not the camera's.
    assert "the size the checkpoint was trained at" in PARAMETER_SPECS["input_size"].description


def _yaml_comments() -> dict[str, str]:
    """{parameter: the comment on its line} of config/accel.yaml."""
    comments = {}
    for line in PARAMS_FILE.read_text(encoding="utf-8").splitlines():
        if ":" in line and "#" in line and not line.lstrip().startswith("#"):
            name = line.split(":", 1)[0].strip()
            comments[name] = line.split("#", 1)[1].strip()
    return comments


def test_params_file_comments_list_the_allowed_values():
    """The comment of every parameter with choices starts with exactly those choices, and a
    range quoted in a comment is the one config.RANGES checks."""
    import re

    comments = _yaml_comments()
    for name, choices in CHOICES.items():
        listed = re.sub(r"\([^)]*\)", "", comments[name])
        listed = re.split(r"[:;]", listed)[0]
        assert sorted(v.strip() for v in listed.split(",")) == sorted(choices), name
    for name, allowed in RANGES.items():
        quoted = re.findall(r"[\[(][-\d.]+, [-\d.]+\]", comments.get(name, ""))
        assert quoted in ([], [str(allowed)]), (name, quoted)


def test_live_flags_are_exactly_the_per_frame_settings():
    live = {spec.name for spec in PARAMETERS if spec.live}
    assert {"keyframe_interval", "overlay_alpha", "palette", "publish_scores"} <= live
    assert not live & {"device", "precision", "mode", "flow_method", "preset", "checkpoint",
                       "input_size", "image_topic", "input_transport"}
    assert PARAMETER_SPECS["palette"].choices == ("camvid", "cityscapes", "camvid_cityscapes")


def test_apply_live_pipeline_updates_the_segmenters_config_object():
    target = PipelineConfig(keyframe_interval=5, flow_method="zero")
    settings = parse_parameters({"keyframe_interval": 2, "max_time_gap": 3.0})
    apply_live_pipeline(target, settings)
    assert (target.keyframe_interval, target.max_time_gap) == (2, 3.0)
    assert target.flow_method == "zero"  # restart-only fields are left alone
    assert target.return_probabilities is False
    apply_live_pipeline(target, parse_parameters({"publish_scores": True}))
    assert target.return_probabilities is True  # ~/scores needs probabilities


# --- stats message ---------------------------------------------------------------------------


def test_stats_message_text_equals_msg_file_byte_for_byte():
    msg_file = ROOT / "accel_ros_msgs" / "msg" / "SegmentationStats.msg"
    assert msg_file.read_bytes() == STATS_MSG_TEXT.encode()
    # Bags written by the tools carry the type name the ROS package generates.
    assert STATS_TYPE_NAME == "accel_ros_msgs/msg/SegmentationStats"


def _result(**overrides):
    from accel_ros.stream import SegmentationResult

    values = {
        "labels": np.zeros((4, 6), np.uint8),
        "confidence": 0.75,
        "is_keyframe": False,
        "keyframe_age": 2,
        "frame_index": 7,
        "timings": {"feature": 0.0, "flow": 1.5, "warp": 0.5, "task": 2.0, "update": 3.0,
                    "fusion": 0.25, "output": 0.5, "total": 8.0},
    }
    values.update(overrides)
    return SegmentationResult(**values)


def test_stats_fields_from_a_result():
    fields = stats_fields(_result(), mode="accel", stamp=10.0, now=10.040, dropped_frames=3)
    assert fields["frame_index"] == 7 and fields["keyframe_age"] == 2
    assert fields["is_keyframe"] is False and fields["mode"] == "accel"
    assert fields["flow_ms"] == 1.5 and fields["total_ms"] == 8.0 and fields["feature_ms"] == 0
    assert fields["end_to_end_ms"] == pytest.approx(40.0)
    assert fields["dropped_frames"] == 3 and fields["reset_reason"] == ""
    unstamped = stats_fields(_result(reset_reason="time gap"), mode="dff", stamp=None, now=5.0)
    assert math.isnan(unstamped["end_to_end_ms"]) and unstamped["reset_reason"] == "time gap"
    payload = json.loads(stats_to_json(unstamped, None, "cam"))
    assert payload["end_to_end_ms"] is None and payload["header"]["frame_id"] == "cam"
    assert payload["update_ms"] == 3.0
    # A stamp from the future (clock offset) is not a negative latency.
    future = stats_fields(_result(), mode="accel", stamp=20.0, now=10.0)
    assert math.isnan(future["end_to_end_ms"])
    # The JSON fallback copies the header stamp exactly (float seconds would round it).
    exact = json.loads(stats_to_json(fields, (1_795_000_000, 123_456_789), "cam"))
    assert exact["header"]["stamp"] == {"sec": 1_795_000_000, "nanosec": 123_456_789}


def test_stamp_conversions():
    assert seconds_to_stamp(12.25) == (12, 250_000_000)
    assert seconds_to_stamp(3.9999999999) == (4, 0)

    class Time:
        sec, nanosec = 5, 500_000_000

    assert stamp_to_seconds(Time) == 5.5


def test_stats_type_registers_in_rosbags_and_writes_a_bag(store, tmp_path):
    local = get_typestore(Stores.ROS2_HUMBLE)  # registering mutates the store: use a fresh one
    stats_cls = register_stats_type(local)
    assert register_stats_type(local) is stats_cls  # idempotent
    assert stats_cls.__msgtype__ == STATS_TYPE_NAME
    header = local.types["std_msgs/msg/Header"](
        stamp=local.types["builtin_interfaces/msg/Time"](sec=10, nanosec=0), frame_id="cam"
    )
    fields = stats_fields(_result(), mode="accel", stamp=10.0, now=10.02, dropped_frames=1)
    msg = stats_cls(header=header, **fields)
    labels = np.arange(24, dtype=np.uint8).reshape(4, 6) % 11
    image = local.types["sensor_msgs/msg/Image"](header=header, **from_array(labels, "mono8"))

    bag = tmp_path / "bag"
    with Writer(bag, version=9) as writer:
        stats_conn = writer.add_connection("/accel/stats", STATS_TYPE_NAME, typestore=local)
        label_conn = writer.add_connection("/accel/labels", "sensor_msgs/msg/Image",
                                           typestore=local)
        writer.write(stats_conn, 10, local.serialize_cdr(msg, STATS_TYPE_NAME))
        writer.write(label_conn, 10, local.serialize_cdr(image, "sensor_msgs/msg/Image"))
    with Reader(bag) as reader:
        read = {c.topic: local.deserialize_cdr(raw, c.msgtype) for c, _, raw in reader.messages()}
    assert read["/accel/stats"].frame_index == 7
    assert read["/accel/stats"].end_to_end_ms == pytest.approx(20.0, abs=1e-3)
    assert read["/accel/stats"].header.frame_id == "cam"
    np.testing.assert_array_equal(image_to_array(read["/accel/labels"]), labels)


# --- frame slot, statistics, throttling, diagnostics ---------------------------------------


def test_frame_slot_keeps_the_newest_frame_and_counts_drops():
    slot = FrameSlot()
    assert slot.take(timeout=0) is None
    assert slot.put("a") is False
    assert slot.put("b") is True and slot.put("c") is True
    assert slot.take(timeout=0) == "c"
    assert slot.take(timeout=0) is None
    slot.put("d")
    assert slot.take() == "d"
    assert (slot.received, slot.dropped) == (4, 2)


def test_frame_slot_keeps_a_reset_requested_by_a_dropped_frame():
    slot = FrameSlot(window=4)
    slot.put("a")
    slot.put("b", reset_reason="time gap of 5.000 s")  # b is dropped below, its reset is not
    slot.put("c")
    assert slot.take_entry(timeout=0) == ("c", "time gap of 5.000 s")
    slot.put("d")
    assert slot.take_entry(timeout=0) == ("d", None)
    assert slot.recent_drop_ratio() == pytest.approx(2 / 4)
    for item in "efgh":  # four arrivals taken in time: the window forgets the drops
        slot.put(item)
        slot.take(timeout=0)
    assert slot.recent_drop_ratio() == 0.0 and slot.dropped == 2


def test_stamp_gap_monitor_judges_arrivals_not_processed_frames():
    gaps = StampGapMonitor()
    # A 2 Hz camera: every arrival is 0.5 s after the previous one, however many the worker
    # drops, so nothing resets (the old rule compared processed frames: 1.0-1.5 s gaps).
    assert [gaps.observe(100.0 + 0.5 * i, max_time_gap=1.0) for i in range(20)] == [None] * 20
    assert "time gap of 5.000 s" in gaps.observe(109.5 + 5.0, max_time_gap=1.0)
    assert gaps.observe(115.0, max_time_gap=1.0) is None
    assert "time went backwards by 10.000 s" in gaps.observe(105.0, max_time_gap=1.0)
    assert gaps.observe(0.0, max_time_gap=1.0) is None  # unstamped: ignored
    # A 1 Hz camera with jitter: gaps of 1.05 s exceed max_time_gap but not twice its period.
    slow = StampGapMonitor()
    stamps = np.cumsum([1.0, 0.95, 1.05, 0.98, 1.05, 1.02, 0.97, 1.05])
    assert [slow.observe(float(t), max_time_gap=1.0) for t in stamps] == [None] * len(stamps)
    assert "time gap" in slow.observe(float(stamps[-1]) + 3.0, max_time_gap=1.0)


def test_frame_slot_close_wakes_a_waiting_worker():
    slot = FrameSlot()
    taken = []
    worker = threading.Thread(target=lambda: taken.append(slot.take()))
    worker.start()
    slot.close()
    worker.join(timeout=10)
    assert not worker.is_alive() and taken == [None] and slot.closed


def test_stream_statistics_numbers():
    stats = StreamStatistics(window=100)
    for i in range(150):  # only the last 100 frames (50..149) count
        stats.record({"total": float(i), "flow": 2.0}, is_keyframe=i % 5 == 0, now=i * 0.05,
                     end_to_end_ms=None if i % 2 else 30.0)
    latency = stats.latency()
    window = np.arange(50, 150, dtype=float)
    assert latency["total"]["mean"] == pytest.approx(window.mean())
    assert latency["total"]["p50"] == pytest.approx(np.percentile(window, 50))
    assert latency["total"]["p99"] == pytest.approx(np.percentile(window, 99))
    assert latency["flow"] == {"mean": 2.0, "p50": 2.0, "p99": 2.0}
    assert latency["end_to_end"]["mean"] == 30.0
    assert stats.fps() == pytest.approx(20.0)
    assert stats.keyframe_ratio() == pytest.approx(0.2)
    assert stats.processed == 150
    empty = StreamStatistics(window=10)
    assert empty.fps() == 0.0 and empty.keyframe_ratio() == 0.0 and empty.latency() == {}
    with pytest.raises(ValueError, match="window must be >= 2"):
        StreamStatistics(window=1)


def test_throttle_with_an_injected_clock():
    now = [0.0]
    throttle = Throttle(2.0, clock=lambda: now[0])
    assert throttle.allow("a") and not throttle.allow("a") and throttle.allow("b")
    now[0] = 1.9
    assert not throttle.allow("a")
    now[0] = 2.0
    assert throttle.allow("a")
    assert throttle.suppressed == {"a": 2}


def test_throttled_log_mixes_severities_and_counts_what_it_held_back():
    """Warnings and infos of one logger through one ThrottledLog (rclpy refuses a call site
    whose severity changes: the node's reset infos used to fail frames after a warning)."""
    now = [0.0]
    logger = RecordingLogger()
    log = ThrottledLog(logger, Throttle(5.0, clock=lambda: now[0]), limit=20)
    assert log.warning("a", "first warning")
    assert log.info("b", "an info")
    assert not log.warning("a", "held back") and not log.warning("a", "held back")
    now[0] = 6.0
    assert log.warning("a", "x" * 100)
    assert log.error("c", "an error")
    assert logger.records == [
        ("warning", "first warning"), ("info", "an info"),
        ("warning", "x" * 20 + "... (100 characters) (2 similar messages suppressed)"),
        ("error", "an error")]


def test_throttled_log_says_what_it_held_back_when_a_burst_stops():
    """A burst of warnings that ends: once a period has passed without one let through,
    flush() logs how many were held back and the newest, at their severity, once."""
    now = [0.0]
    logger = RecordingLogger()
    log = ThrottledLog(logger, Throttle(5.0, clock=lambda: now[0]), limit=40)
    assert log.warning("frame", "bad frame 1") and log.error("worker", "failed 1")
    for i in range(2, 5):
        assert not log.warning("frame", f"bad frame {i}")
    assert not log.error("worker", "failed 2")
    now[0] = 4.9
    assert log.flush() == 0  # within the period: the next message may still carry the count
    now[0] = 5.0
    assert log.flush() == 2
    assert logger.records[2:] == [
        ("warning", "3 similar messages suppressed; the newest: bad frame 4"),
        ("error", "1 similar messages suppressed; the newest: failed 2")]
    assert log.flush() == 0  # said once
    assert log.warning("frame", "bad frame 5")
    assert logger.records[-1] == ("warning", "bad frame 5")  # no count twice


def test_input_rate_tells_frames_lost_before_the_node_by_their_stamps():
    """A 15 Hz camera with jittered stamps: all frames arriving is no loss; 40% of them lost
    on the way (never seen by the node, so never counted as drops) is seen in the stamps, and
    /diagnostics warns. Unstamped frames say nothing; a stamp going back starts again."""
    rng = np.random.default_rng(3)
    stamps = 1000.0 + (np.arange(120) + rng.uniform(-0.15, 0.15, 120)) / 15.0
    complete, lossy = InputRate(window=60), InputRate(window=60)
    assert complete.rates() is None
    for stamp, lost in zip(stamps, rng.random(120) < 0.4, strict=True):
        complete.observe(float(stamp))
        if not lost:
            lossy.observe(float(stamp))
        lossy.observe(0.0)  # unstamped: ignored
    rates = complete.rates()
    assert rates.camera == pytest.approx(15.0, rel=0.05) and rates.loss < 0.05
    lost = lossy.rates()
    assert lost.camera == pytest.approx(15.0, rel=0.08)
    assert lost.loss == pytest.approx(0.4, abs=0.12)
    assert lossy.rates(expected_rate=30.0).loss == pytest.approx(0.7, abs=0.08)

    options, stats, errors = NodeOptions(), StreamStatistics(10), ErrorCounters()
    slot = FrameSlot()
    slot.put(object())
    stats.record({"total": 10.0}, True, 0.0)
    healthy = diagnostic_report(stats, slot, errors, "cpu", options, 5, rates=rates)
    assert healthy.level == OK and float(dict(healthy.values)["input_loss_ratio"]) < 0.05
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5, rates=lost)
    values = dict(report.values)
    assert report.level == WARN and "of the camera's frames did not reach the node" in (
        report.message), report.message
    assert float(values["input_rate_hz"]) == pytest.approx(9.0, abs=2.0)
    assert float(values["camera_rate_hz"]) == pytest.approx(15.0, rel=0.08)

    lossy.observe(900.0)  # the recording starts again: a new window
    assert lossy.rates() is None


def test_diagnostic_levels_and_values():
    options = NodeOptions()
    slot, stats, errors = FrameSlot(), StreamStatistics(10), ErrorCounters()
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5)
    assert report.level == STALE and "waiting" in report.message

    errors.conversion, errors.last = 3, "unsupported image encoding 'rgb9'"
    for _ in range(3):
        errors.outcome(failed=True)
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5)
    assert report.level == ERROR and "rgb9" in report.message

    errors = ErrorCounters()
    for i in range(4):
        slot.put(i)
        slot.take(timeout=0)
        stats.record({"total": 10.0}, is_keyframe=i == 0, now=i * 0.1)
    report = diagnostic_report(stats, slot, errors, "cuda:0", options, 5)
    values = dict(report.values)
    assert report.level == OK
    assert values["device"] == "cuda:0" and values["fps"] == "10.000"
    assert values["keyframe_ratio"] == "0.250" and values["frames_dropped"] == "0"
    assert values["total_ms_p99"] == "10.000" and values["keyframe_interval"] == "5"

    for i in range(3):
        slot.put(i)  # two of these three are overwritten before being taken
    report = diagnostic_report(stats, slot, errors, "cpu",
                               dataclasses.replace(options, checkpoint="none"), 5)
    assert report.level == WARN and "random weights" in report.message
    assert dict(report.values)["frames_dropped"] == "2"
    assert dict(report.values)["weights"] == "random"


def test_diagnostics_recover_after_bad_frames():
    options = NodeOptions(stats_window=4)
    slot, stats, errors = FrameSlot(window=4), StreamStatistics(4), ErrorCounters(window=4)
    errors.outcome(failed=True)
    errors.conversion, errors.last = 1, "unsupported image encoding 'rgb9'"
    slot.put(0)
    slot.take(timeout=0)
    for i in range(3):
        slot.put(i)
        slot.take(timeout=0)
        errors.outcome(failed=False)
        stats.record({"total": 10.0}, is_keyframe=False, now=i * 0.1)
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5)
    assert report.level == WARN and "1 of the last 4 frames failed" in report.message
    errors.outcome(failed=False)  # the bad frame leaves the window
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5)
    assert report.level == OK, report.message
    assert dict(report.values)["conversion_errors"] == "1"  # counters stay cumulative


# --- one camera's processing (the batch processor with one stream) --------------------------


@pytest.fixture(scope="module")
def segmenter():
    import torch

    from accel_ros.stream import build_segmenter

    torch.manual_seed(0)
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=32)
    return build_segmenter(config, PipelineConfig(device="cpu", keyframe_interval=2))


@pytest.fixture
def fresh(segmenter):
    segmenter.reset()
    segmenter.pipeline_config.keyframe_interval = 2
    segmenter.pipeline_config.return_probabilities = False
    return segmenter


def one_stream(segmenter, options: NodeOptions | None = None, logger=None) -> BatchProcessor:
    """The node's processing of a one-camera node (no stream prefix in its messages)."""
    return BatchProcessor(segmenter, ["default"], options, logger=logger, label_streams=False)


def run(batch: BatchProcessor, msg, reset: str | None = None):
    """One frame of the one stream through `batch`: its outputs, or None when skipped."""
    (outcome,) = batch.process([ReadyFrame("default", msg, reset)])
    return outcome.outputs


def smooth_frames(count: int, height: int = 64, width: int = 96) -> list[np.ndarray]:
    """Frames of a smooth texture sliding 2 px per frame."""
    import cv2

    rng = np.random.default_rng(1)
    base = cv2.GaussianBlur(rng.integers(0, 255, (height, width + 40, 3), np.uint8), (0, 0), 2)
    return [np.ascontiguousarray(base[:, 2 * t : 2 * t + width]) for t in range(count)]


def test_processor_segments_rosbags_messages(store, fresh):
    logger = RecordingLogger()
    processor = one_stream(fresh, NodeOptions(checkpoint="none"), logger=logger)
    outputs = [
        run(processor, image_msg(store, frame, "bgr8", stamp=1.0 + 0.1 * i))
        for i, frame in enumerate(smooth_frames(4))
    ]
    assert [o.result.is_keyframe for o in outputs] == [True, False, True, False]
    assert [o.result.keyframe_age for o in outputs] == [0, 1, 0, 1]
    first = outputs[0]
    assert first.labels.shape == (64, 96) and first.labels.dtype == np.uint8
    assert first.labels.max() < 11
    np.testing.assert_array_equal(first.rgb, smooth_frames(1)[0])  # bgr8 decoded to RGB
    assert first.color.shape == (64, 96, 3) and first.overlay.shape == (64, 96, 3)
    assert first.scores is None and first.stamp == pytest.approx(1.0)
    # The overlay is the alpha blend of input and colours.
    expected = 0.5 * first.rgb.astype(float) + 0.5 * first.color.astype(float)
    assert np.abs(first.overlay - expected).max() <= 1
    errors = processor.errors("default")
    assert errors.conversion == errors.inference == 0
    assert logger.records == []


def test_processor_skips_bad_frames_and_keeps_going(store, fresh):
    logger = RecordingLogger()
    processor = one_stream(fresh, NodeOptions(), logger=logger)
    frame = smooth_frames(1)[0]
    good = image_msg(store, frame, stamp=1.0)
    assert run(processor, good) is not None

    bad_encoding = dataclasses.replace(good, encoding="rgb9")
    assert run(processor, bad_encoding) is None
    empty = dataclasses.replace(good, height=0, width=0, step=0, data=np.zeros(0, np.uint8))
    assert run(processor, empty) is None
    short = dataclasses.replace(good, data=good.data[:-1])
    assert run(processor, short) is None
    assert processor.errors("default").conversion == 3
    assert "data has" in processor.errors("default").last

    after = run(processor, image_msg(store, frame, stamp=1.4))
    assert after is not None and after.labels.shape == (64, 96)
    assert not after.result.is_keyframe  # bad frames did not touch the keyframe cache
    warnings = [m for level, m in logger.records if level == "warning"]
    assert len(warnings) == 1 and "unsupported image encoding 'rgb9'" in warnings[0]


def test_processor_resolution_change_resets_the_cache(store, fresh):
    logger = RecordingLogger()
    processor = one_stream(fresh, NodeOptions(), logger=logger)
    big, small = smooth_frames(2)[0], smooth_frames(1, 48, 64)[0]
    run(processor, image_msg(store, big, stamp=1.0))
    run(processor, image_msg(store, big, stamp=1.1))
    outputs = run(processor, image_msg(store, small, "mono8", stamp=1.2))
    assert outputs is not None and outputs.labels.shape == (48, 64)
    assert outputs.result.is_keyframe
    assert "resolution changed" in outputs.result.reset_reason
    # A reset is information, not a problem: logged at info level, not as the last error.
    assert ("info", "keyframe cache reset: resolution changed from (64, 96) to (48, 64)") in (
        logger.records)
    errors = processor.errors("default")
    assert errors.resets == 1 and errors.last == ""


def test_processor_applies_a_reset_judged_on_arrival(store, fresh):
    logger = RecordingLogger()
    processor = one_stream(fresh, NodeOptions(), logger=logger)
    frames = smooth_frames(3)
    # Stamps 1.5 s apart do not reset by themselves: the node judges gaps on arrival.
    first = run(processor, image_msg(store, frames[0], stamp=1.0))
    second = run(processor, image_msg(store, frames[1], stamp=2.5))
    assert first.result.is_keyframe and not second.result.is_keyframe
    assert second.result.reset_reason is None
    third = run(processor, image_msg(store, frames[2], stamp=9.0),
                reset="time gap of 6.500 s > max_time_gap 1 s")
    assert third.result.is_keyframe and third.result.reset_reason.startswith("time gap")
    assert [level for level, _ in logger.records] == ["info"]
    errors = processor.errors("default")
    assert errors.last == "" and errors.resets == 1


def test_processor_compressed_input_and_scores(store, fresh):
    options = NodeOptions(publish_scores=True, publish_color=False, publish_overlay=False)
    apply_live_pipeline(fresh.pipeline_config, parse_parameters({"publish_scores": True}))
    processor = one_stream(fresh, options, logger=RecordingLogger())
    frame = smooth_frames(1)[0]
    header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=3, nanosec=0), frame_id="camera"
    )
    msg = store.types["sensor_msgs/msg/CompressedImage"](
        header=header, **rgb8_to_compressed(frame, "png")
    )
    outputs = run(processor, msg)
    assert outputs is not None
    np.testing.assert_array_equal(outputs.rgb, frame)
    assert outputs.color is None and outputs.overlay is None
    assert outputs.scores.shape == (64, 96) and outputs.scores.dtype == np.float32
    assert outputs.scores.min() >= 1.0 / 11 - 1e-6 and outputs.scores.max() <= 1.0 + 1e-6
    # The confidence reported is the mean low-resolution max probability: close to the map's.
    assert abs(outputs.scores.mean() - outputs.result.confidence) < 0.1


def test_processor_survives_a_failing_segmenter(store):
    class Exploding:
        resets = 0

        def check_frame(self, frame):
            pass

        def process_batch(self, frames):
            raise RuntimeError("CUDA out of memory")

        def reset(self, reason=None, stream="default"):
            self.resets += 1

    logger = RecordingLogger()
    broken = Exploding()
    processor = one_stream(broken, NodeOptions(), logger=logger)
    msg = image_msg(store, smooth_frames(1, 16, 16)[0])
    assert run(processor, msg) is None
    assert run(processor, msg) is None
    assert processor.errors("default").inference == 2 and broken.resets == 2
    assert len(logger.records) == 1  # the second failure was throttled
    assert "RuntimeError: CUDA out of memory" in logger.records[0][1]


@pytest.mark.skipif(not (CAMVID / "val").is_dir(), reason="../shared/camvid is not present")
def test_processor_on_real_camvid_frames(store, fresh):
    import cv2

    files = sorted((CAMVID / "val").glob("*.png"))[:2]
    processor = one_stream(fresh, NodeOptions(), logger=RecordingLogger())
    for i, path in enumerate(files):
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        rgb = cv2.resize(rgb, (96, 72), interpolation=cv2.INTER_AREA)
        outputs = run(processor, image_msg(store, rgb, "yuv422", stamp=1.0 + i))
        assert outputs is not None and outputs.labels.shape == (72, 96)
        assert outputs.color.shape == (72, 96, 3)
        assert 0.0 < outputs.result.confidence <= 1.0


# --- several cameras: stream names, ready frames, batches with per-stream errors -------------


@pytest.mark.parametrize(
    ("topic", "name"),
    [("front/image", "front"), ("/cams/left/image_raw", "cams/left"), ("rear", "rear"),
     ("~/side/image", "side"), ("/image", "image"), ("a/b/c/d", "a/b/c")],
)
def test_stream_name_drops_the_prefix_and_the_last_component(topic, name):
    assert stream_name(topic) == name


def test_stream_names_keep_order_and_refuse_clashes():
    assert stream_names(["front/image", "/cams/left/image_raw", "rear"]) == (
        "front", "cams/left", "rear")
    assert stream_names([]) == ()
    with pytest.raises(ValueError, match=r"'front/image' and '/front/image_raw' both give "
                                         r"the stream name 'front'"):
        stream_names(["front/image", "/front/image_raw"])
    with pytest.raises(ValueError, match="empty topic name"):
        stream_names(["front/image", " "])
    with pytest.raises(ValueError, match=r"stream name '2cams', which is not a valid ROS name"):
        stream_names(["2cams/image"])


def test_image_topics_parameter_is_a_string_array():
    spec = PARAMETER_SPECS["image_topics"]
    assert (spec.kind, spec.default, spec.live) == ("str_array", [], False)
    settings = parse_parameters({"image_topics": ["front/image", "rear/image"]})
    assert settings.options.image_topics == ["front/image", "rear/image"]
    # rcl hands `[]` from a params file or `-p image_topics:=[]` over as an unset value.
    assert parse_parameters({"image_topics": None}).options.image_topics == []
    assert parse_parameters({"image_topics": ()}).options.image_topics == []
    assert parse_parameters({}).parameter_values()["image_topics"] == []
    with pytest.raises(ValueError, match="'image_topics' must be of type str_array"):
        parse_parameters({"image_topics": "front/image"})
    with pytest.raises(ValueError, match="'image_topics' must be of type str_array"):
        parse_parameters({"image_topics": [1, 2]})
    with pytest.raises(ValueError, match="both give the stream name 'front'"):
        parse_parameters({"image_topics": ["front/image", "front/image_raw"]})
    plan = plan_parameter_update(parse_parameters({}), {"image_topics": ["a/image"]})
    assert not plan.successful and "cannot change while the node runs" in plan.reason
    with pytest.raises(ValueError, match=r"stream_timeout must be in \[0, "):
        parse_parameters({"stream_timeout": -1.0})
    # The default list is not shared between parameter sets.
    default_parameters()["image_topics"].append("x/image")
    assert default_parameters()["image_topics"] == []


def test_plan_streams_single_and_several():
    (single,) = plan_streams(NodeOptions(image_topic="camera/image_raw"), "default")
    assert single == StreamPlan("default", "camera/image_raw", "~/", "segmentation")
    plans = plan_streams(NodeOptions(image_topics=["front/image", "/cams/left/image_raw"]),
                         "default")
    assert [(p.name, p.topic, p.outputs, p.status) for p in plans] == [
        ("front", "front/image", "~/front/", "front segmentation"),
        ("cams/left", "/cams/left/image_raw", "~/cams/left/", "cams/left segmentation"),
    ]


def test_stream_slots_take_the_newest_frame_of_every_ready_stream():
    slots = StreamSlots(["a", "b", "c"], window=4)
    assert slots.take_ready(timeout=0) == []
    slots.put("b", "b1")
    slots.put("a", "a1")
    slots.put("a", "a2", reset_reason="time gap")  # a1 is dropped, its stream's reset is kept
    ready = slots.take_ready(timeout=0)
    assert [(r.stream, r.msg, r.reset_reason) for r in ready] == [
        ("a", "a2", "time gap"), ("b", "b1", None)]  # stream order; silent c is not waited for
    assert slots.take_ready(timeout=0) == []
    assert [(s.received, s.dropped) for s in slots.slots.values()] == [(2, 1), (1, 0), (0, 0)]
    assert slots.slots["c"].last_arrival is None and slots.slots["a"].last_arrival is not None


def test_stream_slots_wake_the_worker_for_any_stream_and_on_close():
    slots = StreamSlots(["a", "b"])
    taken: list = []
    worker = threading.Thread(target=lambda: taken.append(slots.take_ready(timeout=60)))
    worker.start()
    slots.put("b", "b1")  # the second stream alone wakes it: nobody waits for "a"
    worker.join(timeout=30)
    assert not worker.is_alive() and [r.msg for r in taken[0]] == ["b1"]
    worker = threading.Thread(target=lambda: taken.append(slots.take_ready(timeout=60)))
    worker.start()
    slots.close()
    worker.join(timeout=30)
    assert not worker.is_alive() and taken[1] == [] and slots.closed
    assert all(slot.closed for slot in slots.slots.values())


class FakeBatchSegmenter:
    """Records every call; labels are the frame's mean value, so routing is visible. `fail`:
    an exception to raise from the next process_batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.resets: list[tuple[str | None, str | None]] = []
        self.frame_index: dict[str, int] = {}
        self.fail: Exception | None = None

    def check_frame(self, frame) -> None:
        from accel_ros.stream.segmenter import AccelSegmenter

        AccelSegmenter.check_frame(frame)

    def reset(self, reason=None, stream="default") -> None:
        self.resets.append((reason, stream))

    def process_batch(self, frames):
        from accel_ros.stream import SegmentationResult

        self.batches.append([f.stream for f in frames])
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        results = []
        for f in frames:
            index = self.frame_index[f.stream] = self.frame_index.get(f.stream, -1) + 1
            labels = np.full(f.frame.shape[:2], int(f.frame.mean()) % 11, np.uint8)
            results.append(SegmentationResult(
                labels=labels, confidence=0.5, is_keyframe=index == 0, keyframe_age=index,
                frame_index=index, timings={"total": 1.0}, stream=f.stream,
                batch_size=len(frames)))
        return results


def _ready(store, stream: str, value: int, stamp: float, reset: str | None = None):
    rgb = np.full((8, 12, 3), value, np.uint8)
    return ReadyFrame(stream, image_msg(store, rgb, stamp=stamp), reset)


def test_batch_processor_routes_each_frame_to_its_own_stream(store):
    segmenter = FakeBatchSegmenter()
    logger = RecordingLogger()
    batch = BatchProcessor(segmenter, ["a", "b", "c"], NodeOptions(), logger=logger)
    outcomes = batch.process([_ready(store, "a", 3, 1.0), _ready(store, "c", 7, 2.5, "gap")])
    assert segmenter.batches == [["a", "c"]]  # one call for the ready streams
    assert segmenter.resets == [("gap", "c")]  # an arrival reset is for its own stream only
    assert [o.stream for o in outcomes] == ["a", "c"]
    assert [int(o.outputs.labels[0, 0]) for o in outcomes] == [3, 7]
    assert [o.outputs.stamp for o in outcomes] == [pytest.approx(1.0), pytest.approx(2.5)]
    assert outcomes[1].msg.header.stamp.sec == 2  # the frame's own message, for its header
    assert outcomes[0].outputs.color.shape == (8, 12, 3)
    assert [batch.errors(s).recent_failures for s in "abc"] == [0, 0, 0]
    assert len(batch.errors("b").recent) == 0  # b had no frame: nothing judged
    with pytest.raises(ValueError, match="at most one frame per stream"):
        batch.process([_ready(store, "a", 1, 3.0), _ready(store, "a", 2, 3.1)])
    assert logger.records == []


def test_batch_processor_skips_a_bad_frame_for_its_stream_only(store):
    segmenter = FakeBatchSegmenter()
    logger = RecordingLogger()
    batch = BatchProcessor(segmenter, ["a", "b"], NodeOptions(), logger=logger)
    bad = _ready(store, "b", 5, 1.0, reset="time gap")
    bad.msg = dataclasses.replace(bad.msg, encoding="rgb9")
    outcomes = batch.process([_ready(store, "a", 4, 1.0), bad])
    assert segmenter.batches == [["a"]]  # the bad frame never reached the batch
    assert outcomes[0].outputs is not None and outcomes[1].outputs is None
    assert segmenter.resets == [("time gap", "b")]  # its arrival reset still applies
    assert (batch.errors("a").conversion, batch.errors("b").conversion) == (0, 1)
    assert (batch.errors("a").recent_failures, batch.errors("b").recent_failures) == (0, 1)
    (warning,) = [m for level, m in logger.records if level == "warning"]
    assert warning.startswith("stream b: skipping frame: unsupported image encoding 'rgb9'")
    # Every frame unreadable: no batch at all.
    assert batch.process([bad])[0].outputs is None and segmenter.batches == [["a"]]
    # A frame the segmenter would refuse (empty image) is checked before the batch too.
    empty = _ready(store, "a", 1, 2.0)
    batch.reporters["a"].converter = lambda msg: np.zeros((0, 4, 3), np.uint8)
    outcomes = batch.process([empty, _ready(store, "b", 9, 2.0)])
    assert segmenter.batches[-1] == ["b"] and outcomes[0].outputs is None
    assert batch.errors("a").conversion == 1 and "refused" in batch.errors("a").last


def test_batch_processor_survives_a_failing_batch_and_resets_its_streams(store):
    segmenter = FakeBatchSegmenter()
    logger = RecordingLogger()
    batch = BatchProcessor(segmenter, ["a", "b", "c"], NodeOptions(), logger=logger)
    segmenter.fail = RuntimeError("CUDA out of memory")
    outcomes = batch.process([_ready(store, "a", 1, 1.0), _ready(store, "b", 2, 1.0)])
    assert [o.outputs for o in outcomes] == [None, None]
    assert segmenter.resets == [(None, "a"), (None, "b")]  # c was not in the batch
    assert [batch.errors(s).inference for s in "abc"] == [1, 1, 0]
    warnings = [m for level, m in logger.records if level == "warning"]
    assert warnings == [f"stream {s}: segmentation failed (RuntimeError: CUDA out of memory)"
                        for s in "ab"]
    # The next batch is processed normally.
    outcomes = batch.process([_ready(store, "a", 1, 1.1), _ready(store, "c", 3, 1.1)])
    assert all(o.outputs is not None for o in outcomes)
    # A ValueError from the batch (frames were checked, so unexpected) skips without reset.
    segmenter.fail = ValueError("stream 'b': bad")
    resets = len(segmenter.resets)
    outcomes = batch.process([_ready(store, "b", 2, 1.2)])
    assert outcomes[0].outputs is None and len(segmenter.resets) == resets
    assert batch.errors("b").conversion == 1
    # Results for the wrong streams are a failure, never published on another stream's topics.
    segmenter.process_batch = lambda frames: FakeBatchSegmenter.process_batch(
        segmenter, list(reversed(frames)))
    outcomes = batch.process([_ready(store, "a", 1, 1.3), _ready(store, "b", 2, 1.3)])
    assert [o.outputs for o in outcomes] == [None, None]
    assert "returned results for streams ['b', 'a']" in batch.errors("a").last


def test_batch_processor_refusal_inside_a_batch_costs_only_that_stream(store):
    """The shared policy (accel_ros.stream.batching): a frame the segmenter refuses inside a
    batch is retried alone with the others, so only its own stream loses it."""
    segmenter = FakeBatchSegmenter()
    batch = BatchProcessor(segmenter, ["a", "b"], NodeOptions(), logger=RecordingLogger())
    original = segmenter.process_batch

    def refuse_b(frames):
        if any(f.stream == "b" for f in frames):
            segmenter.batches.append([f.stream for f in frames])
            raise ValueError("stream 'b': refused")
        return original(frames)

    segmenter.process_batch = refuse_b
    outcomes = batch.process([_ready(store, "a", 1, 1.0), _ready(store, "b", 2, 1.0)])
    assert segmenter.batches == [["a", "b"], ["a"], ["b"]]
    assert outcomes[0].outputs is not None and outcomes[1].outputs is None
    assert (batch.errors("a").conversion, batch.errors("b").conversion) == (0, 1)
    assert segmenter.resets == []


def test_batch_processor_live_options_reach_every_stream(store):
    batch = BatchProcessor(FakeBatchSegmenter(), ["a", "b"], NodeOptions(),
                           logger=RecordingLogger())
    batch.options = NodeOptions(publish_color=False, publish_overlay=False)
    outcomes = batch.process([_ready(store, "a", 1, 1.0), _ready(store, "b", 2, 1.0)])
    assert all(o.outputs.color is None and o.outputs.overlay is None for o in outcomes)


def test_batch_processor_with_a_real_segmenter_keeps_streams_apart(store):
    """Two streams through the real AccelSegmenter in batches give what each stream alone
    gives (the pipeline's own tests cover this in depth; this checks the node's side)."""
    import torch

    from accel_ros.model import build_model
    from accel_ros.stream.segmenter import AccelSegmenter

    torch.manual_seed(0)
    model = build_model(ModelConfig(reference_backbone="resnet18",
                                    update_backbone="resnet18", head_channels=16))
    config = dict(device="cpu", keyframe_interval=2, stagger_keyframes=False)
    shared = AccelSegmenter(model, PipelineConfig(**config))
    shared.configure_streams(["a", "b"])
    batch = BatchProcessor(shared, ["a", "b"], NodeOptions(), logger=RecordingLogger())
    clips = {"a": smooth_frames(3), "b": [np.ascontiguousarray(f[::-1, ::-1])
                                          for f in smooth_frames(3)]}
    alone = {s: AccelSegmenter(model, PipelineConfig(**config)) for s in clips}
    for t in range(3):
        frames = [ReadyFrame(s, image_msg(store, clips[s][t], stamp=1 + t)) for s in clips]
        for outcome in batch.process(frames):
            expected = alone[outcome.stream].process(clips[outcome.stream][t])
            assert outcome.outputs.result.batch_size == 2
            assert outcome.outputs.result.frame_index == t
            assert np.mean(outcome.outputs.labels == expected.labels) >= 0.999


def test_diagnostics_report_a_stopped_stream():
    now = [100.0]
    options = NodeOptions(stream_timeout=2.0)
    slot, stats, errors = FrameSlot(window=4, clock=lambda: now[0]), StreamStatistics(4), \
        ErrorCounters(window=4)
    for i in range(3):
        slot.put(i)
        slot.take(timeout=0)
        errors.outcome(failed=False)
        stats.record({"total": 10.0}, is_keyframe=False, now=i * 0.1)
    now[0] = 101.5
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5, now=now[0],
                               stream="front", topic="/front/image")
    values = dict(report.values)
    assert report.level == OK and values["seconds_since_input"] == "1.500"
    assert (values["stream"], values["topic"]) == ("front", "/front/image")
    now[0] = 104.0
    report = diagnostic_report(stats, slot, errors, "cpu", options, 5, now=now[0])
    assert report.level == STALE and "stopped receiving" in report.message
    assert "4.0 s" in report.message and "stream" not in dict(report.values)
    no_timeout = dataclasses.replace(options, stream_timeout=0.0)
    assert diagnostic_report(stats, slot, errors, "cpu", no_timeout, 5, now=now[0]).level == OK
    # Without `now` (or before any frame) the rule does not apply.
    assert diagnostic_report(stats, slot, errors, "cpu", options, 5).level == OK
    fresh = diagnostic_report(StreamStatistics(4), FrameSlot(), ErrorCounters(), "cpu",
                              options, 5, now=1e6)
    assert fresh.level == STALE and fresh.message == "waiting for images"


# --- camera_info beside each image topic -------------------------------------------------------


@pytest.mark.parametrize(("image", "info"), [
    ("/camera/image_raw", "/camera/camera_info"),
    ("/robot1/cams/left/image", "/robot1/cams/left/camera_info"),
    ("/image", "/camera_info"),
    ("/cam/image_raw/", "/cam/camera_info"),
])
def test_camera_info_topic_is_image_transports(image, info):
    assert camera_info_topic(image) == info


def _camera_info(store, height, width, roi=(0, 0), binning=(0, 0)):
    """A sensor_msgs/CameraInfo of the rosbags typestore (the fields rclpy's has)."""
    info_cls = store.types["sensor_msgs/msg/CameraInfo"]
    roi_cls = store.types["sensor_msgs/msg/RegionOfInterest"]
    header_cls, time_cls = store.types["std_msgs/msg/Header"], store.types[
        "builtin_interfaces/msg/Time"]
    return info_cls(
        header=header_cls(stamp=time_cls(sec=1, nanosec=0), frame_id="cam"), height=height,
        width=width, distortion_model="plumb_bob", d=np.zeros(5), k=np.eye(3).reshape(-1),
        r=np.eye(3).reshape(-1), p=np.zeros(12), binning_x=binning[1], binning_y=binning[0],
        roi=roi_cls(x_offset=0, y_offset=0, height=roi[0], width=roi[1], do_rectify=False))


def test_calibrated_image_size_follows_roi_and_binning(store):
    assert calibrated_image_size(_camera_info(store, 1080, 1920)) == (1080, 1920)
    assert calibrated_image_size(_camera_info(store, 1080, 1920, binning=(2, 2))) == (540, 960)
    assert calibrated_image_size(_camera_info(store, 1080, 1920, binning=(1, 1))) == (1080, 1920)
    roi = _camera_info(store, 1080, 1920, roi=(720, 1280), binning=(2, 2))
    assert calibrated_image_size(roi) == (360, 640)


def test_camera_info_relay_notes_missing_once_then_passes_the_newest_on(store):
    relay = CameraInfoRelay()
    first = relay.for_labels((180, 240))
    assert first.info is None and first.missing and first.mismatch is None
    assert relay.for_labels((180, 240)) == RelayDecision()  # noted once only
    matching = _camera_info(store, 180, 240)
    relay.update(matching)
    assert relay.for_labels((180, 240)) == RelayDecision(info=matching)
    bigger = _camera_info(store, 360, 480)
    relay.update(bigger)
    decision = relay.for_labels((180, 240))
    assert decision.info is bigger and not decision.missing  # still passed on
    assert decision.mismatch == ("camera_info describes 480x360 images but the image is "
                                 "240x180; passed on unchanged")
    binned = _camera_info(store, 360, 480, binning=(2, 2))
    relay.update(binned)
    assert relay.for_labels((180, 240)) == RelayDecision(info=binned)  # binning: it matches
    assert relay.received == 3


def test_camera_info_relay_refuses_unsound_calibrations_and_drops_the_one_before(store):
    """Wrong geometry is worse than none: a NaN or inf anywhere, or a negative focal length,
    is refused when it arrives and the calibration before it is no longer passed on; the
    next sound one is. All-zero K (ROS's "uncalibrated") passes."""
    relay = CameraInfoRelay()
    sound = _camera_info(store, 180, 240)
    assert relay.update(sound) is None
    nan = _camera_info(store, 180, 240)
    nan.k = np.array([np.nan, 0, 120, 0, 300, 90, 0, 0, 1.0])
    assert relay.update(nan) == ("camera_info refused, its K holds nan: labels go without one "
                                 "until a sound one")
    assert relay.for_labels((180, 240)) == RelayDecision()  # nothing, and no "missing" note
    for field, values in (("d", [0.1, np.inf, 0, 0, 0]), ("p", [np.nan] * 12)):
        broken = _camera_info(store, 180, 240)
        setattr(broken, field, np.array(values))
        assert f"its {field.upper()} holds" in relay.update(broken)
    negative = _camera_info(store, 180, 240)
    negative.k = np.array([-300.0, 0, 120, 0, 300, 90, 0, 0, 1])
    assert "focal length is negative" in relay.update(negative)
    uncalibrated = _camera_info(store, 180, 240)
    uncalibrated.k = np.zeros(9)
    assert relay.update(uncalibrated) is None
    assert relay.for_labels((180, 240)) == RelayDecision(info=uncalibrated)
    assert (relay.received, relay.refused) == (6, 4)


def test_camera_info_relay_stops_passing_on_a_calibration_whose_publisher_stopped(store):
    """Drivers publish camera_info with every image: one older than max_age (the node's
    stream_timeout) is stale and not passed on, until a new one arrives; 0 turns it off."""
    now = [100.0]
    relay = CameraInfoRelay(clock=lambda: now[0])
    info = _camera_info(store, 180, 240)
    relay.update(info)
    now[0] = 102.9
    assert relay.for_labels((180, 240), max_age=3.0) == RelayDecision(info=info)
    now[0] = 103.5
    stale = relay.for_labels((180, 240), max_age=3.0)
    assert stale.info is None and stale.stale == (
        "the newest camera_info is 3.5 s old (more than stream_timeout 3 s): not passed on")
    assert relay.for_labels((180, 240), max_age=0.0) == RelayDecision(info=info)
    relay.update(info)  # the driver is back
    assert relay.for_labels((180, 240), max_age=3.0) == RelayDecision(info=info)
