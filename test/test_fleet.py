"""`accel-ros fleet` on a real Ray instance that the tests start on 127.0.0.1 and stop: one
complete output per good bag, labels equal to single-process `segment`, failures reported,
reruns skipping finished work, and exactly-once outputs when a worker is killed mid-bag.
Also: a private instance of its own without --address, one run per --out, the exit codes, and
a manifest that is read back without being trusted."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rosbags.rosbag2 import Reader

import accel_ros
from accel_ros.cli.main import main as cli_main
from accel_ros.config import ModelConfig, PipelineConfig
from accel_ros.fleet.index import INDEX_NAME, fraction_column
from accel_ros.fleet.manifest import FORMAT, MANIFEST_NAME, Manifest
from accel_ros.fleet.run import FleetSettings, run_fleet
from accel_ros.fleet.worker import TMP_DIR, WorkerSpec
from accel_ros.io import bridge, rosbag
from accel_ros.io.bag_reader import open_bag, storage_files
from accel_ros.model import AccelNet, save_checkpoint
from accel_ros.replay.runner import segment
from accel_ros.stream import build_segmenter

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


def message_count(bag: Path) -> int:
    """Messages of a bag read with the rosbags reader (its metadata.yaml names its files)."""
    with Reader(bag) as reader:
        counted = sum(1 for _ in reader.messages())
        assert counted == reader.message_count, bag
        return counted


def assert_bag_named(bag: Path, messages: int) -> None:
    """`bag` holds one storage file named after the bag, as rosbag2 names it, that metadata.yaml
    lists, and opens with the rosbags reader with `messages` messages."""
    storage = f"{bag.name}_0.mcap"
    assert sorted(p.name for p in bag.iterdir()) == sorted(["metadata.yaml", storage])
    info = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert info["relative_file_paths"] == [storage]
    assert [entry["path"] for entry in info["files"]] == [storage]
    assert message_count(bag) == messages


def outputs_of(out: Path) -> set[str]:
    return {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")}


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
        assert_bag_named(out / f"{name}_seg", message_count(reference))
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
        attempts = attempts_in(out)
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


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a process the test starts: this very accel_ros first on its path."""
    root = str(Path(accel_ros.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def attempts_in(out: Path) -> list[Path]:
    """Attempts in progress: `.tmp/<output>.<worker pid>.<id>`."""
    return list((out / TMP_DIR).glob("*.*.*")) if (out / TMP_DIR).is_dir() else []


@pytest.mark.parametrize("named_by", ["RAY_ADDRESS", "ray_current_cluster"])
def test_without_address_the_fleet_runs_on_a_private_instance(ray_cluster, checkpoint, bags,
                                                              tmp_path, named_by):
    """A live cluster (the tests' own) named by RAY_ADDRESS, or by the file an earlier `ray
    start` leaves (<Ray's temp folder>/ray/ray_current_cluster), must not pull a run without
    --address onto it: the run starts an instance of its own, and the cluster sees no new
    driver."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "accel_ros.cli.main", "fleet", str(bags["good0"]),
               "--out", str(out), "--checkpoint", str(checkpoint), "--workers", "1", "--quiet"]
    address = ray.get_runtime_context().gcs_address
    if named_by == "RAY_ADDRESS":
        env = child_env(RAY_ADDRESS=address)
    else:  # Ray's temp folder of its own (short: Ray's socket paths must stay under 108 bytes)
        ray_tmp = Path(tempfile.mkdtemp(prefix="ray"))
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text(address)
        env = {k: v for k, v in child_env(RAY_TMPDIR=str(ray_tmp)).items() if k != "RAY_ADDRESS"}
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as run:
        try:
            stdout, stderr = run.communicate(timeout=300)
        finally:
            run.kill()
    if named_by == "ray_current_cluster":
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert run.returncode == 0, stderr[-2000:]
    assert "1 done" in stdout and outputs_of(out) == {"good0_seg"}
    # The GCS job table lists every driver that ever joined the tests' cluster.
    drivers = {int(job["DriverPid"]) for job in ray._private.state.jobs()}
    assert os.getpid() in drivers and run.pid not in drivers


def test_a_second_run_on_one_out_is_refused_while_the_first_runs(
        ray_cluster, checkpoint, bags, tmp_path, capsys):
    long = tmp_path / "long"
    rosbag.write_camera_bag(long, frames(30, 20, 96, 128))
    out = tmp_path / "run"
    first = FleetSettings([str(long)], out, spec(checkpoint), workers=1, quiet=True)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(summary=run_fleet(first)))
    thread.start()
    deadline = time.monotonic() + 120
    while not attempts_in(out) and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert attempts_in(out), "the first run never started its bag"
    code = cli_main(["fleet", str(bags["good0"]), "--out", str(out), "--checkpoint",
                     str(checkpoint), "--quiet"])
    err = capsys.readouterr().err.strip()
    thread.join(timeout=300)
    assert not thread.is_alive()
    assert code == 2 and err.count("\n") == 0 and f"{out} is in use" in err, err
    summary = result["summary"]  # the first run lost nothing to the refused one
    assert (summary.done, summary.failed) == (1, {})
    assert outputs_of(out) == {"long_seg"} and len(labels_of(out / "long_seg")) == 30


def test_a_killed_run_leaves_no_lock_behind(ray_cluster, checkpoint, bags, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    code = ("import pathlib, sys\n"
            "from accel_ros.fleet.lock import hold_run_folder\n"
            "with hold_run_folder(pathlib.Path(sys.argv[1])):\n"
            "    print('holding', flush=True)\n"
            "    sys.stdin.read()\n")
    settings = FleetSettings([str(bags["good0"])], out, spec(checkpoint), workers=1, quiet=True)
    with subprocess.Popen([sys.executable, "-c", code, str(out)], env=child_env(),
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "holding"  # "" if it died
            with pytest.raises(OSError, match=f"in use by another accel-ros fleet run \\(pid "
                               f"{holder.pid}\\)"):
                run_fleet(settings)
            assert not (out / MANIFEST_NAME).exists()  # refused before touching the folder
        finally:
            holder.kill()  # SIGKILL: no clean-up of its own, the OS drops its lock
    summary = run_fleet(settings)
    assert summary.done == 1 and outputs_of(out) == {"good0_seg"}


def test_fleet_cli_exits_1_when_any_bag_failed(ray_cluster, checkpoint, bags, tmp_path, capsys):
    out = tmp_path / "run"
    model = ["--checkpoint", str(checkpoint), "--quiet"]
    assert cli_main(["fleet", str(bags["good0"]), str(bags["corrupt"]), "--out", str(out),
                     *model]) == 1
    assert "1 done, 0 skipped (unchanged), 1 failed" in capsys.readouterr().out
    assert cli_main(["fleet", str(bags["good0"]), "--out", str(out), *model]) == 0


def test_manifest_entries_are_checked_when_read(tmp_path):
    good = {"input": "/bags/a", "output": "a_seg", "status": "done"}
    bad = [{"input": "/bags/b", "output": "../../escape_seg"},
           {"input": "/bags/c", "output": "/abs_seg"},
           {"input": "/bags/d", "output": ".tmp"},
           {"input": "/bags/e", "output": ".."},
           {"input": "/bags/f", "output": ""},
           {"input": "/bags/g", "output": 7},
           {"input": "/bags/j", "output": "x/y_seg"},
           {"input": "/bags/h", "output": "a_seg"},  # two inputs into one output
           {"input": "/bags/i", "output": "i_seg", "colour": "red"},
           ["not", "an", "entry"]]
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "bags": [good, *bad]}))
    manifest = Manifest.load(tmp_path)
    assert list(manifest.entries) == ["/bags/a"]
    assert len(manifest.notes) == len(bad)
    assert all("\n" not in note and MANIFEST_NAME in note for note in manifest.notes)
    assert "'../../escape_seg'" in manifest.notes[0]
    # The bag of an ignored entry gets a fresh name inside the run folder.
    assert manifest.entry(Path("/bags/b")).output == "b_seg"


def test_manifest_output_names_outside_out_are_never_followed(
        ray_cluster, checkpoint, bags, tmp_path):
    out = tmp_path / "deep" / "run"
    out.mkdir(parents=True)
    key = str(bags["good0"].resolve())
    entry = {"input": key, "output": "../../escape_seg", "status": "pending"}
    (out / MANIFEST_NAME).write_text(json.dumps({"format": FORMAT, "bags": [entry]}))
    settings = FleetSettings([key], out, spec(checkpoint), workers=1, quiet=True)
    summary = run_fleet(settings)
    assert sorted(p.name for p in tmp_path.rglob("*escape*")) == []
    assert summary.done == 1 and outputs_of(out) == {"good0_seg"}
    (note,) = summary.notes
    assert "'../../escape_seg'" in note and str(out / MANIFEST_NAME) in note
    assert Manifest.load(out).entries[key].output == "good0_seg"


def test_a_manifest_that_is_not_json_is_set_aside_and_rebuilt(
        ray_cluster, checkpoint, bags, tmp_path, capsys):
    out = tmp_path / "run"
    settings = FleetSettings([str(bags["good0"])], out, spec(checkpoint), workers=1, quiet=True)
    run_fleet(settings)
    text = (out / MANIFEST_NAME).read_text(encoding="utf-8") + '{"format": 1}'  # "Extra data"
    (out / MANIFEST_NAME).write_text(text, encoding="utf-8")
    capsys.readouterr()
    summary = run_fleet(settings)
    (kept,) = out.glob(MANIFEST_NAME + ".corrupt-*")
    assert kept.read_text(encoding="utf-8") == text
    (note,) = summary.notes
    assert kept.name in note and "\n" not in note
    assert capsys.readouterr().err.strip() == f"warning: {note}"
    # Rebuilt: the bag is done again, into the same single output, and indexed once.
    assert summary.done == 1 and outputs_of(out) == {"good0_seg"}
    assert Manifest.load(out).entries[str(bags["good0"].resolve())].status == "done"
    assert pq.read_table(out / INDEX_NAME).num_rows == 6


def test_fleet_cli_without_ray_says_which_extra(monkeypatch, tmp_path, capsys, bags) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)
    code = cli_main(["fleet", str(bags["good0"]), "--out", str(tmp_path / "run"),
                     "--checkpoint", "none", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.count("\n") == 0 and "pip install 'accel_ros[fleet]'" in err


def test_bench_fleet_times_three_setups_and_counts_faults(ray_cluster, checkpoint, tmp_path):
    from accel_ros.bench.fleet import FleetBenchSettings, format_table, run_fleet_benchmark

    # seed 1 draws the kill at 16% of a 2-worker run's time (seed 0: 77%): before any bag is
    # written, so the fault run waits for an attempt and kills it. At 77% a busy machine that
    # runs the fault run faster than the timed one had no attempt left to kill.
    settings = FleetBenchSettings(tmp_path, bags=2, frames=12, height=48, width=64,
                                  checkpoint=str(checkpoint), fault_runs=1, seed=1)
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
