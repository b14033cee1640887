"""A fleet worker: loads the model once and segments bag after bag with the package's own
`segment` (bag reading with recovery, batching of cameras, bag writing).

Plain Python: the driver wraps `BagWorker` in `ray.remote` at run time, so importing this
module needs no Ray. Every attempt at a bag writes into a temporary folder of its own (its name
carries the worker's pid), ``.tmp/<output>.<pid>.<id>/<output>``, and only a complete bag is
renamed to the output name, so an attempt that a crash cuts short never leaves a partial output
where a finished one belongs.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TMP_DIR = ".tmp"  # attempts in progress, inside the run folder
PARTS_DIR = ".index"  # one index part per finished bag, inside the run folder


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker builds once: the model choice and how the segmenter runs."""

    checkpoint: str | None
    preset: str
    pipeline: dict[str, Any]  # PipelineConfig.to_dict()
    threads: int = 1


@dataclass(frozen=True)
class BagJob:
    input: str  # input bag path
    folder: str  # run folder
    output: str  # output bag folder name in the run folder


class BagWorker:
    """Holds one model; `run(job)` segments one bag (every camera topic) into the run folder."""

    def __init__(self, spec: WorkerSpec) -> None:
        import torch

        from ..config import PipelineConfig
        from ..model.checkpoint import load_model_or_preset
        from ..runtime import set_threads

        # torch and OpenCV (DIS flow) alike: with one slot per worker, a second OpenCV thread
        # per worker would compete with the other workers for the same cores.
        set_threads(max(1, spec.threads))
        torch.manual_seed(0)  # random weights (no checkpoint) are the same in every worker
        self.loaded = load_model_or_preset(spec.preset, spec.checkpoint)
        self.model = self.loaded.model
        self.pipeline = PipelineConfig.from_dict(spec.pipeline)

    def pid(self) -> int:
        return os.getpid()

    def run(self, job: BagJob) -> dict[str, Any]:
        """{"frames", "skipped", "seconds", "pid"} for a finished bag, or {"error": one line}
        for an input that cannot be segmented (unreadable, no image topic). Anything else
        (a crash, a kill) ends the attempt and the driver retries the bag."""
        from ..palette import class_names
        from ..replay.runner import segment
        from ..stream.segmenter import AccelSegmenter
        from .index import bag_rows, write_part

        folder = Path(job.folder)
        attempt = folder / TMP_DIR / f"{job.output}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        attempt.mkdir(parents=True)
        # The bag folder has its final name already: the writer names its storage files and
        # metadata.yaml after it (<output>/<output>_0.mcap), and the rename below keeps them.
        tmp = attempt / job.output
        started = time.perf_counter()
        # A fresh segmenter per bag: every recording starts with empty keyframe caches and
        # frame counts, exactly as a `segment` process of its own would.
        segmenter = AccelSegmenter(self.model, self.pipeline,
                                   model_hash=self.loaded.fingerprint)
        try:
            summary = segment(job.input, tmp, segmenter, all_topics=True, output_format="bag",
                              quiet=True)
        except (OSError, ValueError) as error:
            shutil.rmtree(attempt, ignore_errors=True)
            return {"error": " ".join(str(error).split()) or type(error).__name__}
        config = self.model.config
        names = class_names(config.num_classes, config.class_names)
        write_part(bag_rows(tmp, job.input, job.output, names),
                   folder / PARTS_DIR / f"{job.output}.parquet", names)
        final = folder / job.output
        if final.exists():  # an earlier attempt finished before its worker died
            shutil.rmtree(final)
        os.replace(tmp, final)
        attempt.rmdir()
        return {"frames": summary.frames, "skipped": len(summary.skipped),
                "seconds": time.perf_counter() - started, "pid": os.getpid()}
