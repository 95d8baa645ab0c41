"""Fig. 4 — QuAFL vs FedAvg vs a single slow node, against simulated time (ICLR §5, Fig. 4; docs/timing.md).

The paper: CIFAR-10, ResNet-20, n = 20, 25 % slow clients; "QuAFL converges faster in wall-clock because the
server need not wait for slow clients".  FedAvg waits for the slowest sampled client each round.  Here: FEMNIST
when present (``dataset = "cifar10"`` for the paper's data), else the embedded LEAF Synthetic data.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from qafl_core.experiments import analysis, common, plotting

NAME = "fig4_vs_fedavg"
SUBJECTS = ("femnist",)
PARAMETERS = ("dataset", "fallback_dataset", "dataset_options", "model", "seeds", "num_clients", "clients_per_round",
              "local_steps", "variants", "baseline", "lattice_eps", "slow_fraction", "sit", "swt", "lr", "time_limit",
              "eval_every", "eval_max_samples", "target_accuracy", "target_fraction", "extra")
#: the parameters passed on unchanged as the config keys of every run
RUN_KEYS = ("lr", "model", "num_clients", "clients_per_round", "local_steps", "lattice_eps", "slow_fraction", "sit",
            "swt", "time_limit", "eval_every", "eval_max_samples")

#: the "Baseline": FedAvg with one client per round, one local step, no interaction time, every client slow — a
#: single slow node taking one SGD step per round (docs/timing.md#fedavg-timing), holding the whole training set
#: of the federation (``dataset_options.pool``).
BASELINE = {"algorithm": "fedavg", "quantizer": "identity", "bits": 32, "clients_per_round": 1, "local_steps": 1,
            "sit": 0.0, "swt": 0.0, "slow_fraction": 1.0, "dataset_options": {"pool": True}}
BASELINE_LABEL = "Baseline: single slow node"


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The dataset the figure uses with ``params`` (one)."""
    return [common.subject_choice(params, SUBJECTS)]


def base(params: Mapping[str, Any], choice: common.DatasetChoice) -> dict[str, Any]:
    """The config keys shared by every run of the figure: :data:`RUN_KEYS` and ``extra``."""
    return common.figure_base(params, choice, RUN_KEYS)


def grid(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``variants`` (:func:`qafl_core.experiments.common.spec_grid`), then :data:`BASELINE` when ``baseline``."""
    out = common.spec_grid(params["variants"])
    if params["baseline"]:
        out[BASELINE_LABEL] = dict(BASELINE)
    return out


def runs(params: Mapping[str, Any]) -> list[common.Run]:
    """Every run of the figure: each variant x each seed."""
    return common.variants(base(params, choices(params)[0]), grid(params), params["seeds"])


def plot(results: pd.DataFrame, params: Mapping[str, Any]):
    """Accuracy (left) and loss (right) against simulated time."""
    p, choice = params, choices(params)[0]
    order = list(grid(p))
    fig, axes = plotting.subplots(2)
    plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=order, legend_title="algorithm",
                          title="accuracy vs simulated time")
    plotting.metric_panel(axes[1], results, "loss", x="time", hue_order=order, legend_title="algorithm",
                          title="loss vs simulated time", logy="auto")
    plotting.suptitle(fig, f"Fig. 4 — QuAFL vs FedAvg: n = {p['num_clients']}, s = {p['clients_per_round']}, "
                      f"K = {p['local_steps']}, {p['slow_fraction']:.0%} slow — {choice.label} "
                      f"[{common.model_label(base(p, choice))}]", plotting.band_note(len(p["seeds"])))
    return fig


def headline(results: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Final accuracy, time to a target accuracy, and FedAvg's time over QuAFL's (an analysis ``speedup``):
    the first two variants are QuAFL's and FedAvg's."""
    quafl, fedavg = list(grid(params))[:2]
    target = common.per_dataset(params["target_accuracy"], choices(params)[0].name)
    tgt = analysis.target_accuracy(results, target, params["target_fraction"])
    return {"final_accuracy": analysis.table(results), **analysis.target_summary(results, tgt),
            "speedup_quafl_over_fedavg": analysis.speedup(results, quafl, fedavg, tgt)}
