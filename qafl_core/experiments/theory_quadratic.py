"""Theory — QuAFL on heterogeneous quadratics (ICLR Theorem 4.2): its runs, plot and headline numbers.

Checks listed in docs/algorithm.md#what-the-suite-checks-numerically: (a) with the identity quantizer the sum
of all n + 1 models changes only by the clients' gradient steps (the conservation invariant); (b) the T-rate;
(c) the effect of the number of peers s and (d) of the mean local steps H.  Embedded: needs no data.

Theorem 4.2 bounds ``1/T sum_t E||grad f(mu_t)||^2`` of the mean model for the step size
``eta = (n + 1) / (s H sqrt(T))``, H the mean number of local steps per contact.  The grids here evaluate
once per server step (so averages over evaluations are averages over t), measure H from the runs'
``steps_per_contact`` statistics, and vary T (with the theorem's eta), s and K (which moves H).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qafl_core.experiments import analysis, plotting
from qafl_core.experiments.common import DatasetChoice, Run, sweep, variants

NAME = "theory_quadratic"
PARAMETERS = ("num_clients", "clients_per_round", "local_steps", "dim", "sigma", "heterogeneity", "round_time",
              "fast_mean", "slow_mean", "slow_fraction", "quantizer", "bits", "lattice_eps", "horizons", "lr_scale",
              "peers", "local_steps_grid", "seeds", "extra")
QUADRATIC = DatasetChoice("quadratic", "quadratic")


def theory_base(num_clients: int, clients_per_round: int, local_steps: int, dim: int, sigma: float,
                heterogeneity: float, round_time: float, **keys: Any) -> dict[str, Any]:
    """Flat config keys of the quadratic runs: one evaluation per server step (``eval_every`` = round time)
    so that averages over evaluations are Theorem 4.2's averages over t; sit is not scaled by bits."""
    base = {"dataset": "quadratic", "num_clients": int(num_clients), "clients_per_round": int(clients_per_round),
            "local_steps": int(local_steps), "progress": False, "scale_sit_by_bits": False,
            "sit": float(round_time), "swt": 0.0, "eval_every": float(round_time),
            "dataset_options": {"dim": int(dim), "sigma": float(sigma), "heterogeneity": float(heterogeneity)}}
    base.update(keys)
    return base


def theorem_lr(num_clients: int, clients_per_round: int, mean_steps: float, horizon: int, scale: float = 1.0) -> float:
    """Theorem 4.2's step size ``eta = (n + 1) / (s H sqrt(T))`` (times ``scale``)."""
    if mean_steps <= 0:
        raise ValueError(f"mean_steps: H must be > 0 to set the theorem's step size, got {mean_steps}")
    return scale * (num_clients + 1) / (clients_per_round * mean_steps * horizon ** 0.5)


def horizon_keys(base: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """Config keys that stop a run after ``steps`` server steps (time limit just past them)."""
    return {"max_server_steps": int(steps), "time_limit": float(base["sit"]) * (int(steps) + 1)}


def mean_local_steps(results: pd.DataFrame, slow_fraction: float) -> float:
    """H: mean local steps per contact, from the runs' final ``steps_per_contact_slow/fast`` statistics."""
    sim = {}
    for cls in ("slow", "fast"):
        try:
            sim[cls] = float(analysis.last_values(results, f"steps_per_contact_{cls}", "sim", ())["value"].mean())
        except ValueError:  # no client of that class
            sim[cls] = None
    if sim["slow"] is None or sim["fast"] is None:
        return sim["fast"] if sim["slow"] is None else sim["slow"]
    return slow_fraction * sim["slow"] + (1 - slow_fraction) * sim["fast"]


def rate_grid(base: Mapping[str, Any], horizons: Sequence[int], mean_steps: float, lr_scale: float) -> dict:
    """Variants ``"T = ..."`` with the theorem's step size for each horizon T."""
    n, s = base["num_clients"], base["clients_per_round"]
    return {f"T = {t}": {"lr": theorem_lr(n, s, mean_steps, t, lr_scale), **horizon_keys(base, t)} for t in horizons}


def _quantized(base: Mapping[str, Any], quantizer: str, bits: int) -> dict[str, Any]:
    return {**base, "quantizer": quantizer, "bits": int(bits)} if quantizer != "identity" else \
        {**base, "quantizer": "identity", "bits": 32}


def conservation_runs(base: Mapping[str, Any], quantizer: str, bits: int, horizon: int, lr_scale: float,
                      seeds: Iterable[int]) -> list[Run]:
    """Identity vs quantized runs of ``horizon`` server steps (the conservation invariant of docs/algorithm.md holds exactly only for
    identity).  H is not known yet, so the step size uses H = K, its upper bound; these runs also measure H."""
    lr = theorem_lr(base["num_clients"], base["clients_per_round"], base["local_steps"], horizon, lr_scale)
    common = {**base, **horizon_keys(base, horizon), "lr": lr}
    grid = {"identity (32-bit)": _quantized({}, "identity", 32), f"{quantizer}:{bits}": _quantized({}, quantizer, bits)}
    return variants(common, grid, seeds)


def grids_of(base: Mapping[str, Any], quantizer: str, bits: int, horizons: Sequence[int], peers: Sequence[int],
                local_steps_grid: Sequence[int], mean_steps: float, lr_scale: float,
                seeds: Iterable[int]) -> dict[str, list[Run]]:
    """The theory notebook's grids, all with ``quantizer``:

    * ``rate``: one run per horizon T with Theorem 4.2's step size for that T;
    * ``peers``: s varied at the longest horizon, step size fixed (the theorem's for the base s);
    * ``local``: K varied (which moves the mean local steps H) at the longest horizon, same fixed step size.
    """
    seeds = list(seeds)
    q = _quantized(base, quantizer, bits)
    t_max = max(horizons)
    lr = theorem_lr(base["num_clients"], base["clients_per_round"], mean_steps, t_max, lr_scale)
    long = {**q, **horizon_keys(base, t_max), "lr": lr}
    return {"rate": variants(q, rate_grid(base, horizons, mean_steps, lr_scale), seeds),
            "peers": variants(long, sweep("clients_per_round", peers, "s = {}"), seeds),
            "local": variants(long, sweep("local_steps", local_steps_grid, "K = {}"), seeds)}


# ---------------------------------------------------------------------- the notebook's steps
def choices(params: Mapping[str, Any]) -> list[DatasetChoice]:
    """The figure's data: the embedded quadratics."""
    return [QUADRATIC]


def base(params: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`theory_base` of the notebook's parameters."""
    p = params
    return theory_base(p["num_clients"], p["clients_per_round"], p["local_steps"], p["dim"], p["sigma"],
                       p["heterogeneity"], p["round_time"], fast_mean=p["fast_mean"], slow_mean=p["slow_mean"],
                       slow_fraction=p["slow_fraction"], lattice_eps=p["lattice_eps"], **p["extra"])


def first_runs(params: Mapping[str, Any]) -> list[Run]:
    """The first stage: :func:`conservation_runs` at the longest horizon; their results give H."""
    p = params
    return conservation_runs(base(p), p["quantizer"], p["bits"], max(p["horizons"]), p["lr_scale"], p["seeds"])


def grids(params: Mapping[str, Any], mean_steps: float) -> dict[str, list[Run]]:
    """The second stage (:func:`grids_of`) with H = ``mean_steps`` measured by the first."""
    p = params
    return grids_of(base(p), p["quantizer"], p["bits"], p["horizons"], p["peers"], p["local_steps_grid"], mean_steps,
                    p["lr_scale"], p["seeds"])


def runs(params: Mapping[str, Any], mean_steps: float | None = None) -> list[Run]:
    """Every run of the notebook: :func:`first_runs`, then the :func:`grids` with H = ``mean_steps``.

    H is measured by the first runs.  It depends only on the clients' clocks and the server's sampling, not on the
    models, so with ``mean_steps=None`` it is computed without training, from the first runs simulated on a null
    task (:func:`qafl_core.experiments.estimate.null_results`): the same value, and so the same runs.
    """
    if mean_steps is None:
        from qafl_core.experiments.estimate import null_results

        mean_steps = mean_local_steps(null_results(first_runs(params)), params["slow_fraction"])
    g = grids(params, mean_steps)
    return first_runs(params) + g["rate"] + g["peers"] + g["local"]


def headline(results: Mapping[str, pd.DataFrame], params: Mapping[str, Any], mean_steps: float) -> dict[str, Any]:
    """Conservation residual, the T-rate slope, and the effect of s and of H.

    ``results``: ``{"conservation", "rate", "peers", "local"}`` -> results table of that group.
    """
    horizons, peers, local_steps = params["horizons"], params["peers"], params["local_steps_grid"]
    local_runs = results["local"]
    res = analysis.select(results["conservation"], "conservation_residual", "mean_model").groupby("label")["value"].max()
    avg_t = analysis.final_running_average(results["rate"]).set_index("label")["mean"]
    t_means = [avg_t.get(f"T = {t}", math.nan) for t in horizons]
    avg_s = analysis.final_running_average(results["peers"]).set_index("label")["mean"]
    s_means = [avg_s.get(f"s = {s}", math.nan) for s in peers]
    avg_k = analysis.final_running_average(local_runs).set_index("label")["mean"]
    h = {}
    for k in local_steps:
        part = local_runs[local_runs["label"] == f"K = {k}"]
        slow = analysis.last_values(part, "steps_per_contact_slow", "sim", ())["value"].mean()
        fast = analysis.last_values(part, "steps_per_contact_fast", "sim", ())["value"].mean()
        h[k] = params["slow_fraction"] * slow + (1 - params["slow_fraction"]) * fast
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


def plot(results: Mapping[str, pd.DataFrame], params: Mapping[str, Any], head: Mapping[str, Any]):
    """(a) conservation residual, (b) rate against T, (c) effect of s, (d) effect of H; ``head`` = :func:`headline`."""
    p = params
    q = f"{p['quantizer']}:{p['bits']}"
    fig, axes = plotting.subplots(2, 2)
    plotting.metric_panel(axes[0], results["conservation"], "conservation_residual", x="server_steps",
                          split="mean_model", legend_title="quantizer", title="(a) conservation of the sum of all models",
                          logy=True)
    t_avg = analysis.final_running_average(results["rate"])
    plotting.points_panel(axes[1], p["horizons"], t_avg["mean"], t_avg["std"], xlabel="horizon T (server steps)",
                          ylabel="(1/T) Σ ‖∇f(μ_t)‖²", label=f"QuAFL {q}", ref_slope=-0.5, ref_label="T^(-1/2)",
                          title=f"(b) rate, η = (n+1)/(sH√T); fit slope {head['loglog_slope_vs_T']:.2f}")
    plotting.running_average_panel(axes[2], results["peers"], hue_order=[f"s = {s}" for s in p["peers"]],
                                   legend_title="peers", title="(c) effect of s (fixed η)")
    h_avg = analysis.final_running_average(results["local"])
    plotting.points_panel(axes[3], list(head["measured_H_by_K"].values()), h_avg["mean"], h_avg["std"],
                          xlabel="measured mean local steps H (K = " + ", ".join(map(str, p["local_steps_grid"])) + ")",
                          ylabel="(1/T) Σ ‖∇f(μ_t)‖²", label=f"T = {max(p['horizons'])}", title="(d) effect of H (fixed η)")
    plotting.suptitle(fig, f"Theory — heterogeneous quadratics: n = {p['num_clients']}, s = {p['clients_per_round']}, "
                      f"K = {p['local_steps']}, d = {p['dim']}, σ = {p['sigma']}, G = {p['heterogeneity']}",
                      plotting.band_note(len(p["seeds"])))
    return fig
