"""Reductions of results tables (``qafl_core.runner.COLUMNS``) into the numbers and curves of the figures.

Every function takes the long table returned by :func:`qafl_core.experiments.common.run_variants` (one row per
evaluation point and metric, plus a ``label`` column) and works per *run* — a run is one
``config_hash`` — before aggregating over seeds, so mean ± std always means "over seeds".
The paper code's plots have these x-axes (docs/timing.md#counters-and-x-axes): simulated time, server steps, local steps and
transferred bits (``bits_up + bits_down``; 2b per interaction).

The second half holds the building blocks of every figure's headline numbers (each figure's own reduction is
its module's ``headline``, e.g. :func:`qafl_core.experiments.fig1_peers.headline`).  Accuracies are fractions
in [0, 1]; a "final" test metric is the mean of a run's last :data:`FINAL_WINDOW` evaluations.

Time-to-target numbers cannot mislead (issue 11, item 10): a target at or below the *starting accuracy* (the
best accuracy of any run's untrained model, its evaluation at t = 0) is refused — ``time_to_target`` is
``null`` and ``time_to_target_refused`` says why — because every run "reaches" it at once; and a speed-up is
reported only as a :func:`speedup` record that carries both final accuracies and how many runs reached the
target, with ``value`` ``null`` (and a reason) unless every run of both groups reached it.

The module is longer than most (~280 lines): per-run reductions and the headline blocks built on them are one
layer, used together by every figure module.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

RUN = "config_hash"
#: x-axis name -> how to compute it from a results table.
X_AXES = ("time", "server_steps", "local_steps", "bits")


def _x(df: pd.DataFrame, x: str) -> pd.Series:
    if x == "bits":
        return df["bits_up"] + df["bits_down"]
    if x not in df.columns:
        raise ValueError(f"x: unknown axis {x!r}; expected one of {', '.join(X_AXES)}")
    return df[x]


def select(df: pd.DataFrame, metric: str, split: str = "test") -> pd.DataFrame:
    """Rows of one metric, with an ``x``-ready copy; a ValueError names what is missing."""
    rows = df[(df["split"] == split) & (df["metric"] == metric)]
    if rows.empty:
        have = sorted(set(zip(df["split"], df["metric"]))) if len(df) else []
        raise ValueError(f"metric: no {split}/{metric} rows in the results (have {have})")
    return rows


def curves(df: pd.DataFrame, metric: str = "accuracy", x: str = "time", split: str = "test",
           by: Sequence[str] = ("label",), points: int = 60, x_max: float | None = None) -> pd.DataFrame:
    """Each run's curve linearly interpolated onto one grid of ``points`` x values.

    Runs are only reported inside their own x range (a run that sent fewer bits stops earlier), so
    averaging over seeds never extrapolates.  Returns columns ``[*by, "seed", "x", "value"]``.
    """
    rows = select(df, metric, split)
    xs = _x(rows, x)
    hi = float(xs.max()) if x_max is None else float(x_max)
    grid = np.linspace(0.0, hi, points)
    out = []
    for _, run in rows.assign(_x=xs).groupby(RUN, sort=False):
        run = run.sort_values("_x")
        rx, ry = run["_x"].to_numpy(float), run["value"].to_numpy(float)
        inside = (grid >= rx.min()) & (grid <= rx.max())
        vals = np.interp(grid[inside], rx, ry)
        keys = {k: run[k].iloc[0] for k in by}
        out.append(pd.DataFrame({**keys, "seed": run["seed"].iloc[0], "x": grid[inside], "value": vals}))
    return pd.concat(out, ignore_index=True)


def last_values(df: pd.DataFrame, metric: str = "accuracy", split: str = "test",
                by: Sequence[str] = ("label",), window: int = 1) -> pd.DataFrame:
    """The final value of ``metric`` in each run — the mean of its last ``window`` evaluations, which
    steadies noisy federated curves: columns ``[*by, "seed", config_hash, "value", "time"]``."""
    rows = select(df, metric, split).sort_values(["time", "server_steps"])
    # the initial evaluation (untrained model) never counts towards a final value, unless it is all there is
    first = rows.groupby(RUN, sort=False).cumcount() == 0
    only = rows.groupby(RUN, sort=False)["value"].transform("size") == 1
    rows = rows[~first | only]
    tail = rows.groupby(RUN, sort=False).tail(max(1, int(window)))
    value = tail.groupby(RUN, sort=False)["value"].mean()
    last = tail.groupby(RUN, sort=False).tail(1).set_index(RUN)
    last = last.assign(value=value.reindex(last.index)).reset_index()
    return last[[*by, "seed", RUN, "value", "time"]].reset_index(drop=True)


def first_values(df: pd.DataFrame, metric: str = "accuracy", split: str = "test",
                 by: Sequence[str] = ("label",)) -> pd.DataFrame:
    """The first evaluation of ``metric`` in each run (the untrained model's, at t = 0): columns
    ``[*by, "seed", config_hash, "value", "time"]``."""
    rows = select(df, metric, split).sort_values(["time", "server_steps"])
    first = rows.groupby(RUN, sort=False).head(1)
    return first[[*by, "seed", RUN, "value", "time"]].reset_index(drop=True)


def summarize(per_run: pd.DataFrame, by: Sequence[str] = ("label",), value: str = "value") -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for a single seed) and count over seeds of a per-run column."""
    g = per_run.groupby(list(by), sort=False)[value]
    return pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=1), "n": g.count()}).reset_index()


def final(df: pd.DataFrame, metric: str = "accuracy", split: str = "test", by: Sequence[str] = ("label",),
          window: int = 1) -> pd.DataFrame:
    """Mean ± std over seeds of the final ``metric`` of each group (see :func:`last_values` for ``window``)."""
    return summarize(last_values(df, metric, split, by, window), by)


def time_to_target(df: pd.DataFrame, target: float, metric: str = "accuracy", split: str = "test",
                   by: Sequence[str] = ("label",), higher_is_better: bool = True) -> pd.DataFrame:
    """First evaluation at which each run reaches ``target``: simulated time, bits and Mbit sent, server steps.

    The evaluations of a run are taken in order of (time, server steps), so that of two evaluations at the same
    simulated time the earlier step counts.  Runs that never reach it get NaN (and ``reached = False``) — never a
    made-up number.
    """
    rows = select(df, metric, split).sort_values(["time", "server_steps"])
    out = []
    for _, run in rows.groupby(RUN, sort=False):
        hit = run[run["value"] >= target] if higher_is_better else run[run["value"] <= target]
        rec = {k: run[k].iloc[0] for k in by}
        rec.update(seed=run["seed"].iloc[0], reached=not hit.empty)
        first = hit.iloc[0] if not hit.empty else None
        rec["time"] = float(first["time"]) if first is not None else math.nan
        rec["bits"] = float(first["bits_up"] + first["bits_down"]) if first is not None else math.nan
        rec["mbit"] = rec["bits"] / 1e6
        rec["server_steps"] = float(first["server_steps"]) if first is not None else math.nan
        out.append(rec)
    return pd.DataFrame(out)


def summarize_time_to_target(per_run: pd.DataFrame, by: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Mean ± std over the seeds that reached the target, and how many did (``reached`` of ``runs``)."""
    g = per_run.groupby(list(by), sort=False)
    res = pd.DataFrame({"time_mean": g["time"].mean(), "time_std": g["time"].std(ddof=1),
                        "mbit_mean": g["mbit"].mean(), "mbit_std": g["mbit"].std(ddof=1),
                        "reached": g["reached"].sum().astype(int), "runs": g["reached"].count()})
    return res.reset_index()


def running_average(df: pd.DataFrame, metric: str = "grad_sq", split: str = "mean_model",
                    by: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Per run, ``1/T sum_{t<T} value_t`` over the evaluation points (Theorem 4.2's left-hand side when the
    run is evaluated once per server step).  Columns ``[*by, "seed", "server_steps", "value"]``."""
    rows = select(df, metric, split).sort_values(["time", "server_steps"])
    out = []
    for _, run in rows.groupby(RUN, sort=False):
        run = run.drop_duplicates("server_steps", keep="last")
        avg = run["value"].expanding().mean().to_numpy()
        keys = {k: run[k].iloc[0] for k in by}
        out.append(pd.DataFrame({**keys, "seed": run["seed"].iloc[0],
                                 "server_steps": run["server_steps"].to_numpy(), "value": avg}))
    return pd.concat(out, ignore_index=True)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x over the positive pairs (NaN if fewer than two)."""
    xa, ya = np.asarray(x, float), np.asarray(y, float)
    ok = (xa > 0) & (ya > 0) & np.isfinite(xa) & np.isfinite(ya)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(xa[ok]), np.log(ya[ok]), 1)[0])


def rank_agreement(order: Sequence[float], values: Sequence[float]) -> float:
    """Spearman correlation between an intended ordering (e.g. s) and measured values (NaN if undefined)."""
    a, b = pd.Series(list(order), dtype=float), pd.Series(list(values), dtype=float)
    if len(a) < 2 or a.nunique() < 2 or b.nunique() < 2:
        return math.nan
    return float(a.rank().corr(b.rank()))


def last_sim(df: pd.DataFrame, metric: str, by: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Mean ± std over seeds of the final (cumulative) simulator statistic ``metric`` (split ``sim``)."""
    return final(df, metric, "sim", by)


def as_dict(table: pd.DataFrame, key: str, cols: Sequence[str] = ("mean", "std")) -> dict:
    """``{row[key]: {col: value}}`` — the JSON shape of headline tables."""
    return {str(r[key]): {c: r[c] for c in cols} for _, r in table.iterrows()}


# ---------------------------------------------------------------------- headline building blocks
#: "final" test metrics are the mean of a run's last FINAL_WINDOW evaluations (federated curves are noisy);
#: simulator statistics are cumulative, so their last value is used.
FINAL_WINDOW = 3


def table(results: pd.DataFrame, metric: str = "accuracy", split: str = "test", by: str = "label") -> dict:
    """``{group: {"mean", "std", "n"}}`` over seeds of the final value of ``metric``."""
    window = 1 if split == "sim" else FINAL_WINDOW
    return as_dict(final(results, metric, split, (by,), window), by, ("mean", "std", "n"))


def means(results: pd.DataFrame, metric: str = "accuracy", split: str = "test", by: str = "label") -> dict:
    """``{group: mean final value}``; groups without the metric (e.g. no fast client) are left out."""
    if split == "sim" and not ((results["split"] == split) & (results["metric"] == metric)).any():
        return {}
    return {k: v["mean"] for k, v in table(results, metric, split, by).items()}


def target_accuracy(results: pd.DataFrame, target: float | None, fraction: float) -> float:
    """``target`` if given, else ``fraction`` x the best mean final accuracy of any group (relative target)."""
    if target is not None:
        return float(target)
    return float(fraction) * max(means(results).values())


def time_to(results: pd.DataFrame, target: float, by: str = "label") -> dict:
    """``{group: {"time_mean", "time_std", "mbit_mean", "mbit_std", "reached", "runs"}}`` to reach ``target``."""
    per_run = time_to_target(results, target, by=(by,))
    s = summarize_time_to_target(per_run, (by,))
    return as_dict(s, by, ("time_mean", "time_std", "mbit_mean", "mbit_std", "reached", "runs"))


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b is not None and b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def starting_accuracy(results: pd.DataFrame) -> float:
    """The best test accuracy of any run's first evaluation (its untrained model, t = 0)."""
    return float(first_values(results)["value"].max())


def target_refusal(results: pd.DataFrame, target: float) -> str | None:
    """Why ``target`` cannot be a time-to-target threshold (None when it can): at or below the starting accuracy,
    some run "reaches" it before learning anything."""
    start = starting_accuracy(results)
    if target <= start:
        return (f"target accuracy {100 * target:.1f} % is at or below the starting accuracy {100 * start:.1f} % "
                f"(the untrained model's, t = 0): time to reach it measures nothing; set a higher target_accuracy")
    return None


def target_summary(results: pd.DataFrame, target: float, by: str = "label") -> dict[str, Any]:
    """``target_accuracy``, ``starting_accuracy``, ``time_to_target`` (:func:`time_to`, or None when refused)
    and ``time_to_target_refused`` (the reason, or None): the block every figure's headline carries."""
    refused = target_refusal(results, target)
    return {"target_accuracy": target, "starting_accuracy": starting_accuracy(results),
            "time_to_target": None if refused else time_to(results, target, by), "time_to_target_refused": refused}


def speedup(results: pd.DataFrame, fast: str, slow: str, target: float, by: str = "label") -> dict[str, Any]:
    """``slow``'s time to ``target`` over ``fast``'s, with both final accuracies beside it.

    ``value`` is None (``reason`` says why) when the target is refused (:func:`target_refusal`) or when either
    group did not reach it in every run (means over different subsets of seeds are not comparable).
    ``note`` flags a group that gets to the target sooner but finishes lower.
    """
    acc = means(results)
    out: dict[str, Any] = {"value": None, "of": fast, "over": slow, "target_accuracy": target,
                           "final_accuracy": {fast: acc.get(fast, math.nan), slow: acc.get(slow, math.nan)},
                           "time_to_target": {fast: None, slow: None}, "reached": {fast: None, slow: None},
                           "reason": target_refusal(results, target), "note": ""}
    if out["reason"] is not None:
        return out
    ttt = time_to(results, target, by)
    for g in (fast, slow):
        t = ttt.get(g, {})
        out["time_to_target"][g] = t.get("time_mean")
        out["reached"][g] = f"{int(t.get('reached', 0))}/{int(t.get('runs', 0))}"
    short = [g for g in (fast, slow) if not ttt.get(g) or ttt[g]["reached"] < ttt[g]["runs"]]
    if short:
        out["reason"] = ("not every run reached the target: " +
                         ", ".join(f"{g} {out['reached'][g] or '0/0'}" for g in short))
        return out
    out["value"] = _ratio(out["time_to_target"][slow], out["time_to_target"][fast])
    first, second = (fast, slow) if out["value"] >= 1 else (slow, fast)
    if acc.get(first, math.nan) < acc.get(second, math.nan):
        out["note"] = (f"{first} reaches {100 * target:.1f} % sooner but finishes lower: {100 * acc[first]:.1f} % "
                       f"against {100 * acc[second]:.1f} %")
    return out


def final_running_average(results: pd.DataFrame, metric: str = "grad_sq", split: str = "mean_model") -> pd.DataFrame:
    """Per label: mean ± std over seeds of ``1/T sum_t metric_t`` at the end of each run."""
    run = running_average(results, metric, split)
    last = run.groupby(["label", "seed"], sort=False).tail(1)
    return summarize(last)
