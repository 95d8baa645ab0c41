"""``qafl bench``: the benchmarks of the checkout's ``bench/qafl_bench`` (outside the package: they are
development tools, not part of an installed suite)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

#: ``bench/`` of the source checkout this package lives in.
BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_suite() -> ModuleType:
    """:mod:`qafl_bench.suite` from the checkout's ``bench/``; a one-line error when there is none."""
    if not (BENCH_DIR / "qafl_bench" / "suite.py").is_file():
        raise FileNotFoundError(f"{BENCH_DIR}: no benchmarks here; qafl bench needs a source checkout "
                                f"(git clone, then pip install -e .)")
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module("qafl_bench.suite")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure the simulator against a bare torch loop and Flower",
                       description="Engine cost vs a bare torch loop and Flower, quantizer throughput, peak memory. "
                                   "Ratios of interleaved runs in one process (medians). See bench/README.md.")
    p.add_argument("--json", action="store_true", help="print one JSON object (a key per line) instead of the table")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and rounds (about a minute less)")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)   # toy sizes: tests check that it runs
    p.add_argument("--only", metavar="NAMES", help="comma-separated subset of the lines (see bench/README.md)")
    p.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    suite = load_suite()
    names = list(suite.NAMES)
    if args.only:
        names = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = [x for x in names if x not in suite.NAMES]
        if unknown:
            raise ValueError(f"--only: unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(suite.NAMES)}")
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    log = None if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    lines = suite.run_bench(names, size, log)
    if args.json:
        obj = {ln.name: {k: v for k, v in asdict(ln).items() if k != "name"} for ln in lines}
        obj["machine"] = suite.machine()
        obj["size"] = size
        print(json.dumps(obj, default=str))
    else:
        m = suite.machine()
        print(f"qafl bench ({size}): {m['cpus']} CPUs, torch {m['torch']}, load average {m['load_avg_1m']:.1f}")
        print(suite.format_table(lines))
    return 1 if any(ln.passed is False for ln in lines) else 0
