"""Fig. 2 — QuAFL with b ∈ {8, 10, 12, 32} bits per coordinate (ICLR §5, Fig. 2; docs/experiments.md).

The paper: MNIST (MLP 784-32-10, i.i.d. shards), n = 40, s = 5; "8 → 10 bits improves; clear saturation after
10 bits, then the same as full precision".  Here: MNIST when present, else Fashion-MNIST with the same MLP, else
the embedded LEAF Synthetic data.  Fewer bits shorten the interaction time (sit · b/32, docs/timing.md).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from qafl_core.experiments import analysis, common, plotting

NAME = "fig2_bits"
SUBJECTS = ("mnist", "fmnist")
PARAMETERS = ("dataset", "fallback_dataset", "dataset_options", "model", "seeds", "num_clients", "clients_per_round",
              "local_steps", "quantizer", "bits", "lattice_eps", "slow_fraction", "sit", "swt", "lr", "time_limit",
              "eval_every", "eval_max_samples", "extra")
#: the parameters passed on unchanged as the config keys of every run
RUN_KEYS = ("lr", "model", "num_clients", "clients_per_round", "local_steps", "lattice_eps", "slow_fraction", "sit",
            "swt", "time_limit", "eval_every", "eval_max_samples")


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The dataset the figure uses with ``params`` (one)."""
    return [common.subject_choice(params, SUBJECTS)]


def base(params: Mapping[str, Any], choice: common.DatasetChoice) -> dict[str, Any]:
    """The config keys shared by every run of the figure: :data:`RUN_KEYS` and ``extra``."""
    return common.figure_base(params, choice, RUN_KEYS)


def bits_grid(bits: Sequence[int], quantizer: str = "lattice") -> dict[str, dict[str, Any]]:
    """``b`` bits of ``quantizer`` per variant; 32 means full precision (identity quantizer)."""
    return {(f"{b} bits ({quantizer})" if b < 32 else "32 bits (full precision)"):
            ({"quantizer": quantizer, "bits": int(b)} if b < 32 else {"quantizer": "identity", "bits": 32}) for b in bits}


def grid(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The figure's variants in plot order (:func:`bits_grid`)."""
    return bits_grid(params["bits"], params["quantizer"])


def runs(params: Mapping[str, Any]) -> list[common.Run]:
    """Every run of the figure: each b x each seed."""
    return common.variants(base(params, choices(params)[0]), grid(params), params["seeds"])


def plot(results: pd.DataFrame, params: Mapping[str, Any]):
    """Accuracy against simulated time (left) and against the data sent (right)."""
    p, choice = params, choices(params)[0]
    order = list(grid(p))
    fig, axes = plotting.subplots(2)
    plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=order, legend_title="bits",
                          title="accuracy vs simulated time")
    plotting.metric_panel(axes[1], results, "accuracy", x="bits", hue_order=order, legend_title="bits",
                          title="accuracy vs data sent")
    plotting.suptitle(fig, f"Fig. 2 — QuAFL bits per coordinate: n = {p['num_clients']}, s = {p['clients_per_round']} — "
                      f"{choice.label} [{common.model_label(base(p, choice))}]", plotting.band_note(len(p["seeds"])))
    return fig


def headline(results: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Final accuracy per b, accuracy at the same number of bits sent, bits and decode failures."""
    labels = list(grid(params))
    rows = analysis.select(results, "accuracy")
    budget = float((rows["bits_up"] + rows["bits_down"]).groupby(rows["config_hash"]).max().min())
    cur = analysis.curves(results, "accuracy", "bits", points=41, x_max=budget)
    at_budget = cur[cur["x"] >= budget * (1 - 1e-9)].groupby("label")["value"].mean()
    total = rows.assign(b=rows["bits_up"] + rows["bits_down"]).groupby("label")["b"].max() / 1e6
    acc = analysis.means(results)
    return {
        "final_accuracy": analysis.table(results),
        "equal_bits_budget_mbit": budget / 1e6,
        "accuracy_at_equal_bits": {lb: at_budget.get(lb, math.nan) for lb in labels},
        "total_mbit_sent": {lb: total.get(lb, math.nan) for lb in labels},
        "decode_failures": analysis.means(results, "decode_failures", "sim"),
        "best_by_final_accuracy": max(acc, key=acc.get),
    }
