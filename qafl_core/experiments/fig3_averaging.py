"""Fig. 3 — averaging variants: both sides, server only, client only (ICLR §5, Fig. 3; docs/algorithm.md).

The paper: CelebA, n = 100, validation accuracy against rounds; "averaging at both server and client is best".
*Server only*: clients adopt the server model instead of averaging with it; *client only*: the server adopts the
mean of the received models.  Data as in Fig. 1 (CelebA, else FEMNIST, else the embedded LEAF Synthetic data).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from qafl_core.experiments import analysis, common, plotting

NAME = "fig3_averaging"
SUBJECTS = ("celeba", "femnist")
PARAMETERS = ("dataset", "fallback_dataset", "dataset_options", "model", "seeds", "num_clients", "clients_per_round",
              "averaging", "local_steps", "quantizer", "bits", "lattice_eps", "slow_fraction", "sit", "swt", "lr",
              "time_limit", "eval_every", "eval_max_samples", "extra")
#: the parameters passed on unchanged as the config keys of every run
RUN_KEYS = ("lr", "model", "num_clients", "clients_per_round", "local_steps", "quantizer", "bits", "lattice_eps",
            "slow_fraction", "sit", "swt", "time_limit", "eval_every", "eval_max_samples")

#: which side averages its model with the received one (docs/algorithm.md#the-algorithm)
AVERAGING = {"both": {"server_averaging": True, "client_averaging": True},
             "server only": {"server_averaging": True, "client_averaging": False},
             "client only": {"server_averaging": False, "client_averaging": True},
             "none": {"server_averaging": False, "client_averaging": False}}


def averaging_grid(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{"averaging: both": {...}, ...}`` for the named variants of :data:`AVERAGING`."""
    for n in names:
        if n not in AVERAGING:
            raise ValueError(f"averaging: unknown variant {n!r}; expected one of {', '.join(AVERAGING)}")
    return {f"averaging: {n}": dict(AVERAGING[n]) for n in names}


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The dataset the figure uses with ``params`` (one)."""
    return [common.subject_choice(params, SUBJECTS)]


def base(params: Mapping[str, Any], choice: common.DatasetChoice) -> dict[str, Any]:
    """The config keys shared by every run of the figure: :data:`RUN_KEYS` and ``extra``."""
    return common.figure_base(params, choice, RUN_KEYS)


def grid(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The figure's variants in plot order (:func:`averaging_grid`)."""
    return averaging_grid(params["averaging"])


def runs(params: Mapping[str, Any]) -> list[common.Run]:
    """Every run of the figure: each averaging variant x each seed."""
    return common.variants(base(params, choices(params)[0]), grid(params), params["seeds"])


def plot(results: pd.DataFrame, params: Mapping[str, Any]):
    """Accuracy against server steps (the paper's x axis) and against simulated time."""
    p, choice = params, choices(params)[0]
    order = list(grid(p))
    fig, axes = plotting.subplots(2)
    plotting.metric_panel(axes[0], results, "accuracy", x="server_steps", hue_order=order, legend_title="variant",
                          title="accuracy vs server steps")
    plotting.metric_panel(axes[1], results, "accuracy", x="time", hue_order=order, legend_title="variant",
                          title="accuracy vs simulated time")
    plotting.suptitle(fig, f"Fig. 3 — QuAFL averaging variants: n = {p['num_clients']}, s = {p['clients_per_round']}, "
                      f"{p['quantizer']}:{p['bits']} — {choice.label} [{common.model_label(base(p, choice))}]",
                      plotting.band_note(len(p["seeds"])))
    return fig


def headline(results: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Final accuracy of each averaging variant and at a common number of server steps."""
    labels = list(grid(params))
    rows = analysis.select(results, "accuracy")
    steps = float(rows.groupby("config_hash")["server_steps"].max().min())
    cur = analysis.curves(results, "accuracy", "server_steps", points=41, x_max=steps)
    at_steps = cur[cur["x"] >= steps * (1 - 1e-9)].groupby("label")["value"].mean()
    acc = analysis.means(results)
    return {"final_accuracy": analysis.table(results), "common_server_steps": steps,
            "accuracy_at_common_server_steps": {lb: at_steps.get(lb, math.nan) for lb in labels},
            "best_variant": max(acc, key=acc.get)}
