"""Deployment backends: ONNX export (checked, cached, rebuilt when stale) and the OpenVINO /
ONNX Runtime backends against PyTorch fp32.

Tolerances (fp32 graphs differ from torch by summation order only): network outputs within
SCORE_TOLERANCE x their scale, labels >= 99.5% identical per frame, on single calls and on a
streamed clip (keyframes + warped frames + fusion through AccelSegmenter)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from accel_ros.bench.backends import time_backends
from accel_ros.cli.main import main as cli_main
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.data.synthetic import SceneConfig, SyntheticDrivingScene
from accel_ros.deploy import export as export_module
from accel_ros.deploy.backends import GraphNetworks, build_networks
from accel_ros.deploy.export import (
    CACHE_ENV,
    ExportKey,
    cached_graphs,
    export_graphs,
    stale_reason,
)
from accel_ros.deploy.graphs import MatrixDownscale, StridedDownscale, antialiased_downscale
from accel_ros.deploy.runtimes import BackendUnavailableError, available_runtimes, require
from accel_ros.model import AccelNet, load_model, save_checkpoint
from accel_ros.stream import AccelSegmenter, StreamFrame

onnx = pytest.importorskip("onnx")
RUNTIMES = available_runtimes()
pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not RUNTIMES, reason="neither onnxruntime nor openvino is installed"),
]
SIZE = (64, 96)
SCORE_TOLERANCE = 1e-4  # max |backend - torch| / max(1, max |torch|)
LABELS_IDENTICAL = 0.995
CAMVID = Path(__file__).resolve().parents[1].parent / "shared" / "camvid"


def _lite_config(**overrides) -> ModelConfig:
    """Lite0 / Lite0 at half scale with narrow heads: the shipped architecture in small, its
    update branch's antialiased downscale included."""
    fields = dict(num_classes=5, reference_backbone="efficientnet_lite0",
                  update_backbone="efficientnet_lite0", head_channels=16,
                  update_head_channels=8, update_input_scale=0.5, input_size=SIZE)
    return ModelConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def lite_model() -> AccelNet:
    torch.manual_seed(0)
    return AccelNet(_lite_config()).eval()


@pytest.fixture(scope="module")
def graph_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("graphs")


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Eight generated driving frames at SIZE (real motion, known scene)."""
    scene = SyntheticDrivingScene(SceneConfig(height=SIZE[0], width=SIZE[1], seed=3), 20)
    return [scene.render(t).image for t in range(0, 16, 2)]


def _close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= SCORE_TOLERANCE * scale


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _overwrite_weights(path: Path) -> None:
    """Overwrite the graph's largest weight tensor in place, as a disk error or a stray write
    would: the file keeps its size and still parses, only its bytes differ."""
    raw = max((tensor.raw_data for tensor in onnx.load(str(path)).graph.initializer), key=len)
    data = bytearray(path.read_bytes())
    start = data.find(raw)
    assert start > 0 and len(raw) > 10_000
    data[start : start + len(raw)] = b"\x47" * len(raw)  # every weight 51015.3
    size = path.stat().st_size
    path.write_bytes(bytes(data))
    assert path.stat().st_size == size


# -- the graphs --------------------------------------------------------------------------------
@pytest.mark.parametrize(("size_in", "size_out", "kind"), [
    ((360, 480), (180, 240), StridedDownscale),
    ((64, 96), (16, 24), StridedDownscale),
    ((65, 97), (32, 48), MatrixDownscale),  # no integer factor
])
def test_antialiased_downscale_equals_torch(size_in, size_out, kind) -> None:
    module = antialiased_downscale(size_in, size_out)
    assert isinstance(module, kind)
    image = torch.rand(2, 3, *size_in)
    expected = F.interpolate(image, size=size_out, mode="bilinear", align_corners=False,
                             antialias=True)
    torch.testing.assert_close(module(image), expected, atol=2e-6, rtol=0)


def test_export_writes_checked_static_graphs_and_manifest(lite_model, tmp_path) -> None:
    key = ExportKey.for_model(lite_model, SIZE)
    manifest = export_graphs(lite_model, tmp_path / "out", key, check_runtime=RUNTIMES[0])
    names = ["reference_features", "reference_scores", "update_features", "update_scores",
             "fuse", "warp"]
    assert list(manifest.graphs) == names
    saved = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert saved["key"]["input_size"] == list(SIZE) and saved["key"]["opset"] == 17
    assert saved["num_classes"] == 5 and saved["palette"] == "camvid"
    assert saved["key"]["weights_sha256"] == key.weights_sha256
    for name, entry in manifest.graphs.items():
        graph = onnx.load(str(tmp_path / "out" / entry["file"]))
        onnx.checker.check_model(graph, full_check=True)
        assert graph.opset_import[0].version == 17
        for value in [*graph.graph.input, *graph.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), f"{name}: dynamic shape"
        assert entry["check_max_error"] < 1e-3, name
    image_shape = manifest.graphs["update_features"]["inputs"]["image"]
    assert image_shape == [1, 3, *SIZE]  # the frame itself: the downscale is in the graph


def test_graph_that_disagrees_with_torch_is_refused(lite_model, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "CHECK_TOLERANCE", -1.0)
    with pytest.raises(ValueError, match="differs from torch"):
        export_graphs(lite_model, tmp_path / "bad", ExportKey.for_model(lite_model, SIZE),
                      check_runtime=RUNTIMES[0])
    assert not (tmp_path / "bad").exists()


# -- the cache ---------------------------------------------------------------------------------
def test_cache_is_used_when_fresh_and_rebuilt_when_stale(tmp_path) -> None:
    model = AccelNet(_lite_config(update_backbone=None)).eval()
    lines: list[str] = []
    first = cached_graphs(model, SIZE, root=tmp_path, check_runtime=RUNTIMES[0], log=lines.append)
    assert first.exported and first.reason == "no cache yet"
    assert len(lines) == 1 and "exported 3 ONNX graphs for 64x96 in" in lines[0]
    again = cached_graphs(model, SIZE, root=tmp_path, check_runtime=RUNTIMES[0],
                          log=lines.append)
    assert not again.exported and len(lines) == 1

    # A manifest written by another torch version: stale, exported again.
    manifest_path = first.folder / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["key"]["versions"]["torch"] = "0.0.1"
    manifest_path.write_text(json.dumps(data))
    rebuilt = cached_graphs(model, SIZE, root=tmp_path, check_runtime=RUNTIMES[0],
                            log=lines.append)
    assert rebuilt.exported and "torch" in rebuilt.reason and "0.0.1" in rebuilt.reason
    # A manifest from before graphs were pinned by their sha256: stale, exported again.
    data = json.loads(manifest_path.read_text())
    for entry in data["graphs"].values():
        del entry["sha256"]
    manifest_path.write_text(json.dumps(data))
    pinned = cached_graphs(model, SIZE, root=tmp_path, check_runtime=RUNTIMES[0], log=None)
    assert pinned.exported and "no sha256" in pinned.reason
    assert all(_sha256(pinned.folder / entry["file"]) == entry["sha256"]
               for entry in pinned.manifest.graphs.values())
    # A graph file changed on disk: stale.
    with open(first.folder / "reference_scores.onnx", "ab") as handle:
        handle.write(b"\0")
    assert "reference_scores.onnx" in stale_reason(first.folder, ExportKey.for_model(model, SIZE))
    # Another opset or other weights: never the old folder's graphs.
    assert stale_reason(first.folder, ExportKey.for_model(model, SIZE, opset=18))
    with torch.no_grad():
        model.reference.head.classify.bias.add_(1.0)
    other = cached_graphs(model, SIZE, root=tmp_path, check_runtime=RUNTIMES[0], log=None)
    assert other.exported and other.folder != first.folder


def test_export_key_checks_opset_and_size(lite_model) -> None:
    with pytest.raises(ValueError, match="opset"):
        ExportKey.for_model(lite_model, SIZE, opset=20)
    with pytest.raises(ValueError, match="input size"):
        ExportKey.for_model(lite_model, (8, 8))


# -- the backends against torch ----------------------------------------------------------------
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_backend_calls_match_torch(lite_model, graph_root, clip, runtime) -> None:
    networks = GraphNetworks(lite_model, runtime, input_size=SIZE, root=graph_root, log=None)
    image = torch.from_numpy(clip[3]).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        features = lite_model.reference_features(image)
        update = lite_model.update_features(image)
        pairs = [
            (networks.reference_features(image), features),
            (networks.reference_scores(features), lite_model.reference_scores(features)),
            (networks.update_features(image), update),
            (networks.update_scores(update), lite_model.update_scores(update)),
            (networks.fuse(features, update), lite_model.fuse(features, update)),
        ]
    for got, expected in pairs:
        _close(got, expected)
    got_labels, expected_labels = pairs[-1][0].argmax(1), pairs[-1][1].argmax(1)
    assert float((got_labels == expected_labels).float().mean()) >= LABELS_IDENTICAL


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_image_graphs_take_the_frames_pixels(lite_model, graph_root, clip, runtime) -> None:
    """A frame's uint8 pixels (the channels-last view of its (H, W, 3) array that the segmenter
    hands over) give the float frame's outputs: converted inside OpenVINO's graphs, on the host
    for ONNX Runtime. A float frame after them (a resized camera) runs as well."""
    networks = GraphNetworks(lite_model, runtime, input_size=SIZE, root=graph_root, log=None)
    pixels = torch.from_numpy(clip[3]).permute(2, 0, 1)[None]
    assert pixels.dtype == torch.uint8 and pixels.stride()[1] == 1
    image = pixels.float() / 255
    with torch.inference_mode():
        for call in (networks.reference_features, networks.update_features):
            from_pixels = call(pixels)
            from_float = call(image)
            scale = max(1.0, float(from_float.abs().max()))
            assert float((from_pixels - from_float).abs().max()) <= 1e-6 * scale
    assert networks.takes_pixels == (runtime == "openvino")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_frames_resized_to_the_input_size_stream_as_torch(lite_model, graph_root, clip, runtime,
                                                          monkeypatch) -> None:
    """Frames of twice the input size are resized (float) before the networks, so the image
    graphs take float frames there: the labels are still torch's."""
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(graph_root))
    larger = [np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1) for frame in clip[:4]]
    results = _stream(lite_model, larger, backend=runtime)
    assert results[0].labels.shape == larger[0].shape[:2]
    _assert_same_stream(results, _stream(lite_model, larger))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_corrupted_graph_in_the_cache_is_exported_again(lite_model, clip, tmp_path,
                                                       runtime) -> None:
    """Bytes overwritten inside a cached graph (same size, still valid ONNX) are caught by the
    manifest's sha256 when the backend opens the graphs: they are exported again, one line
    names the file, and the backend answers as torch."""
    GraphNetworks(lite_model, runtime, input_size=SIZE, root=tmp_path, log=None)
    key = ExportKey.for_model(lite_model, SIZE)
    corrupted = tmp_path / key.folder_name / "update_features.onnx"
    _overwrite_weights(corrupted)

    lines: list[str] = []
    networks = GraphNetworks(lite_model, runtime, root=tmp_path, log=lines.append)
    graphs = networks.prepare(SIZE)
    image = torch.from_numpy(clip[3]).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        expected = lite_model.update_features(image)
        _close(networks.update_features(image), expected)
        _close(networks.update_scores(expected), lite_model.update_scores(expected))
    assert graphs.exported and "update_features.onnx" in graphs.reason
    assert len(lines) == 1 and "update_features.onnx" in lines[0], lines
    assert _sha256(corrupted) == graphs.manifest.graphs["update_features"]["sha256"]
    assert stale_reason(graphs.folder, key) is None


def _stream(model: AccelNet, frames, **pipeline) -> list:
    segmenter = AccelSegmenter(model, PipelineConfig(device="cpu", keyframe_interval=3,
                                                     **pipeline))
    return [segmenter.process(frame) for frame in frames]


def _assert_same_stream(results, expected) -> None:
    assert [r.is_keyframe for r in results] == [r.is_keyframe for r in expected]
    for got, want in zip(results, expected, strict=True):
        assert float((got.labels == want.labels).mean()) >= LABELS_IDENTICAL


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_streamed_clip_matches_torch(lite_model, graph_root, clip, runtime, monkeypatch) -> None:
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(graph_root))
    expected = _stream(lite_model, clip)
    results = _stream(lite_model, clip, backend=runtime)
    assert sum(r.is_keyframe for r in results) == 3  # keyframes and warped frames both
    _assert_same_stream(results, expected)
    assert results[1].timings["update"] > 0 and results[1].timings["warp"] > 0


def test_feature_fusion_streams_through_the_backend(clip, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(tmp_path))
    model = AccelNet(_lite_config(fusion="feature", update_input_scale=1.0)).eval()
    _assert_same_stream(_stream(model, clip[:4], backend=RUNTIMES[0]), _stream(model, clip[:4]))


def test_several_streams_share_batch_one_graphs(lite_model, graph_root, clip,
                                                monkeypatch) -> None:
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(graph_root))
    outputs = {}
    for backend in ("torch", RUNTIMES[0]):
        segmenter = AccelSegmenter(lite_model, PipelineConfig(
            device="cpu", keyframe_interval=3, backend=backend, stagger_keyframes=False))
        segmenter.configure_streams(["left", "right"])
        outputs[backend] = [
            segmenter.process_batch([StreamFrame("left", a), StreamFrame("right", b)])
            for a, b in zip(clip[:4], clip[4:], strict=True)
        ]
    for got, want in zip(outputs[RUNTIMES[0]], outputs["torch"], strict=True):
        assert got[0].batch_size == 2
        _assert_same_stream(got, want)


def test_dynamic_batch_graphs_take_several_frames(lite_model, tmp_path) -> None:
    networks = GraphNetworks(lite_model, RUNTIMES[0], input_size=SIZE, batch=0, root=tmp_path,
                             log=None)
    images = torch.rand(3, 3, *SIZE)
    with torch.inference_mode():
        _close(networks.reference_features(images), lite_model.reference_features(images))


def test_a_new_frame_size_exports_its_own_graphs(lite_model, tmp_path) -> None:
    networks = GraphNetworks(lite_model, RUNTIMES[0], root=tmp_path, log=None)  # no size yet
    image = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        _close(networks.reference_features(image), lite_model.reference_features(image))
    assert any("48x64" in note for note in networks.notes)
    with pytest.raises(ValueError, match="no exported reference_scores graph"):
        networks.reference_scores(torch.rand(1, 16, 7, 7))


@pytest.mark.skipif("openvino" not in RUNTIMES or "onnxruntime" not in RUNTIMES,
                    reason="needs both runtimes")
def test_shipped_checkpoint_streams_alike_on_every_backend(tmp_path, monkeypatch) -> None:
    """The shipped model at 96x128 on real frames (CamVid val) or generated ones."""
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(tmp_path))
    model = load_model("default").model
    if CAMVID.is_dir():
        from accel_ros.data.camvid import read_rgb

        frames = [read_rgb(path) for path in sorted((CAMVID / "val").glob("*.png"))[:7]]
    else:
        scene = SyntheticDrivingScene(SceneConfig(height=360, width=480, seed=1), 14)
        frames = [scene.render(t).image for t in range(0, 14, 2)]
    expected = _stream(model, frames, input_size=(96, 128))
    for runtime in ("onnxruntime", "openvino"):
        _assert_same_stream(_stream(model, frames, input_size=(96, 128), backend=runtime),
                            expected)


def test_age_aware_fuse_and_score_warp_graphs_match_torch(tmp_path) -> None:
    """An age-aware fusion exports with the keyframe age as an input and answers as torch at
    ages on, between and beyond its knots; the warp graph warps what the pipeline caches
    (s_R with border sampling, f_R with zeros)."""
    from accel_ros.deploy.runtimes import open_session
    from accel_ros.learn.stages import make_age_aware

    torch.manual_seed(2)
    model = AccelNet(_lite_config()).eval()
    make_age_aware(model, (0.033, 0.3, 2.0))
    with torch.no_grad():  # knots that differ, so the age matters
        model.fusion.weight.add_(torch.randn_like(model.fusion.weight))
    key = ExportKey.for_model(model, SIZE)
    manifest = export_graphs(model, tmp_path / "age", key, check_runtime=RUNTIMES[0])
    fuse = manifest.graphs["fuse"]
    assert list(fuse["inputs"]) == ["reference_scores", "update_scores", "age_s"]
    assert list(manifest.graphs["warp"]["inputs"]) == ["reference_scores", "flow"]
    session = open_session(RUNTIMES[0], tmp_path / "age" / fuse["file"])
    shapes = list(fuse["inputs"].values())
    s_r, s_u = torch.randn(*shapes[0]), torch.randn(*shapes[1])
    for age in (0.0, 0.033, 0.1, 0.3, 1.0, 2.0, 9.0):
        ages = torch.tensor([age])
        with torch.no_grad():
            expected = model.fuse(None, None, s_r, s_u, age_s=ages)
        _close(torch.from_numpy(session(s_r.numpy(), s_u.numpy(), ages.numpy())), expected)
    zeros = export_graphs(model, tmp_path / "zeros",
                          ExportKey.for_model(model, SIZE, out_of_frame="zeros"),
                          check_runtime=RUNTIMES[0])
    assert list(zeros.graphs["warp"]["inputs"]) == ["reference_features", "flow"]


# -- choices and failures ----------------------------------------------------------------------
def test_missing_runtime_is_one_line_naming_the_extra(lite_model, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails
    with pytest.raises(BackendUnavailableError) as caught:
        GraphNetworks(lite_model, "openvino", log=None)
    message = str(caught.value)
    assert "\n" not in message and "pip install 'accel_ros[openvino]'" in message
    with pytest.raises(ValueError, match=r"accel_ros\[openvino\]"):  # the CLI's one-line kind
        require("openvino", "backend openvino")


def test_unsupported_combinations_stop_start_up(lite_model) -> None:
    with pytest.raises(ValueError, match="backend 'tensorrt' is not one of"):
        PipelineConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="fast paths of backend torch"):
        PipelineConfig(backend=RUNTIMES[0], cuda_graphs=True)
    with pytest.raises(ValueError, match="runs the networks on the CPU"):
        build_networks(lite_model, PipelineConfig(backend=RUNTIMES[0]), torch.device("cuda"))
    with pytest.raises(ValueError, match="precision"):
        GraphNetworks(lite_model, "onnxruntime", precision="fp16", log=None)


def test_export_command_writes_graphs_and_trtexec_lines(lite_model, tmp_path, capsys) -> None:
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", lite_model)
    out = tmp_path / "graphs"
    args = ["export", "--checkpoint", str(checkpoint), "--output", str(out), "--threads", "1",
            "--check-runtime", RUNTIMES[0]]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "exported 6 graphs (64x96, batch 1, opset 17)" in printed
    assert f"trtexec --onnx={out / 'reference_features.onnx'} --fp16" in printed
    assert json.loads((out / "manifest.json").read_text())["checkpoint"] == str(checkpoint)
    assert cli_main(args) == 0
    assert "up to date" in capsys.readouterr().out
    # A graph overwritten in place (same size): not "up to date", exported again.
    _overwrite_weights(out / "update_features.onnx")
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "up to date" not in printed and "exported 6 graphs" in printed
    assert printed.splitlines()[0].startswith("exporting again: stale cache: update_features.onnx")
    assert cli_main([*args, "--force"]) == 0
    assert "exported 6 graphs" in capsys.readouterr().out


@pytest.mark.parametrize("blocked", [
    "file in the way",
    pytest.param("read-only folder", marks=pytest.mark.skipif(
        os.geteuid() == 0, reason="root writes into read-only folders")),
])
def test_unwritable_cache_is_one_line_naming_the_export_and_the_variable(
        lite_model, tmp_path, monkeypatch, capsys, blocked) -> None:
    """The cache cannot be written: one line (exit 2) that says graphs were being exported,
    where, and that ACCEL_ROS_CACHE (or --output) chooses another place; no errno text."""
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", lite_model)
    if blocked == "file in the way":
        cache = tmp_path / "cache"
        cache.write_text("a file where the cache's folder would go")
    else:
        (tmp_path / "read_only").mkdir(mode=0o555)
        cache = tmp_path / "read_only" / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    args = ["export", "--checkpoint", str(checkpoint), "--threads", "1", "--check-runtime",
            RUNTIMES[0]]
    try:
        assert cli_main(args) == 2
        error = capsys.readouterr().err
        assert len(error.splitlines()) == 1, error
        assert error.startswith(f"accel-ros export: error: exporting the ONNX graphs to {cache}/")
        assert f"set {CACHE_ENV} to a writable folder" in error
        assert "Errno" not in error and "Traceback" not in error
        # With --output the remedy is another --output.
        assert cli_main([*args, "--output", str(cache / "graphs")]) == 2
        error = capsys.readouterr().err
        assert f"exporting the ONNX graphs to {cache / 'graphs'}" in error
        assert "another --output" in error and CACHE_ENV not in error
        # The backends (the node, accel-ros segment) stop with the same words.
        with pytest.raises(OSError, match=f"exporting the ONNX graphs to .*{CACHE_ENV}"):
            GraphNetworks(lite_model, RUNTIMES[0], input_size=SIZE, log=None)
    finally:
        if blocked == "read-only folder":  # let pytest remove tmp_path
            (tmp_path / "read_only").chmod(0o755)


def test_time_backends_interleaves_and_compares_to_torch(lite_model, graph_root, clip,
                                                         monkeypatch) -> None:
    monkeypatch.setenv("ACCEL_ROS_CACHE", str(graph_root))
    rows = time_backends(lite_model, clip[:3], ("torch", f"{RUNTIMES[0]}:fp32"),
                         settings=(("accel", 2),), rounds=2)
    assert [(r.backend, r.mode, r.keyframe_interval) for r in rows] == [
        ("torch", "accel", 2), (f"{RUNTIMES[0]}:fp32", "accel", 2)]
    assert rows[0].ratio_to_torch == 1.0 and rows[1].ratio_to_torch > 0
    assert all(r.fastest <= r.ms_per_frame <= r.slowest and r.rounds == 2 for r in rows)
    assert dataclasses.asdict(rows[1])["stages"]["flow"] > 0


def test_exported_module_matches_torch_and_names_what_does_not_export() -> None:
    """Any one-input network through a runtime (the bench's peers): torch's numbers, one
    export per input shape, the folder gone on close; a network torch cannot export is one
    NotExportableError naming it."""
    from accel_ros.deploy.backends import ExportedModule, NotExportableError

    runtime = RUNTIMES[0]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    exported = ExportedModule(net, "tiny", runtime)
    for size in ((16, 24), (16, 24), (8, 8)):
        image = torch.rand(1, 3, *size)
        with torch.no_grad():
            torch.testing.assert_close(exported(image), net(image), rtol=0, atol=1e-5)
    assert len(exported.notes) == 2 and "tiny through" in exported.notes[0]
    folder = exported._folder
    assert len(list(folder.glob("*.onnx"))) == 2
    exported.close()
    assert not folder.exists()

    class Unexportable(torch.nn.Module):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(image.numpy() * 2)  # leaves the graph: tracing cannot

    broken = ExportedModule(Unexportable(), "numpy_net", runtime)
    with pytest.raises(NotExportableError, match=f"numpy_net does not export for {runtime}"):
        broken(torch.rand(1, 3, 8, 8))
    broken.close()
