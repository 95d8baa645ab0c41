"""``qafl campaign``: run a campaign file's runs (resumable, archived as they finish), show where it stands, tabulate.

A campaign file (``configs/paper/*.yaml``: ``base`` keys, ``experiments``, ``seeds``, ``variants``; read by
:func:`qafl_core.experiments.paper_headline.load_spec`) lists runs that take hours each. ``qafl campaign run``
works through one experiment's runs in seed-major order, so that a partial campaign is a complete comparison on
fewer seeds:

* a run already in the results archive (:mod:`qafl_core.archive`; same configuration and the same data, on any
  of the file's ``devices``) is skipped;
* every other run writes into its own work directory ``<out>/<experiment>/<config hash>/`` with checkpoints
  every ``--checkpoint-every`` simulated-time units, and continues from its checkpoint when there is one (an
  interrupted campaign is started again with the same command);
* a finished run is archived at once (``<archive>``, default ``results/paper/<experiment>``: its table, config,
  data and code fingerprints and commit, plus label, seed, wall time and machine), after which its checkpoint
  is deleted;
* a file named ``STOP`` in ``<out>`` ends the campaign between two runs.

``--set KEY=VALUE`` changes a key of every run (``device=cuda`` to run on a GPU: the device is part of a run's
identity, and the table takes each run from the first of the file's ``devices`` that has it).

``qafl campaign status`` lists each run as archived (and on which device), in progress (a checkpoint) or to run;
with ``--estimate`` it adds what each run not archived costs here, from start to end
(:func:`qafl_core.experiments.estimate.estimate_run`), and their total, with the load under which the step
costs were measured (``--remeasure`` measures them again);
``qafl campaign table`` prints the headline table and writes its figure
(:mod:`qafl_core.experiments.paper_headline`).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

from qafl_core.config import parse_set_options
from qafl_core.experiments import paper_headline as ph


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("campaign", help="run, inspect and tabulate a campaign file (configs/paper/*.yaml)",
                       description="Run a campaign file's runs (resumable; each archived when it finishes), list "
                                   "where they stand, or print its headline table.")
    cmds = p.add_subparsers(dest="campaign_command", metavar="ACTION")
    cmds.required = True
    run = cmds.add_parser("run", help="run the runs of one experiment that are not archived yet")
    status = cmds.add_parser("status", help="list each run: archived, in progress (checkpoint) or to run")
    for q in (run, status):
        q.add_argument("--config", required=True, metavar="FILE",
                       help="campaign file (YAML: base, experiments, seeds, variants), e.g. configs/paper/*.yaml")
        q.add_argument("--experiment", required=True, help="one of the file's experiments")
        q.add_argument("--seeds", default=None, help="comma-separated seeds (default: the file's)")
        q.add_argument("--only", action="append", metavar="LABEL", help="this variant only (repeatable)")
        q.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one config key of every run (repeatable), e.g. device=cuda")
        q.add_argument("--out", default="runs/campaign",
                       help="work directories and checkpoints (default: %(default)s; never commit it)")
        q.add_argument("--archive", default=None, help="archive folder of finished runs (default: "
                                                       "results/paper/<experiment> in the checkout)")
        q.add_argument("--no-verify-data", action="store_true",
                       help="match archived runs on the configuration only (without the dataset)")
    status.add_argument("--estimate", action="store_true",
                        help="also estimate what each run not archived costs here (local steps, evaluations, "
                             "Gbit, time; qafl_core.experiments.estimate: simulated clock, measured step costs)")
    status.add_argument("--remeasure", action="store_true",
                        help="with --estimate: measure the step costs again instead of reusing the cached ones")
    run.add_argument("--checkpoint-every", type=float, default=500.0, metavar="T",
                     help="checkpoint every T simulated-time units (default: %(default)s)")
    for q in (run, status):
        q.add_argument("--threads", type=int, default=None, help="torch threads per run (default: the config's)")
    run.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    run.set_defaults(func=_cmd_run)
    status.set_defaults(func=_cmd_status)
    table = cmds.add_parser("table", help="the headline table and figure (python -m "
                                          "qafl_core.experiments.paper_headline)")
    table.add_argument("--config", required=True, metavar="FILE", help="campaign file")
    table.add_argument("--experiment", required=True)
    table.add_argument("--out", default=None, help="figure folder (default: figures/paper)")
    table.add_argument("--no-verify-data", action="store_true")
    table.set_defaults(func=_cmd_table)


def _plan(args: argparse.Namespace) -> tuple[dict, list[tuple[str, int, object]], Path, Path, list[str]]:
    """The campaign file, its runs selected by ``--seeds``/``--only`` with the ``--set`` overrides, work and archive
    folders and the devices an archived run may come from."""
    spec = ph.load_spec(args.config)
    runs = ph.run_configs(spec, args.experiment)
    labels = set(args.only or [])
    if labels - set(spec["variants"]):
        raise ValueError(f"--only: {', '.join(sorted(labels - set(spec['variants'])))} is not a variant of "
                         f"{args.config} (has {', '.join(spec['variants'])})")
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"--seeds: expected comma-separated integers, got {args.seeds!r}") from None
    sets = parse_set_options(args.set)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: must be >= 1, got {args.threads}")
        sets["num_threads"] = args.threads
    runs = [(label, seed, cfg.replace(**sets) if sets else cfg)
            for label, seed, cfg in runs if (not labels or label in labels) and (seeds is None or seed in seeds)]
    archive_dir = Path(args.archive) if args.archive else ph.ROOT / "results" / "paper" / args.experiment
    devices = list(spec.get("devices") or [])
    return spec, runs, Path(args.out) / args.experiment, archive_dir, devices


def _archived(cfg, devices: list[str], roots: list[Path], verify_data: bool) -> str | None:
    """The device of ``cfg``'s archived run (its own first, then the campaign's devices), or None."""
    from qafl_core import archive

    for dev in [cfg.device] + [d for d in devices if d != cfg.device]:
        if archive.lookup(dataclasses.replace(cfg, device=dev), roots, verify_data=verify_data) is not None:
            return dev
    return None


def _roots(archive_dir: Path) -> list[Path]:
    default = ph.ROOT / "results"
    return [default, archive_dir] if default.is_dir() else [archive_dir]


def _cmd_status(args: argparse.Namespace) -> int:
    from qafl_core import checkpoint

    _, runs, work, archive_dir, devices = _plan(args)
    counts = {"archived": 0, "in progress": 0, "to run": 0}
    if args.remeasure and not args.estimate:
        raise ValueError("--remeasure: only with --estimate")
    costs, total = None, 0.0
    if args.estimate:
        from qafl_core.experiments import estimate
        costs = estimate.CostCache(estimate.default_cost_path(), remeasure=args.remeasure)
    for label, seed, cfg in runs:
        dev = _archived(cfg, devices, _roots(archive_dir), not args.no_verify_data)
        d = work / cfg.config_hash()
        state = ("archived" if dev else "in progress" if (d / checkpoint.FILE).exists() else "to run")
        counts[state] += 1
        where = f" ({dev})" if dev else f" ({d})" if state == "in progress" else ""
        cost = ""
        if costs is not None and not dev:
            e = estimate.estimate_run(cfg, label, costs)
            total += e.seconds
            cost = (f"  ~ {e.seconds / 60:.0f} min here: {e.local_steps:,} local steps, {e.evaluations} evaluations,"
                    f" {e.bits / 1e9:.1f} Gbit")
        print(f"{state:12s} seed {seed}  {label}  [{cfg.config_hash()}]{where}{cost}")
    print(", ".join(f"{n} {k}" for k, n in counts.items()))
    if costs is not None:
        left = counts["in progress"] + counts["to run"]
        print(f"estimated time of the {left} runs not archived, one after another, each from its start: "
              f"{total / 3600:.1f} h here: local SGD steps, evaluations and messages at the costs measured on this "
              f"machine ({costs.path}; {costs.note() or 'none needed'}), without the server's arithmetic and "
              f"per-step overheads")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from qafl_core import archive, checkpoint, runner, store

    if args.checkpoint_every <= 0:
        raise ValueError(f"--checkpoint-every: must be > 0, got {args.checkpoint_every}")
    _, runs, work, archive_dir, devices = _plan(args)
    done = ran = 0
    for label, seed, cfg in runs:
        h = cfg.config_hash()
        tag = f"{args.experiment} seed {seed} {label} [{h}]"
        dev = _archived(cfg, devices, _roots(archive_dir), not args.no_verify_data)
        if dev is not None:
            done += 1
            print(f"archived     {tag} ({dev})")
            continue
        d = work / h
        if (work.parent / "STOP").exists():
            print(f"{work.parent / 'STOP'}: found, stopping before {tag}")
            return 0
        finished = (d / store.RECORD).exists()
        resume = not finished and (d / checkpoint.FILE).exists()
        print(f"{'import' if finished else 'resume' if resume else 'run':12s} {tag}"
              + (f" -> {d}" if not finished else ""), flush=True)
        if args.dry_run:
            continue
        t0 = time.time()
        if not finished:
            df = runner.run(cfg, out_dir=d, resume=resume, checkpoint_every=args.checkpoint_every)
            ran += 1
            test = df[(df.split == "test") & (df.metric == "accuracy")]
            if len(test):
                print(f"finished     {tag} in {(time.time() - t0) / 60:.1f} min: test accuracy "
                      f"{test.value.iloc[-1]:.4f} at t = {test.time.iloc[-1]:.0f}", flush=True)
        rec = archive.import_run_dir(d, archive_dir, extra={
            "label": label, "seed": seed, "experiment": args.experiment, "wall_time_s": round(time.time() - t0, 1),
            "resumed": resume, "machine": platform.machine(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]})
        (d / checkpoint.FILE).unlink(missing_ok=True)
        done += 1
        print(f"archived     {tag} -> {rec}", flush=True)
    left = len(runs) - done
    print(f"{done} of {len(runs)} runs archived ({ran} run now)" + (", dry run" if args.dry_run else "")
          + (f"; {left} left" if left else ""))
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    argv = ["--spec", args.config, "--experiment", args.experiment]
    if args.out:
        argv += ["--out", args.out]
    if args.no_verify_data:
        argv.append("--no-verify-data")
    return ph.main(argv)
