"""`accel-ros bench`: end-to-end run on a tiny config (JSON shape, table, PNG), accuracy file
formats, the trade-off plot, option parsing, N_R sharing, the frame source and the size that
runs; deadlines, what the fast paths really did, freeing peers; and the device check (its CPU
dry run, the time box, the CUDA-test count, parity's judgement and TF32 restore)."""

from __future__ import annotations

import argparse
import gc
import json
import weakref
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from accel_ros.bench import common, variants
from accel_ros.bench import single_stream as bench
from accel_ros.cli import bench as bench_cli
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.gpu import check as device_check
from accel_ros.model import AccelNet
from accel_ros.stream import STAGES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RESULT_KEYS = {
    "variant", "mode", "fastpath", "keyframe_interval", "frames", "keyframes", "latency_ms",
    "fps", "stages_ms", "peak_memory_mb", "peak_extra_mb", "notes", "ratio_to_reference",
    "ratio_range", "repeats", "stages_synchronised", "complete", "fast_paths_ran",
    "ratio_to_plain", "ratio_to_plain_range",
}


def _run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="accel-ros")
    bench_cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.handler(args)


def test_bench_backends_are_rows_of_one_run_named_in_the_plot(tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime", reason="the onnxruntime extra is not installed")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = _run_cli([
        "--variants", "reference,accel18,tv_lraspp_mobilenet_v3_large", "--intervals", "2",
        "--height", "32", "--width", "64", "--frames", "2", "--warmup", "1",
        "--reference-backbone", "resnet18", "--backend", "torch,onnxruntime",
        "--clip-frames", "4", "--device", "cpu", "--json", str(out_json), "--plot", str(out_png),
    ])
    assert code == 0
    report = json.loads(out_json.read_text())
    rows = {(r["fastpath"], r["variant"]): r for r in report["results"]}
    # the torchvision peer runs through the same runtime, exported on its first frame
    peer = "tv_lraspp_mobilenet_v3_large"
    assert set(rows) == {(fast, variant) for fast in ("plain", "onnxruntime")
                         for variant in ("reference", "accel18", peer)}
    assert rows["onnxruntime", peer]["ratio_to_plain"] > 0
    assert any(note.startswith("lraspp_mobilenet_v3_large through onnxruntime (fp32, ")
               and "exported at 32x64" in note for note in rows["onnxruntime", peer]["notes"])
    assert rows["plain", "accel18"]["ratio_to_plain"] is None
    assert rows["onnxruntime", "accel18"]["ratio_to_plain"] > 0
    assert any("backend onnxruntime" in note for note in rows["onnxruntime", "accel18"]["notes"])
    from accel_ros.bench.single_stream import _series_times

    assert ("accel18", "onnxruntime") in _series_times(report)
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert "x plain" in capsys.readouterr().out


def test_bench_end_to_end_writes_table_json_and_png(tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = _run_cli([
        "--variants", "reference,dff,accel18,tv_lraspp_mobilenet_v3_large", "--intervals", "2",
        "--repeats", "2",
        "--height", "32", "--width", "64", "--frames", "2", "--warmup", "1",
        "--reference-backbone", "resnet18", "--overlap-flow", "--fast-variants", "accel18",
        "--fast-intervals", "2", "--clip-frames", "4", "--device", "cpu",
        "--json", str(out_json), "--plot", str(out_png),
    ])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "accel-ros bench: 32x64 on cpu" in stdout and "overlap_flow" in stdout
    assert "target" not in stdout  # issue targets are not the product's business

    report = json.loads(out_json.read_text())
    assert set(report) == {"meta", "results", "skipped"}
    meta = report["meta"]
    assert (meta["height"], meta["width"], meta["device"]) == (32, 64, "cpu")
    assert meta["reference_backbone"] == "resnet18" and meta["memory"] == "process_peak_rss"
    rows = [(r["fastpath"], r["variant"], r["keyframe_interval"]) for r in report["results"]]
    assert rows == [
        ("plain", "reference", None), ("plain", "dff", 2), ("plain", "accel18", 2),
        ("plain", "tv_lraspp_mobilenet_v3_large", None), ("overlap_flow", "accel18", 2),
    ]
    assert meta["repeats"] == 2
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        latency = result["latency_ms"]
        assert 0 < latency["p50"] <= latency["p99"] and latency["mean"] > 0
        assert result["fps"] == pytest.approx(1000.0 / latency["mean"])
        assert set(result["stages_ms"]) == {*STAGES, "total"}
        assert result["frames"] == 2 and result["peak_memory_mb"] > 0
        # Two interleaved runs: the row's mean is their median, the ratio a median of ratios.
        assert result["repeats"] == 2 and len(latency["runs"]) == 2
        assert latency["mean"] == pytest.approx(float(np.median(latency["runs"])))
        low, high = result["ratio_range"]
        assert low <= result["ratio_to_reference"] <= high
        assert result["stages_synchronised"]  # CPU: one pass gives both
        assert result["complete"] and result["fast_paths_ran"] == {}  # none requested
        # Every measurement starts from a reset cache: one keyframe per whole cycle.
        assert result["keyframes"] == (
            0 if result["mode"] == "peer" else 2 if result["keyframe_interval"] is None else 1
        )
    plain = {(r["variant"], r["keyframe_interval"]): r for r in report["results"]
             if r["fastpath"] == "plain"}
    assert plain[("reference", None)]["ratio_to_reference"] == pytest.approx(1.0)
    assert plain[("dff", 2)]["stages_ms"]["warp"] > 0
    assert plain[("dff", 2)]["stages_ms"]["update"] == 0.0
    assert plain[("accel18", 2)]["stages_ms"]["update"] > 0
    assert plain[("accel18", 2)]["latency_ms"]["non_keyframe"] is not None
    assert report["skipped"] == []  # no deadline: everything ran

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
    return {"meta": meta, "results": results, "skipped": []}


def test_ratios_from_the_plain_path() -> None:
    report = _fake_report()
    rows = {(r["variant"], r["keyframe_interval"]): r for r in report["results"]}
    assert rows[("accel18", 5)]["ratio_to_reference"] == pytest.approx(120.0 / 300.0)
    assert rows[("dff", 5)]["ratio_to_reference"] == pytest.approx(70.0 / 300.0)
    assert rows[("reference", None)]["ratio_to_reference"] == pytest.approx(1.0)


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
    assert variants.parse_variants("Accel-18, DeepLab-101,dff") == (
        "accel18", "reference", "dff"
    )
    assert variants.parse_variants("all") == variants.FAMILY and "accel18" in variants.FAMILY
    assert variants.parse_variants("peers,dff") == (*variants.PEERS, "dff")
    assert len(variants.PEERS) == 4
    with pytest.raises(ValueError, match="unknown variants"):
        variants.parse_variants("accel19")
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
    models = variants.build_models(settings.all_variants(), settings.model,
                                   **settings.model_overrides())
    assert set(models) == {"reference-only", "accel18", "accel34"}
    reference = models["reference-only"].reference
    assert models["accel18"].reference is reference and models["accel34"].reference is reference
    assert models["accel34"].config.update_backbone == "resnet34"
    assert models["accel18"].config.num_classes == 5


def test_frames_move_and_play_back_and_forth() -> None:
    frames, source = common.make_frames(4, 40, 72, seed=1)
    assert len(frames) == 4 and source
    assert all(f.shape == (40, 72, 3) and f.dtype == np.uint8 for f in frames)
    assert not np.array_equal(frames[0], frames[1])  # real motion for the flow estimator
    order = [common.ping_pong(list(range(4)), i) for i in range(8)]  # type: ignore[arg-type]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1]


def test_repeats_give_medians_and_per_run_ratios() -> None:
    def run(mean: float) -> dict:
        return {"frames": 10, "keyframes": 2, "latency_ms": {
            "mean": mean, "p50": mean, "p99": 2 * mean, "keyframe": None, "non_keyframe": mean},
            "stages_ms": {"flow": mean / 10, "total": mean}, "stages_synchronised": True,
            "peak_memory_mb": mean, "peak_extra_mb": None}

    reference = bench.aggregate_runs([run(100.0), run(300.0), run(200.0)])
    assert reference["latency_ms"]["mean"] == 200.0 and reference["repeats"] == 3
    assert reference["latency_ms"]["spread_pct"] == pytest.approx(100.0)
    assert reference["stages_ms"]["flow"] == 20.0 and reference["peak_memory_mb"] == 300.0
    assert reference["latency_ms"]["keyframe"] is None
    accel = bench.aggregate_runs([run(40.0), run(150.0), run(90.0)])
    rows = [dict(reference, variant="reference", fastpath="plain"),
            dict(accel, variant="accel18", fastpath="plain")]
    bench._add_ratios(rows)
    # Per-run ratios 0.4, 0.5, 0.45: their median, not 90 / 200 of the medians.
    assert rows[1]["ratio_to_reference"] == pytest.approx(0.45)
    assert rows[1]["ratio_range"] == pytest.approx([0.4, 0.5])


def test_flow_epe_against_exact_flow() -> None:
    report = bench.flow_epe(("zero", "dis", "torch"), pairs=2, height=48, width=96, seeds=(0,))
    rows = {row["method"]: row for row in report["methods"]}
    # Zero flow's error is the mean flow magnitude itself.
    assert rows["zero"]["epe"] == pytest.approx(report["mean_flow_px"], rel=1e-5)
    assert report["mean_flow_px"] > 0.1
    assert rows["dis"]["epe"] < rows["zero"]["epe"]
    assert rows["torch"]["epe"] < rows["zero"]["epe"]
    assert all(row["ms_median"] >= 0 for row in rows.values())


def test_peer_segmenter_gives_labels_at_frame_size() -> None:
    peer = variants.PeerSegmenter("lraspp_mobilenet_v3_large", 5, PipelineConfig(device="cpu"))
    result = peer.process(np.zeros((40, 72, 3), np.uint8))
    assert result.labels.shape == (40, 72) and result.labels.dtype == np.uint8
    assert int(result.labels.max()) < 5 and not result.is_keyframe
    assert result.timings["feature"] > 0 and result.timings["flow"] == 0


def test_bench_streams_moved_to_its_own_subcommand() -> None:
    with pytest.raises(ValueError, match="accel-ros bench-streams --streams 1,2"):
        _run_cli(["--streams", "1,2"])


# -- the size that runs (issue 19, item 9) ----------------------------------------------------
def test_the_network_runs_at_the_size_asked_for(tiny_config, moving_frames) -> None:
    """A checkpoint trained at 128x160 used to be fed 128x160 whatever --height/--width said
    (the header said otherwise); the segmenter now runs at exactly the requested size."""
    cpu = torch.device("cpu")
    trained = AccelNet(ModelConfig(**{**tiny_config.to_dict(), "input_size": (128, 160)}))
    settings = bench.BenchSettings(variants=("accel",), model="some.pt", height=64, width=96,
                                   reference_backbone=None)
    assert settings.resolution(cpu, (128, 160)) == (64, 96)
    unsized = bench.BenchSettings(model="some.pt", reference_backbone=None)
    assert unsized.resolution(cpu, (360, 480)) == (360, 480)  # the model's own size
    assert bench.BenchSettings().resolution(cpu) == (512, 1024)
    segmenter = bench.make_segmenter(settings, {variants.MODEL_KEY: trained.eval()},
                                     bench.FastPath("plain"), "accel", 3, cpu, (64, 96))
    segmenter.process(moving_frames[0])
    # Features on the 64x96 grid (stride 16: 4x6), not on the checkpoint's 128x160 (8x10).
    assert tuple(segmenter.cache.features.shape[-2:]) == (4, 6)


def test_a_checkpoint_without_a_size_runs_at_its_own_and_the_header_says_so(
    tmp_path: Path, tiny_config, capsys
) -> None:
    from accel_ros.model import save_checkpoint

    path = save_checkpoint(tmp_path / "small.pt", AccelNet(
        ModelConfig(**{**tiny_config.to_dict(), "input_size": (48, 80)})))
    code = _run_cli(["--model", str(path), "--variants", "accel", "--intervals", "2",
                     "--frames", "2", "--warmup", "1", "--clip-frames", "3", "--device", "cpu",
                     "--json", str(tmp_path / "b.json")])
    assert code == 0
    assert "accel-ros bench: 48x80 on cpu" in capsys.readouterr().out
    meta = json.loads((tmp_path / "b.json").read_text())["meta"]
    assert (meta["height"], meta["width"]) == (48, 80)


# -- deadlines, what ran, freeing --------------------------------------------------------------
def test_a_deadline_cuts_a_measurement_and_keeps_what_it_timed(
    tiny_config, moving_frames, countdown
):
    from accel_ros.stream import AccelSegmenter

    cpu = torch.device("cpu")
    segmenter = AccelSegmenter(AccelNet(tiny_config),
                               PipelineConfig(device="cpu", keyframe_interval=2))
    # Two warm-up frames, then one timed frame before the deadline passes.
    run = bench.measure(segmenter, moving_frames, 4, 1, bench.MemoryProbe(cpu),
                        deadline=countdown(3))
    assert run is not None and run["frames"] == 1 and run["complete"] is False
    assert bench.measure(segmenter, moving_frames, 4, 1, bench.MemoryProbe(cpu),
                         deadline=countdown(1)) is None  # cut during the warm-up


def _tiny_settings(**fields) -> bench.BenchSettings:
    defaults = {"variants": ("reference", "dff"), "intervals": (2,), "height": 32, "width": 64,
                "frames": 2, "warmup": 1, "reference_backbone": "resnet18", "clip_frames": 4,
                "device": "cpu"}
    return bench.BenchSettings(**{**defaults, **fields})


def test_an_expired_deadline_names_everything_it_did_not_run() -> None:
    report = bench.run_benchmark(_tiny_settings(), deadline=common.Deadline.after(0))
    assert report["results"] == []
    assert report["skipped"] == ["run 1/1: plain reference every frame (deadline)",
                                 "run 1/1: plain dff k=2 (deadline)"]
    assert "not run: run 1/1: plain dff k=2 (deadline)" in bench.format_table(report)


def test_rows_record_what_the_fast_paths_really_did(monkeypatch) -> None:
    """Issue 20's silent fallbacks, forced on the CPU: a compile that fails at run time and
    graphs without CUDA. The rows keep their names but say that eager code ran."""

    def no_compiler(fn, **options):
        def compiled(*args):
            raise RuntimeError("no C++ compiler here")

        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    settings = _tiny_settings(variants=("accel18",), compile=True, cuda_graphs=True)
    with pytest.warns(RuntimeWarning):
        report = bench.run_benchmark(settings)
    rows = {r["fastpath"]: r for r in report["results"]}
    assert set(rows) == {"plain", "compile", "cuda_graphs", "all"}
    assert rows["plain"]["fast_paths_ran"] == {}
    compiled = rows["compile"]["fast_paths_ran"]["torch_compile"]
    assert compiled["active"] is False and compiled["eager_calls"] > 0
    assert "no C++ compiler here" in compiled["failures"]["update_features"]
    assert any("torch.compile of update_features failed" in n for n in rows["compile"]["notes"])
    graphs = rows["cuda_graphs"]["fast_paths_ran"]["cuda_graphs"]
    assert graphs["active"] is False and graphs["replays"] == 0
    assert any("CUDA graphs need a CUDA device" in n for n in rows["cuda_graphs"]["notes"])
    assert set(rows["all"]["fast_paths_ran"]) == {"torch_compile", "cuda_graphs"}
    assert device_check.fallbacks(report) == [
        "compile accel18 k=2: torch_compile did not run",
        "cuda_graphs accel18 k=2: cuda_graphs did not run",
        "all accel18 k=2: cuda_graphs did not run",
        "all accel18 k=2: torch_compile did not run",
    ]


def test_closing_a_peer_frees_its_network_at_once() -> None:
    """A compiled (or graphed) call holds the peer's bound method: a reference cycle that kept
    each peer's weights, on the GPU, until the next garbage collection."""
    peer = variants.PeerSegmenter("lraspp_mobilenet_v3_large", 5,
                                  PipelineConfig(device="cpu", torch_compile=True))
    network = weakref.ref(peer.network)
    gc.disable()
    try:
        peer.close()
        del peer
        assert network() is None
    finally:
        gc.enable()


# -- the device check --------------------------------------------------------------------------


# -- what a process() call costs on the user's frames -------------------------------------------
def test_bench_source_times_process_on_a_folder_and_compares_labels(
    tmp_path, tiny_config, moving_frames, capsys
) -> None:
    from accel_ros.model import save_checkpoint

    folder = tmp_path / "frames"
    folder.mkdir()
    for index, frame in enumerate(moving_frames[:6]):
        cv2.imwrite(str(folder / f"f{index:03d}.png"), frame[:, :, ::-1])
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", AccelNet(tiny_config))
    code = _run_cli(["--source", str(folder), "--fps", "2", "--model", str(checkpoint),
                     "--frames", "4", "--keyframe-interval", "2", "--device", "cpu",
                     "--json", str(tmp_path / "p.json"), "--plot", str(tmp_path / "p.png")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "AccelSegmenter.process(frame, stamp)" in printed and "CPU: " in printed
    report = json.loads((tmp_path / "p.json").read_text())
    meta = report["meta"]
    assert meta["frames"]["count"] == 4 and meta["frames"]["seconds_spanned"] == 1.5  # 2 fps
    assert meta["cpu"]["model"] and isinstance(meta["cpu"]["features"], list)
    assert meta["threads"] >= 1
    [row] = report["results"]
    assert (row["backend"], row["precision"], row["mode"], row["keyframe_interval"]) == (
        "torch", "fp32", "accel", 2)
    assert row["labels_equal"] == 1.0 and row["ratio_to_torch"] == 1.0
    assert row["frames"] == 4 and row["rounds"] == 3 and row["ms_per_frame"] > 0
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)


def test_bench_source_says_when_it_holds_no_frame(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "broken.png").write_bytes(b"not a png")
    from accel_ros.bench.process import read_frames

    with pytest.raises(ValueError, match="no decodable frame"):
        read_frames(tmp_path / "empty", 4)
