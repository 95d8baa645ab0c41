"""Fig. 5 — QuAFL vs FedBuff vs FedAvg, unquantised and with 12-bit lattice / QSGD (docs/experiments.md).

Post-ICLR comparison of the paper code (docs/experiments.md#the-fedbuff-comparison-of-the-released-code,
docs/baselines.md#fedbuff): validation loss against simulated time at (n, s, K) = (20, 5, 5), 12 bits.  Here on
FEMNIST (the LEAF samples under ``$QAFL_DATA_DIR/femnist`` merged) and on Shakespeare (always available);
without ``$QAFL_DATA_DIR`` FEMNIST is replaced by the embedded LEAF Synthetic data.  Table 1
(:mod:`qafl_core.experiments.tab1_time_to_accuracy`) reuses these runs.
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from qafl_core.experiments import analysis, common, plotting

NAME = "fig5_vs_fedbuff"
PARAMETERS = ("datasets", "fallback_dataset", "dataset_options", "model", "variants", "seeds", "num_clients",
              "clients_per_round", "local_steps", "batch_size", "lattice_eps", "slow_fraction", "sit", "swt", "lr",
              "time_limit", "eval_every", "eval_max_samples", "target_accuracy", "target_fraction", "extra")
#: the parameters passed on unchanged as the config keys of every run (per-dataset mappings allowed)
RUN_KEYS = ("lr", "model", "num_clients", "clients_per_round", "local_steps", "batch_size", "lattice_eps",
            "slow_fraction", "sit", "swt", "time_limit", "eval_every", "eval_max_samples")


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The datasets of the comparison, each falling back to ``fallback_dataset`` when missing."""
    return common.choose_datasets(list(params["datasets"]), fallback=params.get("fallback_dataset", "synthetic"),
                                  options=params.get("dataset_options") or {})


def runs(params: Mapping[str, Any]) -> list[common.Run]:
    """For each dataset, each variant x each seed (:func:`qafl_core.experiments.common.comparison_runs`)."""
    p = params
    return common.comparison_runs(choices(p), p["variants"], p["seeds"], **common.forwarded(p, RUN_KEYS))


def plot(results: pd.DataFrame, params: Mapping[str, Any]):
    """One row per dataset: loss and accuracy against simulated time."""
    p = params
    fig, _ = plotting.comparison_figure(results, choices(p), ("loss", "accuracy"),
                                        hue_order=common.variant_labels(p["variants"]),
                                        models=common.model_labels(runs(p)))
    plotting.suptitle(fig, f"Fig. 5 — QuAFL vs FedBuff vs FedAvg (s = {p['clients_per_round']}, K = {p['local_steps']})",
                      plotting.band_note(len(p["seeds"])))
    return fig


def headline(results: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Per dataset: final accuracy and loss and the time / bits to reach a target accuracy."""
    targets, fraction = params["target_accuracy"], params["target_fraction"]
    out: dict[str, Any] = {}
    for name, part in results.groupby("dataset", sort=False):
        tgt = analysis.target_accuracy(part, targets.get(name) if targets else None, fraction)
        out[str(name)] = {"final_accuracy": analysis.table(part), "final_loss": analysis.table(part, "loss"),
                          **analysis.target_summary(part, tgt)}
    return out
