"""Table 1 — simulated time and bits to reach a target accuracy, for each dataset and algorithm of Fig. 5.

The simulated time and the data sent (Mbit, up + down) until the server model first reaches the target accuracy,
mean ± std over the seeds that reached it, and how many did.  The runs are Fig. 5's
(:func:`qafl_core.experiments.fig5_vs_fedbuff.runs`): with the same parameters they come from the run cache.
The target is ``target_accuracy`` per dataset, or ``target_fraction`` × the best final accuracy of any algorithm
on that dataset; a target at or below the starting accuracy is refused (:func:`analysis.target_refusal`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from qafl_core.experiments import analysis, fig5_vs_fedbuff, plotting

NAME = "tab1_time_to_accuracy"
PARAMETERS = fig5_vs_fedbuff.PARAMETERS
choices = fig5_vs_fedbuff.choices
runs = fig5_vs_fedbuff.runs
headline = fig5_vs_fedbuff.headline


def frame(results: pd.DataFrame, params: Mapping[str, Any]) -> pd.DataFrame:
    """Table 1 as a tidy frame: dataset, algorithm, target, time and Mbit to target (mean ± std), reached."""
    targets, fraction = params["target_accuracy"], params["target_fraction"]
    rows = []
    for name, part in results.groupby("dataset", sort=False):
        tgt = analysis.target_accuracy(part, targets.get(name) if targets else None, fraction)
        refused = analysis.target_refusal(part, tgt)
        per_run = analysis.time_to_target(part, tgt)
        s = analysis.summarize_time_to_target(per_run)
        if refused:  # no time or bits to a target every run starts at
            s = s.assign(time_mean=math.nan, time_std=math.nan, mbit_mean=math.nan, mbit_std=math.nan, reached=0)
        fin = analysis.final(part, window=analysis.FINAL_WINDOW).set_index("label")
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


def markdown(table: pd.DataFrame) -> str:
    """Table 1 as Markdown (time and Mbit to target, mean ± std over the seeds that reached it)."""
    lines = ["| dataset | algorithm | target acc. | time to target | Mbit to target | reached | final acc. (%) |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for _, r in table.iterrows():
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


def save_table(table: pd.DataFrame, output_dir: str) -> list[str]:
    """Write ``tab1_time_to_accuracy.csv`` and ``.md`` to ``output_dir`` (atomically); returns their names."""
    from pathlib import Path

    from qafl_core.store import atomic_write

    atomic_write(Path(output_dir) / f"{NAME}.csv", table.to_csv(index=False).encode())
    atomic_write(Path(output_dir) / f"{NAME}.md", markdown(table).encode())
    return [f"{NAME}.csv", f"{NAME}.md"]


def plot(table: pd.DataFrame, params: Mapping[str, Any]):
    """Bars of the time (left) and the bits (right) to the target, per algorithm and dataset."""
    fig, axes = plotting.subplots(2)
    plotting.bar_panel(axes[0], table, x="algorithm", y="time_mean", err="time_std", hue="dataset",
                       ylabel="simulated time to target (units)", title="time to target accuracy", rotate=30)
    plotting.bar_panel(axes[1], table, x="algorithm", y="mbit_mean", err="mbit_std", hue="dataset",
                       ylabel="data sent to target (Mbit)", title="bits to target accuracy", rotate=30)
    plotting.suptitle(fig, "Table 1 — time and bits to target (" + ", ".join(c.label for c in choices(params)) + ")",
                      "missing bar = target not reached; " + plotting.band_note(len(params["seeds"])))
    return fig
