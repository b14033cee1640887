"""The GPU device check (accel_ros.gpu.check): its CPU dry run, its budget and watchdog, and how
it judges parity and the CUDA tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from accel_ros.gpu import check as device_check


@pytest.mark.filterwarnings("ignore:cuda_graphs is on but the device is cpu")
def test_device_check_cpu_dry_run(tmp_path: Path) -> None:
    """The prepared GPU check, at toy size on the CPU: every step runs and writes its report
    into one JSON, with one log and one PNG (the tool returns at most 8 files; 5 is the cap)."""
    # A generous budget: this checks what runs, not how fast a busy CI machine is.
    code = device_check.main(["--device", "cpu", "--tiny", "--budget-s", "1200",
                              "--out", str(tmp_path)])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert code == 0 and report["passed"], (report["failures"], report["not_finished"])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(device_check.OUTPUT_FILES) and len(files) <= 5
    assert "device check: PASSED" in (tmp_path / "device_check.log").read_text()
    steps = report["steps"]
    assert set(steps) == {
        "parity", "cuda_tests", "flow_epe", "bench", "bench_torch_flow", "bench_streams",
        "bench_compile",
    }
    streams = steps["bench_streams"]["report"]
    assert {(row["streams"], row["setup"]) for row in streams["rows"]} == {
        (1, "one_node"), (1, "separate"), (2, "one_node"), (2, "separate")
    }
    torch_flow = steps["bench_torch_flow"]["report"]
    assert torch_flow["meta"]["flow"] == "torch"
    parity = steps["parity"]["configs"]
    assert set(parity) == set(device_check.TOLERANCES)
    assert parity["fp32"]["vs_cpu_fp32"] == {"labels": 1.0, "max_probability": 0.0}
    # Every fp32 path is judged and passes; CPU bf16 is reported, not judged (fp16 tolerances).
    judged = {name for name, entry in parity.items() if entry.get("judged", True)}
    assert judged == {"fp32", "fp32_graphs", "fp32_torch_flow"}
    assert all(parity[name]["passed"] for name in judged)
    assert parity["fp32_graphs"]["graphs_ran"] is False  # no CUDA: it says so
    assert 0.5 < parity["fp16"]["vs_cpu_fp32"]["labels"] <= 1.0
    flows = {row["method"]: row["epe"] for row in steps["flow_epe"]["methods"]}
    assert flows["dis"] < flows["zero"] and flows["torch"] < flows["zero"]
    bench_report = steps["bench"]["report"]
    variant_names = {r["variant"] for r in bench_report["results"]}
    assert {"reference", "dff", "deeplab", "accel", "tv_lraspp_mobilenet_v3_large"} <= (
        variant_names
    )
    assert {r["fastpath"] for r in bench_report["results"]} == {"plain", "bf16"}
    assert (tmp_path / "device_check.png").read_bytes().startswith(b"\x89PNG")


def test_device_check_keeps_to_its_budget_and_names_what_it_skipped(
        tmp_path: Path, monkeypatch) -> None:
    """A 2 s budget is less than any step needs: no step function is even called, and every
    step says why it did not run."""
    called: list[str] = []
    real_functions = device_check._step_functions

    def recorded(check, runner):
        return {name: lambda box, name=name: called.append(name) or {"ran": True}
                for name in real_functions(check, runner)}

    monkeypatch.setattr(device_check, "_step_functions", recorded)
    code = device_check.main(["--device", "cpu", "--tiny", "--budget-s", "2",
                              "--out", str(tmp_path)])
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert code == 1 and report["passed"] is False  # parity never ran: no pass by omission
    assert called == []
    assert list(report["steps"]) == [step.name for step in device_check.STEPS]
    assert all("skipped" in step for step in report["steps"].values())
    assert "budget left" in report["steps"]["parity"]["skipped"]
    log = (tmp_path / "device_check.log").read_text()
    assert log.count(": not run (") == len(device_check.STEPS)


def test_the_watchdog_writes_what_there_is_then_exits(tmp_path: Path, monkeypatch) -> None:
    runner = device_check.Runner(device_check.Check(out=tmp_path, device="cpu", budget_s=1))
    runner.report["steps"] = {step.name: {"pending": True} for step in device_check.STEPS}
    runner.report["steps"]["parity"] = {"passed": True}
    runner.current = "cuda_tests"
    runner.log("first half done")
    exits: list[int] = []
    monkeypatch.setattr(device_check.os, "_exit", exits.append)
    runner._stop_hard()
    runner._log.close()
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert exits == [3] and report["passed"] is False
    stopped = report["steps"]["cuda_tests"]
    assert "ended by the watchdog" in stopped["stopped"]
    assert "first half done" in stopped["log_tail"]
    assert report["steps"]["bench"] == {"skipped": "the budget ran out"}
    assert report["steps"]["parity"] == {"passed": True}


def test_cuda_tests_that_all_skip_fail_a_gpu_run(tmp_path: Path) -> None:
    """Issue 20's vacuous pass: without a visible GPU every CUDA test skips and pytest exits 0;
    on a GPU run that must fail. (On this CPU machine "cuda" is exactly that situation.)"""
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the CUDA tests would run")
    result = device_check.cuda_tests(device_check.Check(out=tmp_path, device="cuda"))
    assert result["passed"] is False and result["executed"] == 0
    assert result["skipped"] == result["tests"] > 0
    assert "no CUDA test executed" in result["reason"]
    assert not (tmp_path / "pytest.txt").exists()  # the output goes to the log


def test_cuda_test_counts_are_judged() -> None:
    ran = {"tests": 7, "executed": 7, "skipped": 0, "failed": 0}
    assert device_check.judge_tests(ran, 0)["passed"]
    partly = device_check.judge_tests({**ran, "executed": 6, "skipped": 1}, 0)
    assert not partly["passed"] and "1 CUDA test(s) skipped" in partly["reason"]
    failing = device_check.judge_tests({**ran, "failed": 1}, 1)
    assert not failing["passed"] and "1 failed" in failing["reason"]


def test_graph_parity_fails_on_cuda_when_no_graph_replayed() -> None:
    """Graphs that fell back compare eager with eager: that must not pass as graph parity."""
    same = {"labels": 1.0, "max_probability": 0.0}
    fell_back = {"cuda_graphs": {"active": False, "replays": 0, "eager_calls": 12, "ops": {
        "fuse": {"failures": {"1x5x4x6, 1x5x4x6": "RuntimeError: capture"}}}}}
    on_gpu = device_check.judge_config("fp32_graphs", same, same, fell_back, on_cuda=True)
    assert on_gpu["passed"] is False and on_gpu["graphs_ran"] is False
    assert "CUDA graphs did not run" in on_gpu["reason"]
    dry = device_check.judge_config("fp32_graphs", same, same, fell_back, on_cuda=False)
    assert dry["passed"] and dry["graphs_ran"] is False  # the CPU dry run says, not fails
    replayed = {"cuda_graphs": {"active": True, "replays": 12, "eager_calls": 0,
                                "ops": {"fuse": {"failures": {}}}}}
    assert device_check.judge_config("fp32_graphs", same, same, replayed, True)["passed"]


def test_tf32_flags_are_restored_exactly_even_on_error() -> None:
    before = device_check._tf32_state()
    try:
        torch.backends.cuda.matmul.allow_tf32 = True  # not the defaults
        torch.backends.cudnn.allow_tf32 = False
        changed = device_check._tf32_state()
        with pytest.raises(RuntimeError, match="parity broke"), device_check.tf32_disabled():
            assert not torch.backends.cuda.matmul.allow_tf32
            assert not torch.backends.cudnn.allow_tf32
            raise RuntimeError("parity broke")
        assert device_check._tf32_state() == changed
    finally:
        device_check._restore_tf32(before)
    assert device_check._tf32_state() == before


def test_parity_runs_with_tf32_off_and_restores_it_when_it_fails(
    tmp_path: Path, monkeypatch
) -> None:
    seen: list[bool] = []

    def broken(model, frames, deadline, **pipeline):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        raise RuntimeError("device lost")

    before = device_check._tf32_state()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        changed = device_check._tf32_state()
        monkeypatch.setattr(device_check, "_run_pipeline", broken)
        check = device_check.Check(out=tmp_path, device="cpu", tiny=True)
        with pytest.raises(RuntimeError, match="device lost"):
            device_check.parity(check)
        assert seen == [False]  # TF32 was off while parity ran
        assert device_check._tf32_state() == changed  # and is exactly as before afterwards
    finally:
        device_check._restore_tf32(before)


@pytest.mark.filterwarnings("ignore:cuda_graphs is on but the device is cpu")
def test_parity_cut_by_its_deadline_names_what_it_left_out_and_does_not_pass(
    tmp_path: Path, countdown
) -> None:
    check = device_check.Check(out=tmp_path, device="cpu", tiny=True)
    # The CPU truth and fp32 run their 4 frames each; the deadline passes during fp16.
    result = device_check.parity(check, countdown(10))
    assert set(result["configs"]) == {"fp32"}
    assert result["not_run"] == ["fp16", "fp32_graphs", "fp16_graphs", "fp32_torch_flow"]
    assert result["passed"] is False and "not run before the deadline" in result["reason"]
