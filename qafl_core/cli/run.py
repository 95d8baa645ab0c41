"""``qafl run``: one simulation from a YAML config and ``--set key=value`` overrides."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qafl_core.config import config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run one simulation (QuAFL, FedAvg, FedBuff, FedAsync, QAFeL or a registered algorithm)",
                       description="Run one simulation and write OUT/results.csv and OUT/config.json.")
    p.add_argument("--config", help="YAML file of config keys (see README: Configuration)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--checkpoint-every", type=float, metavar="T", help="write OUT/checkpoint.pt every T simulated-time units")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from qafl_core.runner import run

    cfg = config_from_args(args.config, args.set)
    if args.quiet:
        cfg = cfg.replace(progress=False)
    if args.checkpoint_every is not None:
        try:  # the same checks as the config key: > 0, finite, at most MAX_INTERVALS checkpoints
            cfg = cfg.replace(checkpoint_every=args.checkpoint_every)
            cfg.check_intervals()
        except ValueError as exc:
            raise ValueError(f"--checkpoint-every: {str(exc).partition(': ')[2]}") from None
    df = run(cfg, out_dir=args.out, resume=args.resume, checkpoint_every=args.checkpoint_every)
    print(summarize(df), file=sys.stdout)
    print(f"results: {Path(args.out) / 'results.csv'}  config: {Path(args.out) / 'config.json'}")
    return 0


def summarize(df) -> str:
    """A one-paragraph summary of a results table (last evaluation)."""
    test = df[df.split == "test"]
    if test.empty:
        return "no evaluation recorded"
    last = test[test.time == test.time.max()]
    row = last.iloc[0]
    vals = ", ".join(f"{m}={v:.4g}" for m, v in zip(last.metric, last.value))
    status = "DIVERGED " if (df.split == "status").any() else ""
    return (f"{status}{row.algorithm} on {row.dataset} (seed {row.seed}): t={row.time:.1f}, server steps={row.server_steps}, "
            f"local steps={row.local_steps}, bits up={row.bits_up:.3g}, bits down={row.bits_down:.3g}; {vals}")
