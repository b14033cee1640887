"""What a training run leaves on disk: log lines, per-epoch metrics and curves, and the
resumable state of a stage.

A stage folder holds `log.txt`, `metrics.csv`, `metrics.json`, `curves.png`, `last.pt` +
`last_state.pt` (model, optimizer, counters: enough to resume after the last finished epoch),
`progress.json` and, once finished, `final.pt`.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..model import AccelNet, load_checkpoint, save_checkpoint
from .config import TrainConfig


def log_line(folder: Path, message: str) -> None:
    """Print a timestamped line and append it to `<folder>/log.txt`."""
    line = f"[{time.strftime('%H:%M:%S')}] {message}"
    print(line, flush=True)
    with open(folder / "log.txt", "a", encoding="utf-8") as handle:
        handle.write(line + "\n")


class MetricsLog:
    """Per-epoch rows -> metrics.csv + metrics.json + curves.png in one stage folder."""

    FIELDS = ("stage", "epoch", "iteration", "lr", "train_loss", "val_miou", "val_pixel_acc",
              "elapsed_s")

    def __init__(self, folder: Path, rows: list[dict[str, Any]] | None = None) -> None:
        self.folder = folder
        self.rows: list[dict[str, Any]] = list(rows or [])

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append({key: row.get(key) for key in self.FIELDS})
        self.write()

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.FIELDS)
            writer.writeheader()
            writer.writerows(self.rows)
        (self.folder / "metrics.json").write_text(json.dumps(self.rows, indent=1))
        plot_curves(self.rows, self.folder / "curves.png")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    """Training loss and validation mIoU against epoch (one PNG, two panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_miou) = plt.subplots(1, 2, figsize=(9, 3.5))
    stages = list(dict.fromkeys(row["stage"] for row in rows))
    for stage in stages:
        own = [row for row in rows if row["stage"] == stage]
        epochs = [row["epoch"] for row in own]
        ax_loss.plot(epochs, [row["train_loss"] for row in own], marker=".", label=stage)
        val = [(row["epoch"], row["val_miou"]) for row in own if row["val_miou"] is not None]
        if val:
            ax_miou.plot(*zip(*val, strict=True), marker=".", label=stage)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross-entropy)", title="loss")
    ax_miou.set(xlabel="epoch", ylabel="val mIoU", title="validation mIoU")
    for ax in (ax_loss, ax_miou):
        ax.grid(alpha=0.3)
        if stages:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass
class StageRun:
    """One stage in progress: what it trains, where it writes, and how far it got (the
    counters are restored by `begin_stage` when resuming)."""

    stage: str
    model: AccelNet
    optimizer: torch.optim.Optimizer
    config: TrainConfig
    folder: Path
    device: torch.device
    log: MetricsLog = field(init=False)
    epoch: int = 0
    iteration: int = 0
    elapsed: float = 0.0  # seconds spent in training steps (validation not counted)

    def __post_init__(self) -> None:
        self.log = MetricsLog(self.folder)

    def extra(self, val_miou: float | None = None) -> dict[str, Any]:
        """What this stage's checkpoints record besides the weights."""
        return {"stage": self.stage, "epoch": self.epoch, "val_miou": val_miou,
                "recipe": self.config.recipe()}


def begin_stage(run: StageRun) -> StageRun:
    """Resume `run` from `<folder>/last.pt` + `last_state.pt` when the config asks to and
    they exist (model, optimizer, counters, metrics rows); otherwise leave it at epoch 0."""
    folder = run.folder
    if not run.config.resume or not all(
        (folder / name).is_file() for name in ("last.pt", "last_state.pt")
    ):
        return run
    loaded, _ = load_checkpoint(folder / "last.pt")
    run.model.load_state_dict(loaded.state_dict())
    state = torch.load(folder / "last_state.pt", map_location="cpu", weights_only=True)
    run.optimizer.load_state_dict(state["optimizer"])
    run.epoch, run.iteration = int(state["epoch"]), int(state["iteration"])
    run.elapsed = float(state["elapsed"])
    run.log = MetricsLog(folder, json.loads(state["rows_json"]))
    log_line(folder, f"{run.stage}: resumed at epoch {run.epoch}, iteration {run.iteration}")
    return run


def save_state(run: StageRun) -> None:
    """Write what resuming after this epoch needs: last.pt, last_state.pt, progress.json."""
    folder = run.folder
    save_checkpoint(folder / "last.pt", run.model, extra=run.extra())
    state = {"optimizer": run.optimizer.state_dict(), "epoch": run.epoch,
             "iteration": run.iteration, "elapsed": run.elapsed,
             "rows_json": json.dumps(run.log.rows)}
    tmp = folder / "last_state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(folder / "last_state.pt")
    progress = {"stage": run.stage, "epoch": run.epoch, "iteration": run.iteration,
                "elapsed": run.elapsed}
    (folder / "progress.json").write_text(json.dumps(progress))


def stage_finished(folder: Path, epochs: int) -> bool:
    """True if `folder` holds a finished stage that trained at least `epochs` epochs (a
    resumed run with more epochs continues from the saved epoch instead)."""
    if not (folder / "final.pt").is_file():
        return False
    progress = folder / "progress.json"
    if not progress.is_file():
        return True
    return int(json.loads(progress.read_text())["epoch"]) >= epochs
