"""Tables of the speed-heterogeneity sweeps (README "Speed heterogeneity", ``configs/speed/``).

``python3 -m qafl_core.speed_report --config configs/speed/quadratic.yaml --out runs/speed_quadratic``

reads what ``qafl sweep --config FILE --out DIR`` wrote (``DIR/results.csv``) and prints one markdown row per grid
point: for each metric, the mean ± std over seeds of each run's average over the evaluations in the last
``--tail`` fraction of its horizon (default 0.5: the second half, where the quadratic runs are stationary).
The quadratic's rows also say whether the slow clients are in the heavy-tailed regime of
:func:`qafl_core.speed.heavy_tailed` (``stuck``), where their long-run steps per contact are zero.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from qafl_core.speed import heavy_tailed

DEFAULT_METRICS = {"quadratic": ("test/bias_fast", "test/dist_opt", "sim/steps_per_contact_slow",
                                 "sim/steps_per_contact_fast"),
                   "default": ("test/accuracy", "clients/accuracy_p10", "clients/accuracy_p50", "clients/accuracy_p90")}


def tail_means(results: pd.DataFrame, metrics: Sequence[str], tail: float) -> pd.DataFrame:
    """One row per run (``run`` column of a sweep's results): the mean of each ``split/metric`` over the
    evaluations at times ``>= (1 - tail) * the run's last evaluation time``, and ``diverged`` (0/1)."""
    if not 0 < tail <= 1:
        raise ValueError(f"--tail: expected a fraction in (0, 1], got {tail}")
    rows = []
    for run, df in results.groupby("run", sort=True):
        end = float(df.time.max())
        late = df[df.time >= (1 - tail) * end - 1e-9]
        row = {"run": run, "seed": int(df.seed.iloc[0]),
               "diverged": float(((df.split == "status") & (df.metric == "diverged")).any())}
        for name in metrics:
            split, _, metric = name.partition("/")
            v = late[(late.split == split) & (late.metric == metric)].value
            row[name] = float(v.mean()) if len(v) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(values: pd.Series, digits: int = 3) -> str:
    """``mean ± std`` over seeds (std with ddof 1; just the mean for one seed; ``—`` for none)."""
    v = values.dropna()
    if len(v) > 1:
        return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"
    return f"{v.mean():.{digits}f}" if len(v) else "—"


def _short(label) -> str:
    """A grid label as shown: a bundle axis (``sit=1.0,time_limit=...``) by its first key only."""
    return str(label).split(",")[0] if isinstance(label, str) and "=" in label else str(label)


def table(config: str | Path, out: str | Path, tail: float = 0.5, metrics: Sequence[str] | None = None,
          seeds: int | None = None, pivot: str | None = None) -> str:
    """The markdown table of the sweep of ``config`` whose outputs are in ``out`` (see module docstring).

    With ``pivot`` (a grid key), one row per value of the other grid keys and one column per value of ``pivot``,
    each cell ``metric1 / metric2 / ...`` (2 decimals), with ``(d div.)`` when d of its runs diverged."""
    from qafl_core.store import read_results_csv
    from qafl_core.sweep import expand, load_sweep_file

    path = Path(out) / "results.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep results; run qafl sweep --config {config} --out {out} first")
    results = read_results_csv(path)
    base, grid = load_sweep_file(str(config))
    n_seeds = seeds if seeds is not None else int(results.seed.nunique())
    runs = expand({**base, "progress": False}, grid, n_seeds, str(config))
    if len(runs) != results.run.nunique():
        raise ValueError(f"{path}: has {results.run.nunique()} runs, {config} with {n_seeds} seeds has {len(runs)}; "
                         f"pass --seeds")
    kind = "quadratic" if runs[0][1].dataset == "quadratic" else "default"
    metrics = list(metrics or DEFAULT_METRICS[kind])
    per_run = tail_means(results, metrics, tail)
    keys = list(grid)
    labels = pd.DataFrame([{"run": k, **lab} for k, (lab, _) in enumerate(runs)])
    per_run = labels.merge(per_run, on="run")
    if kind == "quadratic":
        per_run["stuck"] = [heavy_tailed(c.slow_mean, c.round_sit + c.swt, c.clients_per_round / c.num_clients)
                            for _, c in runs]
        keys_extra = ["stuck"]
    else:
        keys_extra = []
    if pivot is not None:
        return _pivoted(per_run, keys, keys_extra, metrics, pivot)
    head = keys + keys_extra + ["seeds", "diverged"] + [m.split("/", 1)[1] for m in metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point, g in per_run.groupby(keys, sort=False):
        point = point if isinstance(point, tuple) else (point,)
        cells = [_short(v) for v in point] + [("yes" if g[k].iloc[0] else "no") for k in keys_extra]
        cells += [str(len(g)), str(int(g.diverged.sum()))] + [_cell(g[m]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pivoted(per_run: pd.DataFrame, keys: list[str], keys_extra: list[str], metrics: Sequence[str], pivot: str) -> str:
    if pivot not in keys:
        raise ValueError(f"--pivot: {pivot!r} is not a grid key of the sweep ({', '.join(keys)})")
    rest = [k for k in keys if k != pivot]
    columns = list(dict.fromkeys(per_run[pivot]))
    head = rest + keys_extra + ["seeds"] + [str(c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for point, g in (per_run.groupby(rest, sort=False) if rest else [((), per_run)]):
        point = point if isinstance(point, tuple) else (point,)
        cells = [_short(v) for v in point] + [("yes" if g[k].iloc[0] else "no") for k in keys_extra]
        cells.append(str(g.groupby(pivot).size().min()))
        for c in columns:
            h = g[g[pivot] == c]
            div = int(h.diverged.sum())
            cells.append(" / ".join(_cell(h[m], 2) for m in metrics) + (f" ({div} div.)" if div else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m qafl_core.speed_report", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the sweep's YAML file (configs/speed/*.yaml)")
    p.add_argument("--out", required=True, help="the sweep's output directory (qafl sweep --out)")
    p.add_argument("--tail", type=float, default=0.5, help="average over this last fraction of each run (default 0.5)")
    p.add_argument("--seeds", type=int, default=None, help="the sweep's --seeds (default: the seeds in the results)")
    p.add_argument("--metric", action="append", metavar="SPLIT/METRIC", help="metric to report (repeatable)")
    p.add_argument("--pivot", metavar="KEY", help="one column per value of this grid key (e.g. speed_correction)")
    args = p.parse_args(argv)
    try:
        print(table(args.config, args.out, args.tail, args.metric, args.seeds, args.pivot))
    except (ValueError, FileNotFoundError) as exc:
        print(f"qafl: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
