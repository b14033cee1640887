"""`accel-ros bench-fleet`: fleet throughput (1 and 2 workers against hand-started processes)
and frames lost or duplicated when workers are killed. The work is accel_ros.bench.fleet's."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import print_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `bench-fleet`."""
    bench = subparsers.add_parser(
        "bench-fleet", help="fleet throughput and exactly-once outputs under worker kills",
        description="Time `fleet` with 1 and 2 workers against two hand-started `segment` "
        "processes on the same bags, then kill a worker at a random moment in each of "
        "--fault-runs runs and count frames lost or duplicated. Needs the fleet extra.")
    bench.add_argument("--work", type=Path, default=Path("runs/bench_fleet"),
                       help="folder for the generated bags and the runs' outputs")
    bench.add_argument("--bags", type=int, default=8)
    bench.add_argument("--frames", type=int, default=60, help="frames per bag")
    bench.add_argument("--height", type=int, default=360)
    bench.add_argument("--width", type=int, default=480)
    bench.add_argument("--checkpoint", default="default")
    bench.add_argument("--repeats", type=int, default=1)
    bench.add_argument("--fault-runs", type=int, default=10)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", type=Path, default=None)
    bench.add_argument("--plot", type=Path, default=None)
    bench.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    from ..bench.fleet import FleetBenchSettings, format_table, run_fleet_benchmark, write_plot

    if min(args.bags, args.frames, args.repeats) < 1 or args.fault_runs < 0:
        raise ValueError("--bags, --frames and --repeats must be >= 1, --fault-runs >= 0")
    settings = FleetBenchSettings(
        args.work, bags=args.bags, frames=args.frames, height=args.height, width=args.width,
        checkpoint=args.checkpoint, repeats=args.repeats, fault_runs=args.fault_runs,
        seed=args.seed)
    report = run_fleet_benchmark(settings)
    print_report(format_table(report), report, args.json, args.plot, write_plot)
    return 0
