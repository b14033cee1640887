"""`accel-ros fleet`: segment many bags on a Ray cluster into one output bag each, with a
manifest of finished work and a Parquet scene index. The work is accel_ros.fleet's."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime import THREADS_HELP
from .options import add_model_options, pipeline_config


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `fleet`."""
    fleet = subparsers.add_parser(
        "fleet",
        help="segment many bags on a Ray cluster (one output bag each, manifest, scene index)",
        description="Segment every camera topic of each input bag on Ray workers. INPUTS are "
        "bag folders, .mcap/.db3 files, globs or .txt files listing them. OUT receives one "
        "output bag per input, manifest.json (a rerun skips unchanged finished bags) and "
        "index.parquet (a row per frame: bag, topic, stamp, keyframe, class pixel fractions, "
        "confidence, latency). One run at a time per OUT. Exit status: 0 every bag done or "
        "skipped, 1 some bag failed (the summary names it), 2 the run did not start (bad "
        "input, OUT in use by another run). Needs the fleet extra: pip install "
        "'accel_ros[fleet]'.",
    )
    fleet.add_argument("inputs", nargs="+", metavar="INPUT")
    fleet.add_argument("--out", "-o", required=True, type=Path, metavar="OUT")
    fleet.add_argument("--address", default=None,
                       help="Ray cluster to join ('auto' or ray://host:port); default: start a "
                       "private local instance, whatever RAY_ADDRESS or an earlier `ray start` "
                       "names")
    fleet.add_argument("--workers", type=int, default=2,
                       help="Ray actors, each holding one model (default 2)")
    fleet.add_argument("--gpus-per-worker", type=float, default=None,
                       help="GPUs reserved per worker (default: 1 with --device cuda, else 0)")
    fleet.add_argument("--max-attempts", type=int, default=3,
                       help="attempts per bag when workers die (default 3)")
    add_model_options(fleet, device="cpu")
    fleet.add_argument("--threads", type=int, default=1,
                       help=f"torch threads per worker (default 1). {THREADS_HELP}")
    fleet.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    fleet.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..fleet.run import FleetSettings, run_fleet
    from ..fleet.worker import WorkerSpec
    from ..model.checkpoint import resolve_checkpoint

    if args.workers < 1 or args.max_attempts < 1 or args.threads < 1:
        raise ValueError("--workers, --max-attempts and --threads must be >= 1")
    resolve_checkpoint(args.checkpoint)  # a missing checkpoint fails before Ray starts
    gpus = args.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if str(args.device).startswith("cuda") else 0.0
    spec = WorkerSpec(args.checkpoint, args.preset, pipeline_config(args).to_dict(),
                      args.threads)
    summary = run_fleet(FleetSettings(
        list(args.inputs), args.out, spec, workers=args.workers, address=args.address,
        gpus_per_worker=gpus, max_attempts=args.max_attempts, quiet=args.quiet))
    print(summary)
    # 1 when any bag failed, however many others finished: a script must not take a partial
    # run for a complete one. (2: the run did not start, main's rule for bad input.)
    return 1 if summary.failed else 0
