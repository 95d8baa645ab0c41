"""Fig. 1 — QuAFL convergence for different numbers of peers s (ICLR §5, Fig. 1; docs/experiments.md).

The paper: CelebA, ResNet-18, n = 100, s ∈ {10, 20, 30, 40}, 14-bit lattice, 30 % slow clients; "convergence
speed clearly follows the ordering of the number of peers s", and "a 27 % probability that a slow client will
not have taken any steps when interacting with the server".  Here: CelebA when present, else FEMNIST, else the
embedded LEAF Synthetic data (:data:`SUBJECTS`, :func:`qafl_core.experiments.common.choose_dataset`).
"""
from __future__ import annotations

from typing import Any, Mapping

import pandas as pd

from qafl_core.experiments import analysis, common, plotting

NAME = "fig1_peers"
#: the datasets this figure is about, in order of preference (``dataset = "auto"``)
SUBJECTS = ("celeba", "femnist")
#: the notebook's parameters (besides :data:`qafl_core.experiments.common.SETTINGS`) = the profile keys
PARAMETERS = ("dataset", "fallback_dataset", "dataset_options", "model", "seeds", "num_clients", "peers",
              "local_steps", "quantizer", "bits", "lattice_eps", "slow_fraction", "sit", "swt", "lr", "time_limit",
              "eval_every", "eval_max_samples", "target_accuracy", "target_fraction", "extra")
#: the parameters passed on unchanged as the config keys of every run
RUN_KEYS = ("lr", "model", "num_clients", "local_steps", "quantizer", "bits", "lattice_eps", "slow_fraction", "sit",
            "swt", "time_limit", "eval_every", "eval_max_samples")


def choices(params: Mapping[str, Any]) -> list[common.DatasetChoice]:
    """The dataset the figure uses with ``params`` (one)."""
    return [common.subject_choice(params, SUBJECTS)]


def base(params: Mapping[str, Any], choice: common.DatasetChoice) -> dict[str, Any]:
    """The config keys shared by every run of the figure: :data:`RUN_KEYS` and ``extra``."""
    return common.figure_base(params, choice, RUN_KEYS)


def grid(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """One variant per number of peers: ``{"s = 10": {"clients_per_round": 10}, ...}`` in plot order."""
    return common.sweep("clients_per_round", params["peers"], "s = {}")


def runs(params: Mapping[str, Any]) -> list[common.Run]:
    """Every run of the figure: each s x each seed."""
    return common.variants(base(params, choices(params)[0]), grid(params), params["seeds"])


def plot(results: pd.DataFrame, params: Mapping[str, Any]):
    """Left: server-model test accuracy against simulated time; right: slow-client contacts with zero steps."""
    p, choice = params, choices(params)[0]
    fig, axes = plotting.subplots(2)
    plotting.metric_panel(axes[0], results, "accuracy", x="time", hue_order=list(grid(p)), legend_title="peers",
                          title="server-model test accuracy")
    plotting.bar_panel(axes[1], analysis.last_sim(results, "zero_step_fraction_slow"), x="label", percent=True,
                       xlabel="peers", ylabel="slow-client contacts with 0 steps (%)",
                       title="zero-step contacts of slow clients")
    plotting.suptitle(fig, f"Fig. 1 — QuAFL, n = {p['num_clients']}, {p['quantizer']}:{p['bits']}, "
                      f"{p['slow_fraction']:.0%} slow — {choice.label} [{common.model_label(base(p, choice))}]",
                      plotting.band_note(len(p["seeds"])))
    return fig


def headline(results: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """Final accuracy per s, whether it follows the order of s, zero-step contacts of slow clients."""
    peers, labels = params["peers"], list(grid(params))
    acc = analysis.means(results)
    tgt = analysis.target_accuracy(results, params["target_accuracy"], params["target_fraction"])
    means = analysis.means
    return {
        "final_accuracy": analysis.table(results),
        "final_accuracy_rank_correlation_with_s": analysis.rank_agreement(peers, [acc[lb] for lb in labels]),
        "zero_step_fraction_slow": means(results, "zero_step_fraction_slow", "sim"),
        "zero_step_fraction_fast": means(results, "zero_step_fraction_fast", "sim"),
        "steps_per_contact_slow": means(results, "steps_per_contact_slow", "sim"),
        "steps_per_contact_fast": means(results, "steps_per_contact_fast", "sim"),
        "decode_failures": means(results, "decode_failures", "sim"),
        **analysis.target_summary(results, tgt),
    }
