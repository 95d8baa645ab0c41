"""Heterogeneity experiment (beyond the paper): QuAFL, FedAvg and FedBuff as data and client heterogeneity grow.

The paper (Zakerinia, Talaei, Nadiradze, Alistarh, "Communication-Efficient Federated Learning With Data and
Client Heterogeneity", AISTATS 2024, arXiv:2206.10032) is about both kinds of heterogeneity but varies neither
systematically.  This experiment crosses them on a 3 x 3 grid:

* **data**: ``partition: dirichlet`` with ``dirichlet_alpha`` α (label skew, Dir(α) shares of each class over the
  clients; α = 100 is close to i.i.d., α = 0.1 gives clients with one or two labels; :mod:`qafl_core.data.partition`);
* **clients**: the paper's two speed classes (``timing: exponential``, ``slow_fraction`` of the clients slow) with
  the slow/fast ratio of mean step times ``slow_mean / fast_mean`` ∈ {1, 4, 16}, ``fast_mean`` kept fixed
  (docs/timing.md), so a larger ratio only slows the slow clients down.

Headline numbers per cell and algorithm, mean ± std over seeds (:func:`headline`):

* ``accuracy_at_time``: server-model test accuracy at the fixed simulated time ``at_time``, the mean of the
  run's last :data:`qafl_core.analysis.FINAL_WINDOW` evaluations at or before it (the "final accuracy"
  convention of the other figures, cut at ``at_time``; the t = 0 evaluation counts only when it is the only
  one, e.g. a FedAvg run whose first round ends after ``at_time``);
* ``accuracy_p10_at_time``: the same for the 10th percentile over clients of each client's own test accuracy
  (rows ``split=clients``, as LEAF reports; absent when ``eval_max_samples`` subsamples the test set);
* ``time_to_target``: simulated time of the first evaluation at or above ``target_accuracy``, mean ± std over
  the seeds that reached it, with ``reached`` = how many of ``runs`` did; refused (null, with the reason)
  when the target is at or below the untrained model's accuracy (:func:`qafl_core.analysis.target_refusal`).

Layout: :func:`runs` (the grid for a params dict), :func:`collect` (run or load them, one tidy table with the
cell columns), :func:`plot`, :func:`headline` (tidy frame + JSON dict), :func:`markdown` and
:func:`save_tables`.  Runs go through :func:`qafl_core.experiments.common.run_grid` (cache, backends).  The module is a
little over 250 lines because it holds the whole experiment (one module per figure: grid, numbers, figure).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from qafl_core.experiments import analysis, common, plotting
from qafl_core.store import atomic_write

FIGURE = NAME = "heterogeneity"
SUBJECTS = ("fmnist",)
PARAMETERS = ("dataset", "fallback_dataset", "dataset_options", "model", "seeds", "num_clients", "clients_per_round",
              "local_steps", "variants", "dirichlet_alphas", "speed_ratios", "slow_fraction", "fast_mean", "lattice_eps",
              "sit", "swt", "lr", "batch_size", "time_limit", "eval_every", "eval_max_samples", "at_time",
              "target_accuracy", "target_fraction", "extra")
#: the cell and algorithm columns :func:`collect` adds to the results table
CELL = ("dirichlet_alpha", "speed_ratio", "variant")
#: config keys the notebook passes through to every run (per-dataset mappings allowed, see common.base_config)
BASE_KEYS = ("lr", "model", "num_clients", "clients_per_round", "local_steps", "batch_size", "lattice_eps",
             "slow_fraction", "fast_mean", "sit", "swt", "time_limit", "eval_every", "eval_max_samples")


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The dataset the experiment uses with ``params`` (one), as ``qafl reproduce`` plans it."""
    return [choice(params)]


def choice(params: Mapping[str, Any]) -> common.DatasetChoice:
    """The dataset of the experiment: the same choice ``qafl reproduce`` plans (:func:`common.planned_choices`)."""
    return common.subject_choice(params, SUBJECTS)


def cell_label(variant: str, alpha: float, ratio: float) -> str:
    """Curve label of one run group, e.g. ``"QuAFL 32-bit, α = 0.1, slow/fast = 4"``."""
    return f"{variant}, α = {alpha:g}, slow/fast = {ratio:g}"


def runs(params: Mapping[str, Any], data: common.DatasetChoice | None = None) -> list[common.Run]:
    """Every run of the grid: dirichlet_alphas x speed_ratios x variants x seeds (in that nesting order).

    Args:
        params: the notebook parameters (``notebooks/params/heterogeneity.<profile>.yaml``).
        data: the dataset choice (default :func:`choice`).

    Raises:
        ValueError: a bad grid value or config key, naming it.
    """
    data = data or choice(params)
    alphas = [float(a) for a in params["dirichlet_alphas"]]
    ratios = [float(r) for r in params["speed_ratios"]]
    for name, values in (("dirichlet_alphas", alphas), ("speed_ratios", ratios)):
        if not values or len(set(values)) != len(values):
            raise ValueError(f"{name}: expected distinct values, got {params[name]!r}")
    if min(ratios) < 1:
        raise ValueError(f"speed_ratios: slow/fast mean step-time ratios must be >= 1, got {params['speed_ratios']!r}")
    base = common.base_config(data, **common.forwarded(params, [k for k in BASE_KEYS if k in params]))
    fast = float(base.get("fast_mean", 2.0))
    grid: dict[str, dict[str, Any]] = {}
    for alpha in alphas:
        for ratio in ratios:
            for variant, over in common.spec_grid(common.per_dataset(params["variants"], data.name, "variants")).items():
                grid[cell_label(variant, alpha, ratio)] = {**over, "partition": "dirichlet", "dirichlet_alpha": alpha,
                                                           "timing": "exponential", "slow_mean": fast * ratio}
    return common.variants(base, grid, params["seeds"])


def variant_name(cfg) -> str:
    """``"QuAFL 32-bit"`` / ``"QuAFL lattice:12"`` of a config (the labels of :func:`common.parse_variant`)."""
    comp = "32-bit" if cfg.quantizer == "identity" else f"{cfg.quantizer}:{cfg.bits}"
    return f"{common.ALGORITHM_NAMES.get(cfg.algorithm, cfg.algorithm)} {comp}"


def collect(grid: Sequence[common.Run], cache_dir: str | os.PathLike | None = None, **settings: Any) -> pd.DataFrame:
    """Run (or load from the cache) every run; one long table with ``label`` and the :data:`CELL` columns.
    ``settings``: :func:`qafl_core.experiments.common.run_grid`'s ``backend``, ``address``, ``num_threads``."""
    frames = common.run_grid([r.config for r in grid], cache_dir=cache_dir, **settings)
    parts = [df.assign(label=r.label, dirichlet_alpha=float(r.config.dirichlet_alpha),
                       speed_ratio=float(r.config.slow_mean) / float(r.config.fast_mean),
                       variant=variant_name(r.config)) for r, df in zip(grid, frames)]
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------- headline numbers
def _at_time(results: pd.DataFrame, at_time: float, metric: str, split: str) -> pd.DataFrame:
    """Mean ± std over seeds, per cell, of the mean of each run's last FINAL_WINDOW evaluations at time <= at_time."""
    rows = results[results["time"] <= float(at_time) + 1e-9]
    per_run = analysis.last_values(rows, metric, split, CELL, analysis.FINAL_WINDOW)
    return analysis.summarize(per_run, CELL)


def _has(results: pd.DataFrame, metric: str, split: str) -> bool:
    return bool(((results["split"] == split) & (results["metric"] == metric)).any())


def headline(results: pd.DataFrame, at_time: float, target: float | None,
             target_fraction: float = 0.8) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per cell and algorithm: accuracy and p10 client accuracy at ``at_time``, time to ``target`` (see module doc).

    Args:
        results: :func:`collect`'s table (columns :data:`CELL`, ``label``, ``seed`` and the runner's).
        at_time: the fixed simulated time.
        target: target accuracy (fraction); None: ``target_fraction`` x the best mean final accuracy of any group.

    Returns:
        ``(frame, record)``: ``frame`` has one row per (dirichlet_alpha, speed_ratio, variant) with
        ``accuracy_at_time_{mean,std}``, ``accuracy_p10_at_time_{mean,std}``, ``time_to_target_{mean,std}``,
        ``reached``, ``runs``; ``record`` is the JSON headline (``cells[α][ratio][variant]``, the target block
        of the other figures, and ``final_accuracy`` per label).
    """
    tgt = analysis.target_accuracy(results, target, target_fraction)
    block = analysis.target_summary(results, tgt)            # target, starting accuracy, refusal (by label)
    refused = block["time_to_target_refused"]
    acc = _at_time(results, at_time, "accuracy", "test")
    frame = acc.rename(columns={"mean": "accuracy_at_time_mean", "std": "accuracy_at_time_std", "n": "seeds"})
    if _has(results, "accuracy_p10", "clients"):
        p10 = _at_time(results, at_time, "accuracy_p10", "clients")
        p10 = p10.rename(columns={"mean": "accuracy_p10_at_time_mean", "std": "accuracy_p10_at_time_std"})
        frame = frame.merge(p10.drop(columns="n"), on=list(CELL), how="left")
    else:  # per-client metrics need the whole test set (eval_max_samples: null)
        frame = frame.assign(accuracy_p10_at_time_mean=math.nan, accuracy_p10_at_time_std=math.nan)
    ttt = analysis.summarize_time_to_target(analysis.time_to_target(results, tgt, by=CELL), CELL)
    ttt = ttt[[*CELL, "time_mean", "time_std", "reached", "runs"]].rename(
        columns={"time_mean": "time_to_target_mean", "time_std": "time_to_target_std"})
    frame = frame.merge(ttt, on=list(CELL), how="left")
    if refused:
        frame = frame.assign(time_to_target_mean=math.nan, time_to_target_std=math.nan, reached=0)
    frame = frame.assign(at_time=float(at_time), target_accuracy=tgt, target_refused=refused or "")
    order = {v: k for k, v in enumerate(dict.fromkeys(results["variant"]))}   # the params' variant order
    frame = frame.sort_values(["dirichlet_alpha", "speed_ratio", "variant"], key=lambda c: c.map(order)
                              if c.name == "variant" else c).reset_index(drop=True)
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for _, r in frame.iterrows():
        cells.setdefault(f"{r['dirichlet_alpha']:g}", {}).setdefault(f"{r['speed_ratio']:g}", {})[r["variant"]] = {
            "accuracy_at_time": {"mean": r["accuracy_at_time_mean"], "std": r["accuracy_at_time_std"],
                                 "n": int(r["seeds"])},
            "accuracy_p10_at_time": {"mean": r["accuracy_p10_at_time_mean"], "std": r["accuracy_p10_at_time_std"]},
            "time_to_target": None if refused else {"mean": r["time_to_target_mean"], "std": r["time_to_target_std"]},
            "reached": None if refused else f"{int(r['reached'])}/{int(r['runs'])}",
            "every_seed_reached": None if refused else bool(r["reached"] == r["runs"]),
        }
    record = {"at_time": float(at_time), "target_accuracy": tgt, "starting_accuracy": block["starting_accuracy"],
              "time_to_target_refused": refused, "cells": cells,
              "final_accuracy": analysis.table(results)}
    return frame, record


def _pm(mean: float, std: float, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{scale * mean:.{digits}f}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown(frame: pd.DataFrame) -> str:
    """The headline frame as a Markdown table (accuracies in %, time to target with how many seeds reached it;
    "refused¹" and a footnote when the target is at or below the untrained model's accuracy)."""
    t, at = frame["target_accuracy"].iloc[0], frame["at_time"].iloc[0]
    refused = str(frame["target_refused"].iloc[0] or "") if "target_refused" in frame else ""
    lines = [f"| α | slow/fast | algorithm | accuracy at t = {at:g} (%) | p10 client accuracy at t = {at:g} (%) | "
             f"time to {100 * t:.0f} % | reached |", "|---|---|---|---|---|---|---|"]
    for _, r in frame.iterrows():
        ttt = "not reached" if r["reached"] == 0 else _pm(r["time_to_target_mean"], r["time_to_target_std"], digits=0)
        reached = f"{int(r['reached'])}/{int(r['runs'])}"
        if refused:
            ttt, reached = "—", "refused¹"
        lines.append(f"| {r['dirichlet_alpha']:g} | {r['speed_ratio']:g} | {r['variant']} | "
                     f"{_pm(r['accuracy_at_time_mean'], r['accuracy_at_time_std'], 100)} | "
                     f"{_pm(r['accuracy_p10_at_time_mean'], r['accuracy_p10_at_time_std'], 100)} | {ttt} | {reached} |")
    if refused:
        lines.append(f"\n¹ {refused}")
    return "\n".join(lines) + "\n"


def save_tables(frame: pd.DataFrame, output_dir: str | os.PathLike) -> list[Path]:
    """``heterogeneity.csv`` (the tidy frame) and ``heterogeneity.md`` (:func:`markdown`), written atomically."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{FIGURE}.csv", out / f"{FIGURE}.md"]
    atomic_write(paths[0], frame.to_csv(index=False).encode())
    atomic_write(paths[1], markdown(frame).encode())
    return paths


# ---------------------------------------------------------------------- figure
def plot(results: pd.DataFrame, frame: pd.DataFrame, data: common.DatasetChoice, params: Mapping[str, Any]):
    """Top: a 3 x 3 grid (rows α, columns slow/fast ratio) of accuracy against simulated time, one curve per
    algorithm (mean ± 1 std over seeds), the dashed line at ``at_time``; bottom rows: heatmaps, per algorithm,
    of the accuracy and of the p10 client accuracy at ``at_time`` (mean over seeds).  Returns the figure."""
    import seaborn as sns

    alphas = sorted(results["dirichlet_alpha"].unique())
    ratios = sorted(results["speed_ratio"].unique())
    order = list(dict.fromkeys(results["variant"]))
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    ncols = max(len(ratios), len(order))
    fig, axes = plotting.subplots(ncols, len(alphas) + 2, width=4.2, height=3.2)
    at = float(params["at_time"])
    x_max = float(results.loc[results["split"] == "test", "time"].max())
    for i, alpha in enumerate(alphas):
        for j in range(ncols):
            ax = axes[i * ncols + j]
            if j >= len(ratios):
                ax.set_visible(False)
                continue
            part = results[(results["dirichlet_alpha"] == alpha) & (results["speed_ratio"] == ratios[j])]
            plotting.metric_panel(ax, part, "accuracy", x="time", hue="variant", hue_order=order, palette=palette,
                                  x_max=x_max, legend_title="algorithm",
                                  title=f"α = {alpha:g}, slow/fast = {ratios[j]:g}")
            ax.axvline(at, color="grey", linestyle="--", linewidth=1)
            if (i, j) != (0, 0) and ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.set_xlabel("simulated time (fast mean step = 2)" if i == len(alphas) - 1 else "")
    heat = [("accuracy_at_time_mean", "accuracy"), ("accuracy_p10_at_time_mean", "p10 client accuracy")]
    heat = [(col, name) for col, name in heat if frame[col].notna().any()]   # p10 needs the whole test set
    for row, (col, name) in enumerate(heat):
        base = (len(alphas) + row) * ncols
        vmin, vmax = 100 * frame[col].min(), 100 * frame[col].max()
        for j in range(ncols):
            ax = axes[base + j]
            if j >= len(order):
                ax.set_visible(False)
                continue
            grid = frame[frame["variant"] == order[j]].pivot(index="dirichlet_alpha", columns="speed_ratio",
                                                             values=col) * 100
            # explicit tick labels: with "auto" seaborn draws the whole figure once per heatmap (seconds here)
            sns.heatmap(grid, annot=True, fmt=".1f", cmap="viridis", vmin=vmin, vmax=vmax, ax=ax,
                        cbar=j == len(order) - 1, cbar_kws={"label": f"{name} at t = {at:g} (%)"},
                        xticklabels=[f"{r:g}" for r in grid.columns], yticklabels=[f"{a:g}" for a in grid.index])
            ax.tick_params(axis="y", labelrotation=0)
            ax.set_xlabel("slow/fast mean step time")
            ax.set_ylabel("Dirichlet α")
            ax.set_title(f"{order[j]}: {name}")
    for ax in axes[(len(alphas) + len(heat)) * ncols:]:
        ax.set_visible(False)
    seeds = int(results["seed"].nunique())
    plotting.suptitle(fig, f"Heterogeneity — n = {params['num_clients']}, s = {params['clients_per_round']}, "
                      f"K = {params['local_steps']}, {params['slow_fraction']:.0%} slow — {data.label} "
                      f"[{common.model_label(common.base_config(data, model=params.get('model', 'auto')))}]",
                      "rows: data heterogeneity (Dirichlet α); columns: slow/fast mean step time (fast mean fixed); "
                      + plotting.band_note(seeds))
    return fig
