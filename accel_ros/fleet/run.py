"""`accel-ros fleet`: segment many bags on a Ray cluster, exactly one complete output each.

The unit of work is one bag: its cameras stay in one segmenter (keyframe caches, batching).
Workers are Ray actors that load the model once and take bag after bag. Ray runs a task at
least once; exactly-once outputs come from here: every attempt writes under a name of its own
and renames a complete bag into place (worker.py), the driver alone records finished bags in
the manifest, and the scene index is merged from the parts of the bags the manifest holds as
done. A worker that dies is replaced and its bag retried, up to `max_attempts`. One run at a
time holds a run folder (lock.py), and the manifest's names are checked before they become
paths (manifest.py).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import preset
from ..model.checkpoint import model_fingerprint, resolve_checkpoint
from .index import INDEX_NAME, merge_parts
from .inputs import expand_inputs, fingerprint
from .lock import hold_run_folder
from .manifest import BagEntry, Manifest
from .worker import PARTS_DIR, TMP_DIR, BagJob, BagWorker, WorkerSpec

RAY_EXTRA = "ray is not installed: pip install 'accel_ros[fleet]' (or pip install 'ray[data]')"


@dataclass
class FleetSettings:
    inputs: list[str]  # bag folders, storage files, globs, list files
    out: Path  # run folder: output bags, manifest.json, index.parquet
    spec: WorkerSpec
    workers: int = 2
    address: str | None = None  # None: a private local Ray instance; "auto", "ray://host:port"
    gpus_per_worker: float = 0.0
    max_attempts: int = 3
    quiet: bool = False


@dataclass
class FleetSummary:
    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # input -> reason
    frames: int = 0
    seconds: float = 0.0  # the whole run, Ray start-up included
    startup_seconds: float = 0.0  # starting or joining Ray and loading the workers' models
    index_rows: int = 0
    retries: int = 0
    workers: dict[int, list[float]] = field(default_factory=dict)  # pid -> [frames, seconds]
    notes: list[str] = field(default_factory=list)  # what was wrong in the run folder, a line each

    def __str__(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else 0.0
        lines = [f"bags: {self.done} done, {self.skipped} skipped (unchanged), "
                 f"{len(self.failed)} failed; {self.retries} retried after a worker died",
                 f"frames: {self.frames} in {self.seconds:.1f} s ({fps:.1f} fps total, "
                 f"{self.startup_seconds:.1f} s of it starting Ray and the workers)"]
        lines += [f"worker pid {pid}: {int(n)} frames, {n / s if s else 0:.1f} fps"
                  for pid, (n, s) in self.workers.items()]
        lines += [f"failed {bag}: {reason}" for bag, reason in self.failed.items()]
        lines.append(f"index: {self.index_rows} rows")
        return "\n".join(lines)


def run_fleet(settings: FleetSettings) -> FleetSummary:
    """Segment every input bag not already done with this model; returns the summary.
    Raises RunFolderInUseError when another run holds `settings.out`."""
    bags = expand_inputs(settings.inputs)
    settings.out.mkdir(parents=True, exist_ok=True)
    with hold_run_folder(settings.out):
        return _run(settings, bags)


def _run(settings: FleetSettings, bags: list[Path]) -> FleetSummary:
    """run_fleet with the run folder held: no other run adds to or removes from it."""
    out = settings.out
    manifest = Manifest.load(out)
    summary = FleetSummary(notes=list(manifest.notes))
    for note in summary.notes:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    jobs = _plan(bags, manifest, _model_id(settings.spec), summary)
    manifest.save()
    started = time.perf_counter()
    if jobs:
        _Dispatcher(settings, manifest, summary).run(jobs)
    summary.seconds = time.perf_counter() - started
    shutil.rmtree(out / TMP_DIR, ignore_errors=True)  # attempts of workers that died
    done = [e for e in manifest.entries.values() if e.status == "done"]
    summary.index_rows = merge_parts(
        [out / PARTS_DIR / f"{e.output}.parquet" for e in done], out / INDEX_NAME)
    return summary


def _model_id(spec: WorkerSpec) -> str:
    path = resolve_checkpoint(spec.checkpoint)
    return model_fingerprint(path, preset(spec.preset) if path is None else None)


def _plan(bags: list[Path], manifest: Manifest, model: str,
          summary: FleetSummary) -> list[BagEntry]:
    """Entries to (re)do: new bags, changed inputs, another model, failed or missing outputs."""
    jobs = []
    for bag in bags:
        entry = manifest.entry(bag)
        current = fingerprint(bag)
        if entry.is_current(current, model, manifest.folder):
            summary.skipped += 1
            continue
        entry.status, entry.fingerprint, entry.model = "pending", current, model
        entry.attempts, entry.reason = 0, ""
        jobs.append(entry)
    return jobs


class _Dispatcher:
    """Feeds pending bags to idle actors, replaces actors that die, books every outcome."""

    def __init__(self, settings: FleetSettings, manifest: Manifest,
                 summary: FleetSummary) -> None:
        self.settings, self.manifest, self.summary = settings, manifest, summary

    def run(self, jobs: list[BagEntry]) -> None:
        try:
            import ray
        except ImportError:
            raise ModuleNotFoundError(RAY_EXTRA) from None
        self.ray = ray
        self.started = time.perf_counter()
        started_here = not ray.is_initialized()
        if started_here:
            _init_ray(ray, self.settings)
        try:
            self._loop(deque(jobs))
        finally:
            if started_here:
                ray.shutdown()

    def _loop(self, pending: deque[BagEntry]) -> None:
        count = min(self.settings.workers, len(pending))
        idle = [self._new_actor() for _ in range(count)]
        try:
            self.ray.get([actor.pid.remote() for actor in idle])  # every worker has its model
        except self.ray.exceptions.RayActorError as error:
            raise ValueError(f"the workers could not load the model: {_one_line(error)}") from None
        self.summary.startup_seconds = time.perf_counter() - self.started
        running: dict[Any, tuple[Any, BagEntry]] = {}
        with tqdm(total=len(pending), unit="bag", desc="fleet", disable=self.settings.quiet,
                  file=sys.stderr) as bar:
            while pending or running:
                while idle and pending:
                    actor, entry = idle.pop(), pending.popleft()
                    entry.attempts += 1
                    job = BagJob(entry.input, str(self.settings.out), entry.output)
                    running[actor.run.remote(job)] = (actor, entry)
                ready, _ = self.ray.wait(list(running), num_returns=1)
                actor, entry = running.pop(ready[0])
                if self._book(ready[0], entry, pending):
                    idle.append(actor)
                else:
                    self.ray.kill(actor, no_restart=True)
                    idle.append(self._new_actor())
                if entry.status != "pending":
                    bar.update(1)
                    bar.set_postfix(frames=self.summary.frames, failed=len(self.summary.failed))
                self.manifest.save()

    def _book(self, ref: Any, entry: BagEntry, pending: deque[BagEntry]) -> bool:
        """Record one attempt's outcome; False when its actor is gone (replace it)."""
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayActorError:
            self._retry(entry, pending, "its worker died")
            return False
        except self.ray.exceptions.RayTaskError as error:
            self._retry(entry, pending, _one_line(error))
            return True
        if "error" in result:
            entry.status, entry.reason = "failed", result["error"]
            self.summary.failed[entry.input] = entry.reason
            return True
        entry.status, entry.frames = "done", int(result["frames"])
        entry.skipped_frames, entry.seconds = int(result["skipped"]), float(result["seconds"])
        self.summary.done += 1
        self.summary.frames += entry.frames
        worker = self.summary.workers.setdefault(int(result["pid"]), [0, 0.0])
        worker[0] += entry.frames
        worker[1] += entry.seconds
        return True

    def _retry(self, entry: BagEntry, pending: deque[BagEntry], why: str) -> None:
        if entry.attempts >= self.settings.max_attempts:
            entry.status = "failed"
            entry.reason = f"gave up after {entry.attempts} attempts: {why}"
            self.summary.failed[entry.input] = entry.reason
        else:
            self.summary.retries += 1
            pending.append(entry)

    def _new_actor(self) -> Any:
        remote = self.ray.remote(num_cpus=1, num_gpus=self.settings.gpus_per_worker,
                                 max_restarts=0)(BagWorker)
        return remote.remote(self.settings.spec)


def _init_ray(ray: Any, settings: FleetSettings) -> None:
    if settings.address:
        ray.init(address=settings.address, log_to_driver=False)
        return
    # A private local instance on loopback with one CPU slot per worker. address="local":
    # with address=None Ray joins the cluster that RAY_ADDRESS or an earlier `ray start`
    # (/tmp/ray/ray_current_cluster) names, and would send the user's bags to it.
    ray.init(address="local", num_cpus=max(1, settings.workers), include_dashboard=False,
             log_to_driver=False, _node_ip_address="127.0.0.1", configure_logging=False)


def _one_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else type(error).__name__
