"""``qafl sweep``: a config over several seeds (and a grid), locally or on Ray; see :mod:`qafl_core.sweep`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qafl_core.config import parse_set_options
from qafl_core.sweep import format_summary, load_sweep_file, plot_sweep, sweep


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a config over several seeds (and a grid), locally or on Ray",
                       description="Run a config for seeds 0..N-1 (x the cartesian product of its grid: mapping) and "
                                   "write OUT/results.csv and OUT/summary.csv.")
    p.add_argument("--config", required=True, help="YAML file of config keys, optionally with grid: {key: [values]}")
    p.add_argument("--seeds", type=int, required=True, metavar="N", help="run seeds 0..N-1")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where the runs execute")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. auto, HOST:6379, ray://HOST:10001); default: start Ray locally")
    p.add_argument("--max-parallel", type=int, default=None, metavar="P", help="at most P Ray tasks at a time")
    p.add_argument("--cache-dir", default=None, help="run cache (default OUT/runs); runs already there are not rerun")
    p.add_argument("--checkpoint-every", type=float, default=None, metavar="T",
                   help="checkpoint each run every T simulated-time units in the cache; a rerun continues them")
    p.add_argument("--plot", action="store_true",
                   help="also write OUT/curves.png and .pdf: test accuracy and loss against simulated time and bits")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.address and args.backend != "ray":
        raise ValueError("--address: only meaningful with --backend ray")
    base, grid = load_sweep_file(args.config)
    base.update(parse_set_options(args.set))
    if args.checkpoint_every is not None:
        if args.checkpoint_every <= 0:
            raise ValueError(f"--checkpoint-every: must be > 0, got {args.checkpoint_every}")
        base["checkpoint_every"] = args.checkpoint_every
    results, summary = sweep(base, grid, args.seeds, args.out, backend=args.backend, address=args.address,
                             cache_dir=args.cache_dir, max_parallel=args.max_parallel, source=args.config)
    print(format_summary(summary, list(grid)))
    if args.plot:
        print("figure: " + ", ".join(str(p) for p in plot_sweep(results, grid, args.out)))
    print(f"results: {Path(args.out) / 'results.csv'}  summary: {Path(args.out) / 'summary.csv'}")
    failed = summary[summary.status == "failed"]
    for _, row in failed.iterrows():
        print(f"qafl: run {row.run} (seed {row.seed}) failed: {row.error}", file=sys.stderr)
    return 1 if len(failed) else 0
