"""The paper profile's headline comparison, read from the results archive (no training).

The comparison (QuAFL 32-bit and lattice:12 against FedAvg 32-bit and QSGD:12 and FedBuff, on real LEAF FEMNIST
with the LEAF CNN at n = 300 and n = 100; Zakerinia et al. 2024, Sec. 5 and Fig. 5) takes hours of CPU per run.
Its runs are listed in a campaign file (``configs/paper/femnist_headline.yaml``: shared keys, experiments, seeds,
variants) and their tidy results are committed under ``results/paper/<experiment>/``
(:mod:`qafl_core.archive`).  This module turns those tables into the headline numbers, per variant over seeds:

* final test accuracy and loss (mean and 95 % Student-t confidence interval over seeds);
* time to a target accuracy and the bits (up + down) sent until then, over the seeds that reached it, with how many
  did;
* the fraction of contacts in which a slow client had completed no local step (QuAFL only);
* the local SGD steps the run computed.

``python -m qafl_core.experiments.paper_headline --experiment femnist300`` prints the table (markdown) and writes
``<out>/headline_<experiment>.png`` and ``.metrics.json`` (default ``figures/paper``).  Runs not yet in the
archive are listed as missing, never filled in.  Without the dataset (no ``QAFL_DATA_DIR``) the archive is matched
on the configuration alone and the output says that the data were not verified.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from qafl_core import archive
from qafl_core.config import RunConfig
from qafl_core.experiments import analysis

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "configs" / "paper" / "femnist_headline.yaml"


def load_spec(path: str | Path = SPEC) -> dict:
    """The campaign file: ``base`` keys, ``experiments`` (name -> keys), ``seeds``, ``variants`` (label -> keys)."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    for key in ("base", "experiments", "seeds", "variants"):
        if not isinstance(spec, dict) or key not in spec:
            raise ValueError(f"{path}: campaign file needs the key {key!r}")
    return spec


def run_configs(spec: dict, experiment: str) -> list[tuple[str, int, RunConfig]]:
    """(label, seed, config) of every run of ``experiment``, seed-major as the campaign runs them."""
    if experiment not in spec["experiments"]:
        raise ValueError(f"experiment: {experiment!r} is not in the campaign file (has {', '.join(spec['experiments'])})")
    keys = {**spec["base"], **(spec["experiments"][experiment] or {})}
    return [(label, int(seed), RunConfig.from_dict({**keys, **variant, "seed": int(seed)}))
            for seed in spec["seeds"] for label, variant in spec["variants"].items()]


def collect(spec: dict, experiment: str, roots: Iterable[str | Path] | None = None,
            verify_data: bool = True, devices: Sequence[str] | None = None,
            ) -> tuple[pd.DataFrame, list[tuple[str, int]], list[dict]]:
    """The archived tables of ``experiment`` with ``label`` and ``device`` columns, the (label, seed) pairs not
    archived yet, and each table's provenance.

    ``devices`` (default: the campaign file's ``devices``, else the run's own ``device``): where a run may have
    been computed.  The device is part of a run's configuration (CUDA and CPU agree in distribution, not in the
    last bits), so each (label, seed) is looked up on each device in turn and the first archived one is used; the
    ``device`` column and the table say which."""
    frames, missing, provenance = [], [], []
    devices = list(devices or spec.get("devices") or [])
    for label, seed, cfg in run_configs(spec, experiment):
        df = None
        for dev in devices or [cfg.device]:
            df = archive.lookup(dataclasses.replace(cfg, device=dev), roots, verify_data=verify_data)
            if df is not None:
                break
        if df is None:
            missing.append((label, seed))
            continue
        provenance.append({"label": label, "seed": seed, "device": dev, **df.attrs["provenance"]})
        frames.append(df.assign(label=label, device=dev))
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return results, missing, provenance


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (nan half-width for fewer than two values)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan
    if v.size == 1:
        return float(v[0]), math.nan
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(v.mean()), float(half)


def per_run(results: pd.DataFrame, target: float) -> pd.DataFrame:
    """One row per (label, seed): final accuracy and loss, time and bits to ``target``, zero-step contacts.

    Time and bits to the target are :func:`qafl_core.experiments.analysis.time_to_target`'s (the first
    evaluation at or above it, evaluations in order of time, then server steps), taken per (label, seed) so that
    one archived table served under two labels counts under both."""
    rows = []
    for (label, seed), run in results.groupby(["label", "seed"], sort=False):
        test = run[run.split == "test"]
        acc = test[test.metric == "accuracy"].sort_values("time")
        loss = test[test.metric == "loss"].sort_values("time")
        hit = analysis.time_to_target(run, target).iloc[0]
        zero = run[(run.split == "sim") & (run.metric == "zero_step_fraction_slow")].sort_values("time")
        diverged = bool(((run.split == "status") & (run.metric == "diverged")).any())
        rows.append({
            "label": label, "seed": int(seed), "device": str(run["device"].iloc[0]) if "device" in run else "cpu",
            "final_time": float(acc.time.iloc[-1]),
            "final_accuracy": float(acc.value.iloc[-1]), "final_loss": float(loss.value.iloc[-1]),
            "best_accuracy": float(acc.value.max()), "reached": bool(hit["reached"]),
            "time_to_target": float(hit["time"]), "gbits_to_target": float(hit["bits"]) / 1e9,
            "zero_step_slow": float(zero.value.iloc[-1]) if not zero.empty else math.nan,
            "local_steps": int(acc.local_steps.iloc[-1]), "diverged": diverged,
        })
    return pd.DataFrame(rows)


def headline(results: pd.DataFrame, target: float, order: Sequence[str] | None = None) -> pd.DataFrame:
    """Per variant: seeds, mean and 95 % CI half-width of each per-run number; time and bits over reaching seeds."""
    runs = per_run(results, target)
    out = []
    for label in (order or list(dict.fromkeys(runs.label))):
        r = runs[runs.label == label]
        if r.empty:
            continue
        row: dict[str, Any] = {"label": label, "seeds": len(r), "reached": int(r.reached.sum()),
                               "diverged": int(r.diverged.sum()),
                               "devices": ", ".join(f"{d} {n}" for d, n in r.device.value_counts(sort=False).items())}
        for col in ("final_accuracy", "final_loss", "time_to_target", "gbits_to_target", "zero_step_slow",
                    "local_steps"):
            row[col], row[col + "_ci"] = mean_ci(r[col].tolist())
        out.append(row)
    return pd.DataFrame(out)


def _pm(mean: float, half: float, fmt: str) -> str:
    if math.isnan(mean):
        return "—"
    return format(mean, fmt) + ("" if math.isnan(half) else " ± " + format(half, fmt))


def markdown(table: pd.DataFrame, target: float) -> str:
    """The headline table as markdown (± is the 95 % CI half-width over seeds; — where nothing to show)."""
    lines = [f"| variant | seeds | final accuracy % | final loss | time to {target:.0%} (reached) | "
             "Gbit to target | slow zero-step contacts | local steps | runs on |", "|---" * 9 + "|"]
    for r in table.itertuples():
        lines.append(f"| {r.label} | {r.seeds} | {_pm(100 * r.final_accuracy, 100 * r.final_accuracy_ci, '.1f')} | "
                     f"{_pm(r.final_loss, r.final_loss_ci, '.3f')} | "
                     f"{_pm(r.time_to_target, r.time_to_target_ci, '.0f')} ({r.reached}/{r.seeds}) | "
                     f"{_pm(r.gbits_to_target, r.gbits_to_target_ci, '.1f')} | "
                     f"{_pm(100 * r.zero_step_slow, 100 * r.zero_step_slow_ci, '.1f')} % | "
                     f"{_pm(r.local_steps, r.local_steps_ci, '.0f')} | {r.devices} |")
    return "\n".join(lines)


def plot(results: pd.DataFrame, title: str, order: Sequence[str] | None = None):
    """Test accuracy and loss against simulated time, and accuracy against the bits sent: per variant the mean over
    seeds with a 95 % bootstrap CI band (:func:`qafl_core.experiments.plotting.metric_panel`); the loss axis is
    logarithmic when the values span more than a decade.

    Each seed's curve is first interpolated onto one grid of x values, inside its own range only
    (:func:`qafl_core.experiments.analysis.curves`): the seeds of a run evaluate at different simulated times, and a
    mean taken at the raw times would average different subsets of seeds from point to point.  The legend, below
    the panels, gives each variant's seed count."""
    from qafl_core.experiments import plotting

    # one archived table may serve two labels: keep them as separate runs of each label
    test = results[results.split == "test"].assign(config_hash=lambda d: d.label + "/" + d.config_hash)
    present = list(dict.fromkeys(test.label))
    order = list(order or [])
    labels = [v for v in order if v in present] + [v for v in present if v not in order]
    n_seeds = test.groupby("label").seed.nunique()
    named = {v: f"{v} ({n_seeds[v]} seed{'s' if n_seeds[v] != 1 else ''})" for v in labels}
    test = test.assign(label=test.label.map(named))
    hue_order = [named[v] for v in labels]     # every panel colours the variants in this order
    fig, axes = plotting.subplots(3, 1, width=5.0, height=3.8)
    for ax, (metric, x) in zip(axes, (("accuracy", "time"), ("loss", "time"), ("accuracy", "bits"))):
        plotting.metric_panel(ax, test, metric, x=x, hue_order=hue_order, band="ci", points=101,
                              logy="auto" if metric == "loss" else False)   # a blown-up loss would flatten the rest
        ax.get_legend().remove()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(f"{title}: mean over seeds, 95 % CI band", fontsize="medium")
    fig.tight_layout(rect=(0, 0.04 + 0.045 * math.ceil(len(hue_order) / 3), 1, 1))
    return fig


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qafl_core.experiments.paper_headline", description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=str(SPEC), help="campaign file (default: %(default)s)")
    ap.add_argument("--experiment", default="femnist300")
    ap.add_argument("--target", type=float, default=None, help="target accuracy (default: the campaign file's)")
    ap.add_argument("--out", default=str(ROOT / "figures" / "paper"), help="figure folder (default: %(default)s)")
    ap.add_argument("--no-verify-data", action="store_true", help="match archived runs on the configuration only")
    ap.add_argument("--devices", default=None,
                    help="comma-separated devices a run may come from, first found wins (default: the campaign file's)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    target = args.target if args.target is not None else float(spec.get("target", 0.4))
    results, missing, provenance = collect(spec, args.experiment, verify_data=not args.no_verify_data,
                                           devices=args.devices.split(",") if args.devices else None)
    if results.empty:
        print(f"no archived runs of {args.experiment} yet ({len(missing)} missing)")
        return 1
    table = headline(results, target, order=list(spec["variants"]))
    print(markdown(table, target))
    print(f"\nmissing ({len(missing)}): " + ", ".join(f"{label} seed {seed}" for label, seed in missing))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot(results, f"{args.experiment} ({spec['base'].get('dataset')}, paper profile)", order=list(spec["variants"]))
    fig.savefig(out / f"headline_{args.experiment}.png", dpi=120)
    metrics = {"experiment": args.experiment, "target": target, "table": json.loads(table.to_json(orient="records")),
               "missing": [list(m) for m in missing], "provenance": provenance,
               "data_verified": not args.no_verify_data}
    from qafl_core.store import atomic_write_json

    atomic_write_json(out / f"headline_{args.experiment}.metrics.json", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
