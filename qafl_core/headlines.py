"""Headline numbers of each figure — what ``<figure>.metrics.json`` records and the README quotes.

Each function reduces a figure's results table (see :mod:`qafl_core.analysis`) to a small JSON-able
dict; the claims they are compared with are in docs/experiments.md#figures-of-the-paper (e.g. Fig. 1: "convergence speed
follows the ordering of s", 27 % zero-step contacts of slow clients; Fig. 2: saturation after 10 bits;
Fig. 4: QuAFL faster than FedAvg in simulated time).  Accuracies are fractions in [0, 1]; a "final"
test metric is the mean of a run's last :data:`FINAL_WINDOW` evaluations.

Time-to-target numbers cannot mislead (issue 11, item 10): a target at or below the *starting accuracy* (the
best accuracy of any run's untrained model, its evaluation at t = 0) is refused — ``time_to_target`` is
``null`` and ``time_to_target_refused`` says why — because every run "reaches" it at once; and a speed-up is
reported only as a :func:`speedup` record that carries both final accuracies and how many runs reached the
target, with ``value`` ``null`` (and a reason) unless every run of both groups reached it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import pandas as pd

from qafl_core import analysis


#: "final" test metrics are the mean of a run's last FINAL_WINDOW evaluations (federated curves are noisy);
#: simulator statistics are cumulative, so their last value is used.
FINAL_WINDOW = 3


def table(results: pd.DataFrame, metric: str = "accuracy", split: str = "test", by: str = "label") -> dict:
    """``{group: {"mean", "std", "n"}}`` over seeds of the final value of ``metric``."""
    window = 1 if split == "sim" else FINAL_WINDOW
    return analysis.as_dict(analysis.final(results, metric, split, (by,), window), by, ("mean", "std", "n"))


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
    per_run = analysis.time_to_target(results, target, by=(by,))
    s = analysis.summarize_time_to_target(per_run, (by,))
    return analysis.as_dict(s, by, ("time_mean", "time_std", "mbit_mean", "mbit_std", "reached", "runs"))


def _ratio(a: float | None, b: float | None) -> float:
    return a / b if a is not None and b is not None and b > 0 and math.isfinite(a) and math.isfinite(b) else math.nan


def starting_accuracy(results: pd.DataFrame) -> float:
    """The best test accuracy of any run's first evaluation (its untrained model, t = 0)."""
    return float(analysis.first_values(results)["value"].max())


def target_refusal(results: pd.DataFrame, target: float) -> str | None:
    """Why ``target`` cannot be a time-to-target threshold (None when it can): at or below the starting accuracy,
    some run "reaches" it before learning anything."""
    start = starting_accuracy(results)
    if target <= start:
        return (f"target accuracy {100 * target:.1f} % is at or below the starting accuracy {100 * start:.1f} % "
                f"(the untrained model's, t = 0): time to reach it measures nothing; set a higher target_accuracy")
    return None


def time_to_target(results: pd.DataFrame, target: float, by: str = "label") -> dict[str, Any]:
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


def fig1(results: pd.DataFrame, peers: Sequence[int], labels: Sequence[str], target: float | None,
         target_fraction: float) -> dict[str, Any]:
    """Fig. 1: final accuracy per s, whether it follows the order of s, zero-step contacts of slow clients."""
    acc = means(results)
    tgt = target_accuracy(results, target, target_fraction)
    return {
        "final_accuracy": table(results),
        "final_accuracy_rank_correlation_with_s": analysis.rank_agreement(peers, [acc[lb] for lb in labels]),
        "zero_step_fraction_slow": means(results, "zero_step_fraction_slow", "sim"),
        "zero_step_fraction_fast": means(results, "zero_step_fraction_fast", "sim"),
        "steps_per_contact_slow": means(results, "steps_per_contact_slow", "sim"),
        "steps_per_contact_fast": means(results, "steps_per_contact_fast", "sim"),
        "decode_failures": means(results, "decode_failures", "sim"),
        **time_to_target(results, tgt),
    }


def fig2(results: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Fig. 2: final accuracy per b, accuracy at the same number of bits sent, bits and decode failures."""
    rows = analysis.select(results, "accuracy")
    budget = float((rows["bits_up"] + rows["bits_down"]).groupby(rows["config_hash"]).max().min())
    cur = analysis.curves(results, "accuracy", "bits", points=41, x_max=budget)
    at_budget = cur[cur["x"] >= budget * (1 - 1e-9)].groupby("label")["value"].mean()
    total = rows.assign(b=rows["bits_up"] + rows["bits_down"]).groupby("label")["b"].max() / 1e6
    acc = means(results)
    return {
        "final_accuracy": table(results),
        "equal_bits_budget_mbit": budget / 1e6,
        "accuracy_at_equal_bits": {lb: at_budget.get(lb, math.nan) for lb in labels},
        "total_mbit_sent": {lb: total.get(lb, math.nan) for lb in labels},
        "decode_failures": means(results, "decode_failures", "sim"),
        "best_by_final_accuracy": max(acc, key=acc.get),
    }


def fig3(results: pd.DataFrame, labels: Sequence[str]) -> dict[str, Any]:
    """Fig. 3: final accuracy of each averaging variant and at a common number of server steps."""
    rows = analysis.select(results, "accuracy")
    steps = float(rows.groupby("config_hash")["server_steps"].max().min())
    cur = analysis.curves(results, "accuracy", "server_steps", points=41, x_max=steps)
    at_steps = cur[cur["x"] >= steps * (1 - 1e-9)].groupby("label")["value"].mean()
    acc = means(results)
    return {"final_accuracy": table(results), "common_server_steps": steps,
            "accuracy_at_common_server_steps": {lb: at_steps.get(lb, math.nan) for lb in labels},
            "best_variant": max(acc, key=acc.get)}


def fig4(results: pd.DataFrame, quafl: str, fedavg: str, target: float | None, target_fraction: float) -> dict:
    """Fig. 4: final accuracy, time to a target accuracy, and FedAvg's time over QuAFL's (a :func:`speedup`)."""
    tgt = target_accuracy(results, target, target_fraction)
    return {"final_accuracy": table(results), **time_to_target(results, tgt),
            "speedup_quafl_over_fedavg": speedup(results, quafl, fedavg, tgt)}


def comparison(results: pd.DataFrame, targets: dict[str, float | None], target_fraction: float) -> dict[str, Any]:
    """Fig. 5 / Table 1: per dataset, final accuracy and loss and the time / bits to reach a target accuracy."""
    out: dict[str, Any] = {}
    for name, part in results.groupby("dataset", sort=False):
        tgt = target_accuracy(part, targets.get(name) if targets else None, target_fraction)
        out[str(name)] = {"final_accuracy": table(part), "final_loss": table(part, "loss"),
                          **time_to_target(part, tgt)}
    return out


def tab1_frame(results: pd.DataFrame, targets: dict[str, float | None], target_fraction: float) -> pd.DataFrame:
    """Table 1 as a tidy frame: dataset, algorithm, target, time and Mbit to target (mean ± std), reached."""
    rows = []
    for name, part in results.groupby("dataset", sort=False):
        tgt = target_accuracy(part, targets.get(name) if targets else None, target_fraction)
        refused = target_refusal(part, tgt)
        per_run = analysis.time_to_target(part, tgt)
        s = analysis.summarize_time_to_target(per_run)
        if refused:  # no time or bits to a target every run starts at
            s = s.assign(time_mean=math.nan, time_std=math.nan, mbit_mean=math.nan, mbit_std=math.nan, reached=0)
        fin = analysis.final(part, window=FINAL_WINDOW).set_index("label")
        for _, r in s.iterrows():
            rows.append({"dataset": name, "algorithm": r["label"], "target_accuracy": tgt, **r.drop("label").to_dict(),
                         "final_accuracy_mean": fin.loc[r["label"], "mean"], "final_accuracy_std": fin.loc[r["label"], "std"],
                         "target_refused": refused or ""})
    return pd.DataFrame(rows)


def _fmt(mean: float, std: float, digits: int = 0, refused: bool = False) -> str:
    if refused:
        return "—"
    if mean is None or not math.isfinite(mean):
        return "not reached"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None and math.isfinite(std) else f"{mean:.{digits}f}"


def tab1_markdown(frame: pd.DataFrame) -> str:
    """Table 1 as Markdown (time and Mbit to target, mean ± std over the seeds that reached it)."""
    lines = ["| dataset | algorithm | target acc. | time to target | Mbit to target | reached | final acc. (%) |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for _, r in frame.iterrows():
        refused = r.get("target_refused") or ""
        if refused and refused not in notes:
            notes.append(refused)
        reached = "refused¹" if refused else f"{int(r['reached'])}/{int(r['runs'])}"
        lines.append(f"| {r['dataset']} | {r['algorithm']} | {100 * r['target_accuracy']:.1f} % | "
                     f"{_fmt(r['time_mean'], r['time_std'], refused=bool(refused))} | "
                     f"{_fmt(r['mbit_mean'], r['mbit_std'], refused=bool(refused))} | {reached} | "
                     f"{_fmt(100 * r['final_accuracy_mean'], 100 * r['final_accuracy_std'], 1)} |")
    lines += [f"\n¹ {n}" for n in notes]
    return "\n".join(lines) + "\n"


def final_running_average(results: pd.DataFrame, metric: str = "grad_sq", split: str = "mean_model") -> pd.DataFrame:
    """Per label: mean ± std over seeds of ``1/T sum_t metric_t`` at the end of each run."""
    run = analysis.running_average(results, metric, split)
    last = run.groupby(["label", "seed"], sort=False).tail(1)
    return analysis.summarize(last)


def theory(conservation: pd.DataFrame, rate: pd.DataFrame, horizons: Sequence[int], peers_runs: pd.DataFrame,
           peers: Sequence[int], local_runs: pd.DataFrame, local_steps: Sequence[int], mean_steps: float,
           slow_fraction: float) -> dict[str, Any]:
    """Theory notebook: conservation residual, the T-rate slope, and the effect of s and of H."""
    res = analysis.select(conservation, "conservation_residual", "mean_model").groupby("label")["value"].max()
    avg_t = final_running_average(rate).set_index("label")["mean"]
    t_means = [avg_t.get(f"T = {t}", math.nan) for t in horizons]
    avg_s = final_running_average(peers_runs).set_index("label")["mean"]
    s_means = [avg_s.get(f"s = {s}", math.nan) for s in peers]
    avg_k = final_running_average(local_runs).set_index("label")["mean"]
    h = {}
    for k in local_steps:
        part = local_runs[local_runs["label"] == f"K = {k}"]
        slow = analysis.last_values(part, "steps_per_contact_slow", "sim", ())["value"].mean()
        fast = analysis.last_values(part, "steps_per_contact_fast", "sim", ())["value"].mean()
        h[k] = slow_fraction * slow + (1 - slow_fraction) * fast
    return {
        "max_conservation_residual": {str(k): float(v) for k, v in res.items()},
        "mean_local_steps_H": mean_steps,
        "avg_grad_sq_by_T": dict(zip(map(str, horizons), t_means)),
        "loglog_slope_vs_T": analysis.loglog_slope(horizons, t_means), "theory_slope_vs_T": -0.5,
        "avg_grad_sq_by_s": dict(zip(map(str, peers), s_means)),
        "rank_correlation_s_vs_avg_grad_sq": analysis.rank_agreement(peers, s_means),
        "measured_H_by_K": {str(k): v for k, v in h.items()},
        "avg_grad_sq_by_K": {str(k): avg_k.get(f"K = {k}", math.nan) for k in local_steps},
        "loglog_slope_vs_H": analysis.loglog_slope([h[k] for k in local_steps],
                                                   [avg_k.get(f"K = {k}", math.nan) for k in local_steps]),
    }
