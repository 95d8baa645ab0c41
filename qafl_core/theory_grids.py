"""Run grids of the theory notebook: QuAFL on heterogeneous quadratics (ICLR Theorem 4.2).

Checks listed in docs/algorithm.md#what-the-suite-checks-numerically.

Theorem 4.2 bounds ``1/T sum_t E||grad f(mu_t)||^2`` of the mean model for the step size
``eta = (n + 1) / (s H sqrt(T))``, H the mean number of local steps per contact.  The grids here evaluate
once per server step (so averages over evaluations are averages over t), measure H from the runs'
``steps_per_contact`` statistics, and vary T (with the theorem's eta), s and K (which moves H).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from qafl_core.figures import DatasetChoice, Run, sweep, variants

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
    from qafl_core import analysis

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


def theory_runs(base: Mapping[str, Any], quantizer: str, bits: int, horizons: Sequence[int], peers: Sequence[int],
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
