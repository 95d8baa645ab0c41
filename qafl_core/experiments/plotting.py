"""Plots of the figure notebooks: curves with confidence bands over seeds, bars, and saving PNG + PDF.

Axes carry units (simulated time units of docs/timing.md — a fast client's mean SGD step takes 2 —, Mbit/Gbit
sent, accuracy in %), every curve is the mean over seeds with a ± 1 std band (or a 95 % CI), and titles
name the dataset, including "embedded fallback" when the figure's subject data was not available.
Outside a Jupyter kernel the non-interactive Agg backend is used, so plotting works on headless machines.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

from qafl_core import environment

if "ipykernel" not in sys.modules and not environment.get("MPLBACKEND"):
    matplotlib.use("Agg")  # headless: scripts, tests, CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from qafl_core.experiments import analysis  # noqa: E402

TIME_LABEL = "simulated time (units; mean fast-client SGD step = 2)"
STEPS_LABEL = "server steps (rounds)"
METRIC_LABELS = {"accuracy": "test accuracy (%)", "loss": "test loss (cross-entropy)",
                 "grad_sq": r"$\|\nabla f\|^2$", "suboptimality": r"$f - f_*$",
                 "conservation_residual": "conservation residual (max abs)"}
PERCENT = ("accuracy",)


def use_style() -> None:
    """The suite's look: seaborn white grid, readable font sizes, colour-blind palette."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.95)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "axes.titlesize": "medium",
                         "legend.fontsize": "small", "legend.title_fontsize": "small"})


def subplots(ncols: int = 1, nrows: int = 1, width: float = 5.2, height: float = 3.8, **kw):
    """``plt.subplots`` with the suite's style and per-panel size; always returns a flat array of axes."""
    use_style()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes.ravel()


def bits_scale(max_bits: float) -> tuple[float, str]:
    """Divisor and label for a bits axis: Mbit below 10 Gbit, else Gbit."""
    if max_bits >= 1e10:
        return 1e9, "data sent, up + down (Gbit)"
    return 1e6, "data sent, up + down (Mbit)"


def x_label(x: str, max_value: float = 0.0) -> tuple[float, str]:
    """Scale and label of an x axis name from :data:`qafl_core.experiments.analysis.X_AXES`."""
    if x == "bits":
        return bits_scale(max_value)
    return 1.0, {"time": TIME_LABEL, "server_steps": STEPS_LABEL, "local_steps": "local SGD steps (all clients)"}[x]


def metric_panel(ax, results: pd.DataFrame, metric: str = "accuracy", x: str = "time", split: str = "test",
                 hue: str = "label", hue_order: Sequence | None = None, title: str | None = None,
                 band: str = "sd", points: int = 60, x_max: float | None = None, logy: bool | str = False,
                 legend_title: str | None = None, style: str | None = None, palette: dict | None = None):
    """One panel: ``metric`` against ``x`` for every ``hue`` group, mean over seeds with a band.

    Args:
        ax: matplotlib axes.
        results: long results table with a ``label`` column (:func:`qafl_core.experiments.common.run_variants`).
        metric, split: which values (e.g. ``accuracy`` / ``test``).
        x: ``time``, ``server_steps``, ``local_steps`` or ``bits``.
        hue: column that separates curves; ``hue_order`` fixes legend order and colours.
        band: ``"sd"`` (mean ± 1 std over seeds) or ``"ci"`` (95 % bootstrap CI).
        logy: log-scale y axis (gradient norms); ``"auto"``: only when the values span more than a decade.
        palette: ``{group: colour}``, to keep colours equal across panels that show different subsets.
    """
    by = [hue] + ([style] if style and style != hue else [])
    cur = analysis.curves(results, metric, x, split, by=by, points=points, x_max=x_max)
    scale, xlabel = x_label(x, float(cur["x"].max()) if len(cur) else 0.0)
    cur = cur.assign(x=cur["x"] / scale)
    if metric in PERCENT:
        cur = cur.assign(value=cur["value"] * 100.0)
    errorbar = ("sd", 1) if band == "sd" else ("ci", 95)
    sns.lineplot(data=cur, x="x", y="value", hue=hue, hue_order=hue_order, style=style, errorbar=errorbar,
                 ax=ax, palette=palette or "colorblind", linewidth=1.6, seed=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + ("" if split in ("test", "mean_model") else f" [{split}]"))
    if logy == "auto":
        pos = cur["value"][cur["value"] > 0]
        logy = bool(len(pos)) and float(pos.max()) > 10 * float(pos.min())
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    leg = ax.get_legend()
    if leg is not None:
        leg.set_title(legend_title if legend_title is not None else hue)
    return ax


def band_note(num_seeds: int, band: str = "sd") -> str:
    """Subtitle text that says what the bands are."""
    if num_seeds < 2:
        return "1 seed (no band)"
    what = "mean ± 1 std" if band == "sd" else "mean, 95 % CI"
    return f"{what} over {num_seeds} seeds"


def bar_panel(ax, table: pd.DataFrame, x: str, y: str = "mean", err: str | None = "std", hue: str | None = None,
              percent: bool = False, xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
              rotate: float = 0):
    """Bars of ``table[y]`` (± ``table[err]``) per ``x`` (and ``hue``) category."""
    t = table.copy()
    factor = 100.0 if percent else 1.0
    t[y] = t[y] * factor
    cats = list(dict.fromkeys(t[x].astype(str)))
    hues = list(dict.fromkeys(t[hue].astype(str))) if hue else [None]
    width = 0.8 / len(hues)
    colors = sns.color_palette("colorblind", len(hues))
    for j, h in enumerate(hues):
        sub = t if h is None else t[t[hue].astype(str) == h]
        pos = [cats.index(str(c)) + (j - (len(hues) - 1) / 2) * width for c in sub[x]]
        yerr = None
        if err and err in sub and sub[err].notna().any():   # no error bars at all for a single seed
            yerr = np.nan_to_num(sub[err].to_numpy(float) * factor, nan=0.0)
        ax.bar(pos, sub[y], width=width, yerr=yerr, capsize=3, color=colors[j], label=h)
    ax.set_xticks(range(len(cats)), cats, rotation=rotate, ha="right" if rotate else "center")
    ax.set_xlabel(xlabel if xlabel is not None else x)
    ax.set_ylabel(ylabel if ylabel is not None else y)
    if hue:
        ax.legend(title=hue)
    if title:
        ax.set_title(title)
    return ax


def running_average_panel(ax, results: pd.DataFrame, metric: str = "grad_sq", split: str = "mean_model",
                          hue_order: Sequence | None = None, title: str | None = None,
                          legend_title: str | None = None):
    """``1/T sum_{t<T} metric_t`` against server steps T on log-log axes, mean ± 1 std over seeds."""
    cur = analysis.running_average(results, metric, split)
    cur = cur[cur["server_steps"] > 0]
    sns.lineplot(data=cur, x="server_steps", y="value", hue="label", hue_order=hue_order, errorbar=("sd", 1),
                 ax=ax, palette="colorblind", linewidth=1.6, seed=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("server steps T")
    ax.set_ylabel(r"$\frac{1}{T}\sum_{t<T}\|\nabla f(\mu_t)\|^2$")
    if title:
        ax.set_title(title)
    leg = ax.get_legend()
    if leg is not None and legend_title is not None:
        leg.set_title(legend_title)
    return ax


def points_panel(ax, x: Sequence[float], mean: Sequence[float], std: Sequence[float] | None = None,
                 xlabel: str = "", ylabel: str = "", label: str | None = None, ref_slope: float | None = None,
                 ref_label: str | None = None, title: str | None = None, loglog: bool = True):
    """Points with ± std error bars, optionally with a reference power law ``x^ref_slope`` through the first point."""
    xa, ma = np.asarray(x, float), np.asarray(mean, float)
    sa = None if std is None else np.nan_to_num(np.asarray(std, float), nan=0.0)
    ax.errorbar(xa, ma, yerr=sa, marker="o", capsize=3, linewidth=1.6, label=label)
    if ref_slope is not None and len(xa) and np.isfinite(ma[0]):
        xs = np.geomspace(xa.min(), xa.max(), 50)
        ax.plot(xs, ma[0] * (xs / xa[0]) ** ref_slope, "--", color="grey",
                label=ref_label or f"slope {ref_slope:g}")
    if loglog:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if label or ref_slope is not None:
        ax.legend()
    if title:
        ax.set_title(title)
    return ax


def comparison_figure(results: pd.DataFrame, choices: Sequence, metrics: Sequence[str] = ("loss", "accuracy"),
                      hue_order: Sequence | None = None, x: str = "time", models: dict | None = None):
    """One row per dataset (``choices``: :class:`qafl_core.experiments.common.DatasetChoice`), one column per metric;
    ``models`` (``{dataset: model}``) is added to the panel titles."""
    fig, axes = subplots(len(metrics), len(choices))
    groups = list(hue_order) if hue_order else list(dict.fromkeys(results["label"]))
    palette = dict(zip(groups, sns.color_palette("colorblind", len(groups))))  # same colour in every row
    for i, choice in enumerate(choices):
        part = results[results["dataset"] == choice.name]
        order = [h for h in (hue_order or []) if h in set(part["label"])] or None
        model = f" [{models[choice.name]}]" if models and choice.name in models else ""
        for j, metric in enumerate(metrics):
            ax = axes[i * len(metrics) + j]
            metric_panel(ax, part, metric, x=x, hue_order=order, logy="auto" if metric == "loss" else False,
                         palette=palette,
                         title=f"{choice.label}{model}\n{metric}", legend_title="algorithm")
            if j < len(metrics) - 1 and ax.get_legend() is not None:
                ax.get_legend().remove()
    return fig, axes


def suptitle(fig, text: str, note: str | None = None) -> None:
    """Figure title (dataset, fallback note) with an optional smaller second line."""
    fig.suptitle(text + (f"\n{note}" if note else ""), fontsize="medium")


def save(fig, output_dir: str | os.PathLike, name: str, close: bool = False) -> list[Path]:
    """Save ``fig`` as ``<output_dir>/<name>.png`` and ``.pdf``; returns the two paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight")
    if close:
        plt.close(fig)
    return paths
