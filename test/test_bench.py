"""`accel-ros bench`: end-to-end run on a tiny config (JSON shape, table, PNG), accuracy file
formats, the trade-off plot, option parsing, N_R sharing and the frame source."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from accel_ros.model import STAGES
from accel_ros.tools import bench

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {
    "variant", "mode", "fastpath", "keyframe_interval", "frames", "keyframes", "latency_ms",
    "fps", "stages_ms", "peak_memory_mb", "peak_extra_mb", "notes", "ratio_to_reference",
}


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-ros")
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.handler(args)


def test_bench_end_to_end_writes_table_json_and_png(tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = _run_cli([
        "--variants", "reference,dff,accel18", "--intervals", "2",
        "--height", "32", "--width", "64", "--frames", "2", "--warmup", "1",
        "--reference-backbone", "resnet18", "--overlap-flow", "--fast-variants", "accel18",
        "--fast-intervals", "2", "--clip-frames", "4", "--device", "cpu",
        "--json", str(out_json), "--plot", str(out_png),
    ])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "accel-ros bench: 32x64 on cpu" in stdout and "overlap_flow" in stdout

    report = json.loads(out_json.read_text())
    assert set(report) == {"meta", "results", "targets"}
    meta = report["meta"]
    assert (meta["height"], meta["width"], meta["device"]) == (32, 64, "cpu")
    assert meta["reference_backbone"] == "resnet18" and meta["memory"] == "process_peak_rss"
    rows = [(r["fastpath"], r["variant"], r["keyframe_interval"]) for r in report["results"]]
    assert rows == [
        ("plain", "reference", None), ("plain", "dff", 2), ("plain", "accel18", 2),
        ("overlap_flow", "accel18", 2),
    ]
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] and latency["mean"] > 0
        assert result["fps"] == pytest.approx(1000.0 / latency["mean"])
        assert set(result["stages_ms"]) == {*STAGES, "total"}
        assert result["frames"] == 2 and result["peak_memory_mb"] > 0
        # Every measurement starts from a reset cache: one keyframe per whole cycle.
        assert result["keyframes"] == (2 if result["keyframe_interval"] is None else 1)
    plain = {(r["variant"], r["keyframe_interval"]): r for r in report["results"]
             if r["fastpath"] == "plain"}
    assert plain[("reference", None)]["ratio_to_reference"] == pytest.approx(1.0)
    assert plain[("dff", 2)]["stages_ms"]["warp"] > 0
    assert plain[("dff", 2)]["stages_ms"]["update"] == 0.0
    assert plain[("accel18", 2)]["stages_ms"]["update"] > 0
    assert plain[("accel18", 2)]["latency_ms"]["non_keyframe"] is not None
    assert report["targets"] == []  # interval 5 was not measured

    data = out_png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100


def _fake_report() -> dict:
    """A report as run_benchmark returns it, without running a network."""

    def row(variant, mode, k, mean):
        return {"variant": variant, "mode": mode, "fastpath": "plain", "keyframe_interval": k,
                "latency_ms": {"mean": mean, "p50": mean, "p99": mean}, "ratio_to_reference": None}

    results = [
        row("reference", "reference", None, 300.0),
        row("deeplab18", "deeplab", None, 60.0),
        *(row("dff", "dff", k, 300.0 / k + 10) for k in (1, 2, 5)),
        *(row("accel18", "accel", k, 300.0 / k + 60) for k in (1, 2, 5)),
    ]
    bench._add_ratios(results)
    meta = {"height": 64, "width": 128, "device": "cpu", "device_name": "test",
            "reference_backbone": "resnet101"}
    return {"meta": meta, "results": results, "targets": bench.check_targets(results)}


def test_targets_and_ratios_from_the_plain_path() -> None:
    report = _fake_report()
    targets = {t["name"]: t for t in report["targets"]}
    accel = targets["accel18 at keyframe interval 5 vs reference"]
    assert accel["ratio"] == pytest.approx(120.0 / 300.0) and accel["met"]
    dff = targets["dff at keyframe interval 5 vs reference"]
    assert dff["ratio"] == pytest.approx(70.0 / 300.0) and dff["target"] == 0.40


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_accuracy_formats(tmp_path: Path) -> None:
    report = _fake_report()
    simple = bench.load_accuracy(
        _write(tmp_path / "a.json", {"DeepLab-101": {"miou": 0.70}, "Accel-18": {"miou": 0.68},
                                     "deeplab18": {"miou": 0.60}}),
        report,
    )
    # Fractions become percent; flow variants default to interval 5, every-frame ones to None.
    assert simple == {"reference": {None: pytest.approx(70.0)},
                      "accel18": {5: pytest.approx(68.0)}, "deeplab18": {None: pytest.approx(60.0)}}
    per_interval = bench.load_accuracy(
        _write(tmp_path / "b.json", {"dff": {"1": 70.0, "2": 66.5, "5": 60.0}}), report
    )
    assert per_interval == {"dff": {1: 70.0, 2: 66.5, 5: 60.0}}
    eval_json = {"per_interval": {"reference": {"1": 0.7, "2": 0.7},
                                  "accel": {"1": 0.7, "2": 0.69},
                                  "deeplab": {"1": 0.6, "2": 0.6}}, "claims": {}}
    from_eval = bench.load_accuracy(_write(tmp_path / "eval.json", eval_json), report)
    assert from_eval["accel18"] == {1: pytest.approx(70.0), 2: pytest.approx(69.0)}
    assert from_eval["deeplab18"] == {None: pytest.approx(60.0)}
    assert from_eval["reference"] == {None: pytest.approx(70.0)}


def test_accuracy_file_errors(tmp_path: Path) -> None:
    report = _fake_report()
    with pytest.raises(FileNotFoundError, match="accuracy file not found"):
        bench.load_accuracy(tmp_path / "missing.json", report)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bench.load_accuracy(tmp_path / "bad.json", report)
    report["results"].append(dict(report["results"][-1], variant="accel34"))
    eval_json = {"per_interval": {"accel": {"1": 0.7}}}
    with pytest.raises(ValueError, match="one 'accel' model but this run timed"):
        bench.load_accuracy(_write(tmp_path / "eval.json", eval_json), report)


def test_tradeoff_plot_is_a_png_and_needs_matching_entries(tmp_path: Path) -> None:
    report = _fake_report()
    accuracy = {"reference": {None: 70.0}, "accel18": {1: 70.0, 2: 69.0, 5: 67.0},
                "dff": {1: 70.0, 5: 58.0}}
    path = bench.write_plot(report, tmp_path / "fig4.png", accuracy)
    assert path.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError, match="no accuracy entry matches"):
        bench.write_plot(report, tmp_path / "none.png", {"accel50": {5: 60.0}})


def test_option_parsing() -> None:
    assert bench.parse_intervals("1-3,5,10") == (1, 2, 3, 5, 10)
    assert bench.parse_intervals("1-10") == tuple(range(1, 11))
    with pytest.raises(ValueError, match="bad keyframe interval list"):
        bench.parse_intervals("1,x")
    assert bench.parse_variants("Accel-18, DeepLab-101,dff") == ("accel18", "reference", "dff")
    assert bench.parse_variants("all") == tuple(bench.VARIANTS)
    with pytest.raises(ValueError, match="unknown variants"):
        bench.parse_variants("accel19")
    with pytest.raises(ValueError, match="both --height and --width"):
        bench.BenchSettings(height=64)
    assert bench.cycle_frames(20, 3) == 21 and bench.cycle_frames(20, None) == 20


def test_fast_path_configs_plain_first_then_each_then_all() -> None:
    settings = bench.BenchSettings(channels_last=True, precision="bf16", overlap_flow=True)
    configs = bench.fast_path_configs(settings)
    assert [c.name for c in configs] == ["plain", "channels_last", "bf16", "overlap_flow", "all"]
    assert configs[0].fields == {}
    assert configs[-1].fields == {"channels_last": True, "precision": "bf16",
                                  "overlap_flow": True}
    assert [c.name for c in bench.fast_path_configs(bench.BenchSettings(compile=True))] == [
        "plain", "compile"
    ]


def test_variants_share_one_reference_network() -> None:
    settings = bench.BenchSettings(
        variants=("dff", "deeplab18", "accel18", "accel34"), reference_backbone="resnet18",
        num_classes=5,
    )
    models = bench.build_models(settings)
    assert set(models) == {"reference-only", "accel18", "accel34"}
    reference = models["reference-only"].reference
    assert models["accel18"].reference is reference and models["accel34"].reference is reference
    assert models["accel34"].config.update_backbone == "resnet34"
    assert models["accel18"].config.num_classes == 5


def test_frames_move_and_play_back_and_forth() -> None:
    frames, source = bench.make_frames(4, 40, 72, seed=1)
    assert len(frames) == 4 and source
    assert all(f.shape == (40, 72, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # real motion for the flow estimator
    order = [bench.ping_pong(list(range(4)), i) for i in range(8)]  # type: ignore[arg-type]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1]
