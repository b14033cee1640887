"""`accel-ros fleet` on a real Ray instance that the tests start on 127.0.0.1 and stop: one
complete output per good bag, labels equal to single-process `segment`, failures reported,
reruns skipping finished work, and exactly-once outputs when a worker is killed mid-bag."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from accel_ros.cli.main import main as cli_main
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.fleet.index import INDEX_NAME, fraction_column
from accel_ros.fleet.run import FleetSettings, run_fleet
from accel_ros.fleet.worker import TMP_DIR, WorkerSpec
from accel_ros.io import bridge, rosbag
from accel_ros.io.bag_reader import open_bag, storage_files
from accel_ros.model import AccelNet, build_segmenter, save_checkpoint
from accel_ros.replay.runner import segment

ray = pytest.importorskip("ray", reason="the fleet extra (ray[data]) is not installed")
pq = pytest.importorskip("pyarrow.parquet")

HEIGHT, WIDTH = 48, 64
CAMERA, LEFT = "/camera/image_raw", "/left/image_raw"


@pytest.fixture(scope="module")
def ray_cluster():
    """A private Ray instance on loopback with 2 CPU slots; shut down (its processes stopped)
    after the module's tests."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(reference_backbone="resnet18", update_backbone="resnet18",
                         head_channels=16)
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", AccelNet(config))


def frames(count: int, seed: int, height: int = HEIGHT, width: int = WIDTH) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (height, width, 3), np.uint8) for _ in range(count)]


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    """Two good one-camera bags, one cut short, one two-camera bag and one of random bytes."""
    root = tmp_path_factory.mktemp("bags")
    made = {}
    for index in range(2):
        made[f"good{index}"] = root / f"good{index}"
        rosbag.write_camera_bag(made[f"good{index}"], frames(6, index))
    cut = root / "cut_src"
    rosbag.write_camera_bag(cut, frames(8, 7))
    made["cut"] = root / "cut.mcap"
    data = storage_files(cut)[0].read_bytes()
    made["cut"].write_bytes(data[: len(data) * 3 // 5])
    shutil.rmtree(cut)
    made["two"] = root / "two"
    rosbag.write_cameras_bag(made["two"], {CAMERA: frames(5, 3), LEFT: frames(5, 4)})
    made["corrupt"] = root / "corrupt.mcap"
    made["corrupt"].write_bytes(np.random.default_rng(9).bytes(5000))
    return made


def spec(checkpoint: Path) -> WorkerSpec:
    return WorkerSpec(str(checkpoint), "lite", PipelineConfig(device="cpu").to_dict(), 1)


def labels_of(bag: Path) -> dict[tuple[str, int], bytes]:
    """{(camera topic, stamp ns): label bytes} of an output bag."""
    typestore = rosbag.make_typestore()
    out = {}
    for connection, _, raw in open_bag(bag).messages():
        if connection.topic.endswith("/labels"):
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            key = (connection.topic[: -len("/labels")], rosbag.header_stamp_ns(msg.header))
            assert key not in out, f"duplicate labels {key} in {bag}"
            out[key] = bridge.image_to_array(msg).tobytes()
    return out


def test_fleet_equals_segment_reports_failures_and_reruns_skip(
        ray_cluster, checkpoint, bags, tmp_path):
    out = tmp_path / "run"
    settings = FleetSettings([str(p) for p in bags.values()], out, spec(checkpoint), workers=2,
                             quiet=True)
    summary = run_fleet(settings)
    assert summary.done == 4 and summary.skipped == 0
    assert list(summary.failed) == [str(bags["corrupt"].resolve())]
    assert "corrupt.mcap" in summary.failed[str(bags["corrupt"].resolve())]
    outputs = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert outputs == {"good0_seg", "good1_seg", "cut_seg", "two_seg"}
    assert not (out / TMP_DIR).exists()

    # Every output equals a single-process `segment` of the same bag with the same model.
    written = 0
    for name in ("good0", "good1", "cut", "two"):
        reference = tmp_path / f"solo_{name}"
        segmenter = build_segmenter("lite", PipelineConfig(device="cpu"), str(checkpoint))
        segment(bags[name], reference, segmenter, all_topics=True, quiet=True)
        fleet_labels = labels_of(out / f"{name}_seg")
        assert fleet_labels == labels_of(reference), name
        written += len(fleet_labels)
    assert {topic for topic, _ in labels_of(out / "two_seg")} == {CAMERA, LEFT}
    assert summary.frames == written

    index = pq.read_table(out / INDEX_NAME).to_pandas()
    assert len(index) == written == summary.index_rows
    assert not index.duplicated(["bag", "topic", "stamp_ns"]).any()
    fractions = index[[fraction_column(n) for n in ("sky", "pedestrian", "bicyclist")]]
    assert ((fractions >= 0) & (fractions <= 1)).all().all()
    assert index.filter(like="px_").sum(axis=1).between(0.999, 1.001).all()

    again = run_fleet(settings)  # nothing changed: every finished bag is skipped
    assert (again.done, again.skipped, again.frames) == (0, 4, 0)
    assert pq.read_table(out / INDEX_NAME).num_rows == written

    os.utime(storage_files(bags["good0"])[0], ns=(1, 1))  # the input changed: redo it only
    third = run_fleet(settings)
    assert (third.done, third.skipped) == (1, 3)
    assert pq.read_table(out / INDEX_NAME).num_rows == written


def test_a_worker_killed_mid_bag_loses_and_duplicates_nothing(
        ray_cluster, checkpoint, tmp_path):
    inputs = []
    for index in range(4):
        inputs.append(tmp_path / f"long{index}")
        rosbag.write_camera_bag(inputs[-1], frames(30, 10 + index, 96, 128))
    out = tmp_path / "run"
    settings = FleetSettings([str(p) for p in inputs], out, spec(checkpoint), workers=2,
                             quiet=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_fleet(settings)))
    thread.start()
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        attempts = list((out / TMP_DIR).glob("*.*.*")) if (out / TMP_DIR).is_dir() else []
        if attempts:  # an attempt's name carries its worker's pid: kill it mid-bag
            killed = int(attempts[0].name.split(".")[1])
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=300)
    assert killed is not None and not thread.is_alive()
    summary = result["summary"]
    assert summary.retries >= 1 and summary.done == 4 and not summary.failed
    outputs = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert outputs == [f"long{i}_seg" for i in range(4)]
    stamps = Counter()
    for name in outputs:
        labels = labels_of(out / name)  # raises on a duplicated frame
        assert len(labels) == 30, name
        stamps.update((name, key) for key in labels)
    index = pq.read_table(out / INDEX_NAME).to_pandas()
    assert len(index) == 120 and not index.duplicated(["bag", "topic", "stamp_ns"]).any()


def test_fleet_cli_without_ray_says_which_extra(monkeypatch, tmp_path, capsys, bags) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    code = cli_main(["fleet", str(bags["good0"]), "--out", str(tmp_path / "run"),
                     "--checkpoint", "none", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "pip install 'accel_ros[fleet]'" in err


def test_bench_fleet_times_three_setups_and_counts_faults(ray_cluster, checkpoint, tmp_path):
    from accel_ros.bench.fleet import FleetBenchSettings, format_table, run_fleet_benchmark

    settings = FleetBenchSettings(tmp_path, bags=2, frames=12, height=48, width=64,
                                  checkpoint=str(checkpoint), fault_runs=1)
    report = run_fleet_benchmark(settings)
    assert set(report["throughput"]) == {"fleet, 1 worker", "fleet, 2 workers",
                                         "2 hand-started segment processes"}
    assert all(row["runs"][0]["frames"] == 24 for row in report["throughput"].values())
    assert report["speedup_2_workers"] > 0 and report["fleet_time_vs_hand"] > 0
    (fault,) = report["faults"]
    assert fault["killed_pid"] is not None and fault["failed"] == 0
    assert report["fault_totals"] == {"frames_lost": 0, "frames_duplicated": 0,
                                      "index_missing": 0, "index_duplicated": 0}
    assert "2 workers / 1 worker throughput" in format_table(report)
