"""Speed-heterogeneity corrections for QuAFL (suite extension; docs/algorithm.md#speed-heterogeneity-corrections).

Under the lazy-progress rule (:func:`qafl_core.timing.lazy_progress`) a fast client completes more local steps
between two contacts than a slow one, so QuAFL's averages weigh the fast clients' progress more and the server
model drifts toward their optimum.  ``speed_correction`` picks what a contacted client does about it; every
factor is clipped to ``[1/cap, cap]`` (``speed_correction_cap``) and depends only on the run's own history, so
runs stay deterministic:

* ``none`` (default): the paper's behaviour; nothing is changed, bit for bit.
* ``lr``: client i's step size is multiplied by ``mean_j(H_j) / H_i``, where ``H_i`` is its *realised* steps per
  contact: ``(steps_i + K) / (contacts_i + 1)``, i.e. the running mean with a prior of K steps weighing one
  contact.  The estimates a round uses are those at its start (contacts of earlier rounds only), so the
  sequential and the batched paths give the same factors.
* ``normalized``: in the spirit of FedNova (Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective
  Inconsistency Problem in Heterogeneous Federated Optimization", NeurIPS 2020, arXiv:2007.07481): a client
  that completed k >= 1 steps rescales its progress since its last contact, ``Y_i <- X_i + g (Y_i - X_i)`` with
  ``g = mean_j(H_j) / k``, before sending, so every update counts as the same number of steps.  A contact with
  no step has nothing to rescale.
* ``estimate``: the former ``speed_lr_correction``: fixed factors ``mean(H)/H_i`` with ``H_i`` a Monte-Carlo
  estimate of the expected steps per contact of client i's speed class
  (:func:`qafl_core.timing.expected_steps_per_contact`, a chain of :data:`ESTIMATE_CONTACTS` contacts), now
  capped.  Kept for comparison: when :func:`heavy_tailed` holds the expectation it estimates is zero and the
  chain returns an arbitrary number.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

from qafl_core.timing import expected_steps_per_contact

log = logging.getLogger("qafl")

#: contacts of the ``estimate`` mode's Monte-Carlo chain per speed class (the old code used 4,000)
ESTIMATE_CONTACTS = 20_000


def clip(x: float, cap: float) -> float:
    """``x`` clipped to ``[1/cap, cap]`` (``inf`` becomes ``cap``)."""
    return min(cap, max(1.0 / cap, x))


def heavy_tailed(mean_step: float, round_time: float, contact_prob: float) -> bool:
    """Whether a client with Exponential steps of this mean needs, in expectation, infinitely many contacts to
    complete one step under the lazy-progress rule: its long-run steps per contact are then zero.

    A drawn step of duration d completes at the first contact whose gap exceeds d; gaps are ``round_time``
    times a Geometric(``contact_prob``) number of rounds, so a step needs ``(1 - p)^-floor(d / r)`` contacts
    in expectation, and its mean over d ~ Exponential(m) is finite iff ``m ln(1 / (1 - p)) < r``.
    """
    if contact_prob >= 1.0:
        return True  # a gap of exactly one round: a step longer than the round never completes
    return mean_step * -math.log1p(-contact_prob) >= round_time


class Contact:
    """One contact of some clients: ``factors[j]`` multiplies client ``clients[j]``'s step size, and
    :meth:`finish`, called once their local SGD is done, applies what follows it (``normalized`` rescales the
    progress; the realised-progress modes record the contacts)."""

    def __init__(self, factors: list[float], after: Callable[[], None] | None = None):
        self.factors, self._after = factors, after

    def finish(self) -> None:
        if self._after is not None:
            self._after()


class SpeedCorrection:
    """The policy of one QuAFL simulation; ``contact(clients, ks)`` surrounds the contacted clients' local SGD.

    ``c = policy.contact(clients, ks)``: the caller runs client ``clients[j]``'s ``ks[j]`` steps with its step
    size times ``c.factors[j]``, then calls ``c.finish()``: ``normalized`` rescales the progress and the
    realised-progress estimates record the contacts.  Running estimates live in ``sim.speed_state`` (plain
    lists, saved with the checkpoint), read through ``sim`` at each call so a resumed state is used.
    """

    def __init__(self, sim):
        cfg = sim.cfg
        self.sim, self.mode, self.cap, self.K = sim, cfg.speed_correction, float(cfg.speed_correction_cap), cfg.local_steps
        self._fixed = [1.0] * sim.n
        if self.mode == "estimate":
            self._fixed = self._estimated_factors()
        elif self.mode in ("lr", "normalized"):
            sim.speed_state = {"steps": [0] * sim.n, "contacts": [0] * sim.n, "pending": [], "round": 0}

    # ------------------------------------------------------------------ realised progress
    def steps_per_contact(self) -> list[float]:
        """Every client's running estimate ``H_i`` from the contacts of rounds before the current one."""
        st = self.sim.speed_state
        if st["round"] != self.sim.server_steps:  # a new round: fold in the previous rounds' contacts
            for i, k in st["pending"]:
                st["steps"][i] += k
                st["contacts"][i] += 1
            st["pending"], st["round"] = [], self.sim.server_steps
        return [(s + self.K) / (c + 1) for s, c in zip(st["steps"], st["contacts"])]

    def contact(self, clients: Sequence[int], ks: Sequence[int]) -> Contact:
        if self.mode in ("none", "estimate"):
            return Contact([self._fixed[i] for i in clients])
        clients, ks = list(clients), list(ks)
        h = self.steps_per_contact()
        mean_h = sum(h) / len(h)

        def record() -> None:
            self.sim.speed_state["pending"].extend([i, k] for i, k in zip(clients, ks))

        if self.mode == "lr":
            return Contact([clip(mean_h / h[i], self.cap) for i in clients], record)
        rows = self.sim.clients
        scale = {i: clip(mean_h / k, self.cap) for i, k in zip(clients, ks) if k}
        start = {i: rows[i].clone() for i, g in scale.items() if g != 1.0}

        def rescale() -> None:
            for i, x in start.items():  # Y_i <- X_i + g (Y_i - X_i); g = 1 leaves the row untouched, bit for bit
                rows[i].sub_(x).mul_(scale[i]).add_(x)
            record()

        return Contact([1.0] * len(clients), rescale)

    # ------------------------------------------------------------------ Monte-Carlo estimate
    def _estimated_factors(self) -> list[float]:
        sim, cfg = self.sim, self.sim.cfg
        p = cfg.clients_per_round / sim.n
        means = sim.clocks.means
        h = {m: expected_steps_per_contact(m, sim.round_time, p, cfg.local_steps, cfg.timing, cfg.seed,
                                           num_contacts=ESTIMATE_CONTACTS) for m in sorted(set(means))}
        stuck = [m for m in h if cfg.timing != "uniform" and heavy_tailed(m, sim.round_time, p)]
        if stuck:
            log.warning("speed_correction: estimate: clients with mean step time %s need infinitely many contacts "
                        "per step in expectation (m ln(1/(1-s/n)) >= round time %g); their estimates are arbitrary "
                        "and their factors rest on the cap %g", ", ".join(f"{m:g}" for m in stuck), sim.round_time,
                        self.cap)
        hs = [h[m] for m in means]
        mean_h = sum(hs) / len(hs)
        if mean_h <= 0:
            return [1.0] * sim.n  # no client is expected to step at all: nothing to rebalance
        return [clip(mean_h / x if x > 0 else math.inf, self.cap) for x in hs]

    @property
    def factors(self) -> list[float]:
        """The current step-size factor of every client (``normalized``: 1; its rescaling is per contact)."""
        if self.mode == "lr":
            h = self.steps_per_contact()
            mean_h = sum(h) / len(h)
            return [clip(mean_h / x, self.cap) for x in h]
        return list(self._fixed)


def make_speed_correction(sim) -> SpeedCorrection:
    """The ``speed_correction`` policy of a QuAFL simulation (``none``: factors 1, nothing else)."""
    return SpeedCorrection(sim)


__all__ = ["ESTIMATE_CONTACTS", "SpeedCorrection", "clip", "heavy_tailed",
           "make_speed_correction"]
