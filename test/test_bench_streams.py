"""`accel-ros bench-streams`: one node serving N cameras against N separate processes.

One end-to-end run on a tiny random-weight model (real child processes, 1 and 2 streams, a few
rounds) checks the report's shape and that its counts add up; the arithmetic (summaries,
ratios), the settings, the options, the deadline and the per-stream frames are checked without
processes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from accel_ros.bench import common
from accel_ros.bench import streams as bench_streams
from accel_ros.cli import bench as bench_cli
from accel_ros.cli import bench_streams as streams_cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {
    "streams", "setup", "baseline", "processes", "frames_per_stream", "frames_total",
    "per_stream_fps", "per_stream_fps_min", "total_fps", "latency_ms", "rss_mb",
    "rss_mb_per_process", "rss_end_mb", "rss_loaded_mb", "cuda_peak_mb", "frames_mb",
    "keyframes_per_stream",
    "max_keyframes_per_batch", "batch_sizes", "timed_span_s", "padding_rounds", "load_s",
    "threads_per_process", "cpus", "notes", "runs", "repeats",
}
# A tiny random-weight Accel: ResNet-18 both ways, 16-channel N_feat.
TINY = ["--model", "camvid34", "--reference-backbone", "resnet18", "--update-backbone",
        "resnet18", "--head-channels", "16"]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="accel-ros")
    streams_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["bench-streams", *argv])


def test_streams_end_to_end_one_node_against_separate_processes(
    tmp_path: Path, capsys
) -> None:
    out_json, out_png = tmp_path / "streams.json", tmp_path / "streams.png"
    args = _parse([
        "--streams", "1,2", *TINY, "--height", "48", "--width", "64", "--frames", "3",
        "--warmup", "2", "--keyframe-interval", "2", "--threads", "1", "--clip-frames", "3",
        "--device", "cpu", "--json", str(out_json), "--plot", str(out_png),
    ])
    assert args.handler(args) == 0
    stdout = capsys.readouterr().out
    assert "accel-ros bench-streams: 48x64 on cpu" in stdout and "one node" in stdout
    # Measured ratios, no verdicts against issue targets.
    assert "target" not in stdout and " met" not in stdout and "NOT met" not in stdout

    report = json.loads(out_json.read_text())
    assert set(report) == {"meta", "rows", "comparisons", "skipped"}
    assert report["skipped"] == []
    meta = report["meta"]
    assert (meta["height"], meta["width"], meta["mode"], meta["keyframe_interval"]) == (
        48, 64, "accel", 2
    )
    # 3 frames round up to 2 whole keyframe cycles.
    assert meta["frames_per_stream"] == 4 and meta["stagger_keyframes"]
    assert meta["thread_split"] == {"split": {"1": 1, "2": 1}}
    assert meta["cpus"] is None or len(meta["cpus"]) == 1  # every child on the same one CPU
    plan = [(r["streams"], r["setup"], r["baseline"]) for r in report["rows"]]
    assert plan == [(1, "one_node", None), (1, "separate", "split"),
                    (2, "one_node", None), (2, "separate", "split")]
    for row in report["rows"]:
        assert set(row) == ROW_KEYS
        count = row["streams"]
        assert row["processes"] == (1 if row["setup"] == "one_node" else count)
        # Counts add up: every stream ran every timed round, one keyframe per cycle.
        assert row["frames_per_stream"] == 4 and row["frames_total"] == 4 * count
        assert row["keyframes_per_stream"] == [2] * count
        assert row["batch_sizes"] == [count if row["setup"] == "one_node" else 1]
        latency = row["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
        assert row["total_fps"] == pytest.approx(row["per_stream_fps"] * count, rel=0.5)
        assert row["per_stream_fps_min"] <= row["per_stream_fps"]
        assert row["rss_mb"] > 0 and len(row["rss_mb_per_process"]) == row["processes"]
        assert row["rss_mb"] == pytest.approx(sum(row["rss_mb_per_process"]))
        assert row["threads_per_process"] == 1 and row["repeats"] == 1
        if meta["cpus"] is not None:
            assert row["cpus"] == meta["cpus"]  # the children really ran on those CPUs
    node_two = report["rows"][2]
    assert node_two["max_keyframes_per_batch"] == 1  # staggered: never both streams at once

    comparisons = {(c["kind"], c["streams"]): c for c in report["comparisons"]}
    assert set(comparisons) == {("memory", 2), ("throughput", 1), ("throughput", 2)}
    memory = comparisons[("memory", 2)]
    assert memory["ratio"] == pytest.approx(node_two["rss_mb"] / report["rows"][0]["rss_mb"])
    throughput = comparisons[("throughput", 2)]
    assert throughput["ratio"] == pytest.approx(
        node_two["total_fps"] / report["rows"][3]["total_fps"]
    )
    assert throughput["p99_ratio"] > 0 and isinstance(throughput["p99_no_worse"], bool)
    for item in report["comparisons"]:
        assert "target" not in item and "met" not in item
    assert out_png.read_bytes().startswith(PNG_MAGIC)


def _child(streams: int, latencies: list[float], span: float, keyframes: list[list[bool]],
           peak: float) -> dict:
    """A child's result as the worker reports it."""
    return {
        "streams": [f"cam{i}" for i in range(streams)], "threads": 1, "begin": 10.0,
        "end": 10.0 + span, "latency_ms": latencies,
        "keyframes": keyframes, "batch_sizes": [streams] * len(latencies),
        "padding_rounds": 0, "load_s": 1.0, "peak_rss_mb": peak, "rss_loaded_mb": peak,
        "rss_end_mb": peak, "cuda_peak_mb": None, "frames_mb": 1.0, "fast_path_notes": [],
    }


def test_summaries_count_every_frame_and_sum_the_processes() -> None:
    flags = [[True, False], [False, True], [False, False], [False, False]]
    node = bench_streams.summarise([_child(2, [10.0, 20.0, 30.0, 40.0], 2.0, flags, 900.0)], 4)
    assert node["frames_total"] == 8 and node["frames_per_stream"] == 4
    assert node["per_stream_fps"] == pytest.approx(2.0) and node["total_fps"] == pytest.approx(4.0)
    assert node["keyframes_per_stream"] == [1, 1] and node["max_keyframes_per_batch"] == 1
    # Both frames of a batch waited for the whole call.
    assert node["latency_ms"]["mean"] == pytest.approx(25.0)
    assert node["latency_ms"]["max"] == 40.0
    single = [[True], [False], [False], [False]]
    separate = bench_streams.summarise([
        _child(1, [5.0] * 4, 1.0, single, 800.0), _child(1, [50.0] * 4, 4.0, single, 810.0),
    ], 4)
    # Total throughput: each process's own rate, summed (4 + 1 fps).
    assert separate["total_fps"] == pytest.approx(5.0)
    assert separate["per_stream_fps_min"] == pytest.approx(1.0)
    assert separate["rss_mb"] == pytest.approx(1610.0)
    assert separate["rss_mb_per_process"] == [800.0, 810.0]
    assert separate["latency_ms"]["p99"] == pytest.approx(np.percentile([5.0] * 4 + [50.0] * 4,
                                                                        99))
    with pytest.raises(RuntimeError, match="timed 4 rounds, not 5"):
        bench_streams.summarise([_child(1, [5.0] * 4, 1.0, single, 800.0)], 5)


def _row(streams: int, setup: str, fps: list[float], p99: list[float], rss: list[float],
         baseline: str | None = None, cuda: list[float | None] | None = None) -> dict:
    return {"streams": streams, "setup": setup, "baseline": baseline, "threads_per_process": 1,
            "runs": {"total_fps": fps, "p99_ms": p99, "rss_mb": rss,
                     "cuda_peak_mb": cuda or [None] * len(fps)}}


def test_comparisons_are_medians_of_per_run_ratios() -> None:
    rows = [
        _row(1, "one_node", [10.0, 10.0, 10.0], [100.0] * 3, [1000.0, 1000.0, 1000.0]),
        _row(1, "separate", [10.0, 10.0, 10.0], [100.0] * 3, [1000.0] * 3, "split"),
        _row(4, "one_node", [30.0, 26.0, 36.0], [200.0] * 3, [1200.0, 1400.0, 1250.0]),
        _row(4, "separate", [20.0, 20.0, 20.0], [250.0] * 3, [4000.0] * 3, "split"),
        _row(4, "separate", [25.0, 25.0, 25.0], [150.0] * 3, [4000.0] * 3, "full"),
    ]
    items = {(c["kind"], c["streams"], c.get("baseline")): c for c in bench_streams.compare(rows)}
    memory = items[("memory", 4, None)]
    assert memory["ratio"] == pytest.approx(1.25) and memory["range"] == pytest.approx([1.2, 1.4])
    split = items[("throughput", 4, "split")]
    assert split["ratio"] == pytest.approx(1.5) and split["range"] == pytest.approx([1.3, 1.8])
    assert split["p99_no_worse"]
    full = items[("throughput", 4, "full")]
    # Faster than the full-thread baseline (1.2x) but with a worse p99.
    assert full["ratio"] == pytest.approx(1.2) and not full["p99_no_worse"]
    assert items[("throughput", 1, "split")]["ratio"] == pytest.approx(1.0)
    # On the CPU there is no device memory to compare.
    assert not any(kind == "device_memory" for kind, _, _ in items)


def test_on_cuda_memory_is_also_judged_by_device_memory() -> None:
    """Issue 20: on a GPU the activations live in device memory, which host RSS misses."""
    rows = [
        _row(1, "one_node", [10.0] * 2, [100.0] * 2, [900.0] * 2, cuda=[1000.0, 1000.0]),
        _row(2, "one_node", [18.0] * 2, [110.0] * 2, [910.0] * 2, cuda=[1500.0, 1700.0]),
    ]
    items = {c["kind"]: c for c in bench_streams.compare(rows)}
    assert items["memory"]["ratio"] == pytest.approx(910.0 / 900.0)
    device = items["device_memory"]
    assert device["ratio"] == pytest.approx(1.6) and device["range"] == pytest.approx([1.5, 1.7])
    assert "CUDA max allocated" in device["name"]


def test_settings_round_to_cycles_split_threads_and_stagger() -> None:
    settings = bench_streams.StreamsSettings(
        streams=(4, 1, 2, 2), threads=4, frames=12, keyframe_interval=5, separate="both"
    )
    assert settings.streams == (1, 2, 4) and settings.rounds == 15
    assert settings.warmup_rounds == 5  # one keyframe cycle
    assert settings.baselines() == ("split", "full")
    assert [settings.separate_threads("split", n) for n in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert settings.separate_threads("full", 4) == 4
    cpus = settings.cpus()
    assert cpus is None or (0 < len(cpus) <= 4 and cpus == sorted(cpus))
    assert bench_streams.StreamsSettings(pin=False).cpus() is None
    assert [settings.stagger_offset(i, 4) for i in range(4)] == [0, 1, 2, 4]
    unstaggered = bench_streams.StreamsSettings(stagger=False)
    assert unstaggered.stagger_offset(3, 4) == 0
    with pytest.raises(ValueError, match="--warmup must be >= 1"):
        bench_streams.StreamsSettings(warmup=0)
    with pytest.raises(ValueError, match="counts >= 1"):
        bench_streams.StreamsSettings(streams=(0, 2))


def test_streams_options_parse_and_refuse_what_does_not_apply(capsys) -> None:
    settings = streams_cli.settings_from_args(_parse(["--streams", "4,1,2", "--threads", "2"]))
    assert settings.streams == (1, 2, 4) and (settings.height, settings.width) == (360, 480)
    assert settings.keyframe_interval == 5 and settings.mode == "accel"
    assert settings.model == "default" and settings.threads == 2
    assert settings.frames == bench_streams.DEFAULT_FRAMES
    assert streams_cli.settings_from_args(_parse([])).streams == (1, 2, 4)
    # Options of the single-stream bench are not options here, nor the other way round.
    for stray in (["--variants", "dff"], ["--intervals", "1-3"], ["--precision", "fp16"]):
        with pytest.raises(SystemExit):
            _parse(stray)
    with pytest.raises(ValueError, match="bad stream count list"):
        streams_cli.parse_counts("1,x")
    parser = argparse.ArgumentParser(prog="accel-ros")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--no-stagger"])
    capsys.readouterr()


def test_a_deadline_leaves_set_ups_out_and_names_them() -> None:
    settings = bench_streams.StreamsSettings(
        streams=(1, 2), height=48, width=64, frames=2, warmup=1, keyframe_interval=2,
        clip_frames=3, model="camvid34", reference_backbone="resnet18",
        update_backbone="resnet18", head_channels=16,
    )
    report = bench_streams.run_streams_benchmark(settings, deadline=common.Deadline.after(0))
    assert report["rows"] == [] and report["comparisons"] == []
    assert [name.rsplit(" (", 1)[0] for name in report["skipped"]] == [
        "run 1/1: N=1 one node", "run 1/1: N=1 separate (split)",
        "run 1/1: N=2 one node", "run 1/1: N=2 separate (split)",
    ]
    assert all(name.endswith(" s left before the deadline)") for name in report["skipped"])
    assert "not run: run 1/1: N=2 one node" in bench_streams.format_table(report)


def test_each_stream_has_its_own_moving_content() -> None:
    clips, source = common.make_stream_frames(3, 4, 40, 56, seed=2)
    assert len(clips) == 3 and source
    for clip in clips:
        assert clip.shape == (4, 40, 56, 3) and clip.dtype == np.uint8
        assert not np.array_equal(clip[0], clip[1])  # the camera moves
    difference = np.abs(clips[0][0].astype(int) - clips[1][0].astype(int)).mean()
    assert difference > 10  # visibly different streets
    order = [common.ping_pong_index(4, i) for i in range(8)]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1]


def test_a_child_that_dies_is_reported_with_its_stderr(tmp_path: Path) -> None:
    spec = {"streams": ["cam0"], "frames": [str(tmp_path / "missing.npy")], "threads": 1,
            "api": "single", "cpus": None}
    with pytest.raises(RuntimeError, match=r"(?s)exited with code 1 before 'ready'.*missing"):
        bench_streams.run_children([spec], tmp_path, timeout_s=120)
