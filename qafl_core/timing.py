"""Client speeds in simulated time (docs/timing.md).

Each local SGD step of client ``i`` takes an Exponential time with mean 2 (fast clients) or 8 (slow
clients); the first ``ceil(slow_fraction * n)`` clients are slow, as in the paper's code.  With
``timing="uniform"`` every step of every client takes exactly ``fast_mean`` ("uniform timing
experiments assume all clients take the same amount of time for a gradient step", ICLR §5).

Durations come from one generator per client, consumed in order, so a client's step times depend
only on the root seed and on how many steps it has taken — never on the order in which the
simulator processes events.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from qafl_core.rng import numpy_generator, torch_generator

_BLOCK = 256


def num_slow_clients(num_clients: int, slow_fraction: float) -> int:
    # the 1e-9 keeps 0.3 * 100 = 30.000000000000004 from becoming 31
    return min(num_clients, math.ceil(slow_fraction * num_clients - 1e-9))


class ClientClocks:
    """Step-duration streams of every client.

    Args:
        num_clients: n.
        timing: ``"exponential"`` or ``"uniform"``.
        slow_fraction, fast_mean, slow_mean: the speed model.
        seed: root seed (stream ``("speed", i)`` per client).
    """

    def __init__(self, num_clients: int, timing: str, slow_fraction: float, fast_mean: float,
                 slow_mean: float, seed: int):
        self.num_clients = num_clients
        self.timing = timing
        k = num_slow_clients(num_clients, slow_fraction)
        self.is_slow = [i < k for i in range(num_clients)]
        self.means = [slow_mean if s else fast_mean for s in self.is_slow]
        if timing == "uniform":
            self.means = [fast_mean] * num_clients
        self.seed = seed
        self._gens: dict[int, torch.Generator] = {}
        self._buf: dict[int, list[float]] = {}

    def draw(self, i: int) -> float:
        """The duration of client ``i``'s next local step."""
        if self.timing == "uniform":
            return self.means[i]
        buf = self._buf.get(i)
        if not buf:
            g = self._gens.get(i)
            if g is None:
                g = self._gens[i] = torch_generator(self.seed, "speed", i)
            block = torch.empty(_BLOCK, dtype=torch.float64).exponential_(1.0, generator=g) * self.means[i]
            buf = self._buf[i] = block.tolist()[::-1]  # pop() from the end = draw order
        return buf.pop()

    def draw_sum(self, i: int, k: int) -> float:
        """Time for ``k`` consecutive steps of client ``i``."""
        return sum(self.draw(i) for _ in range(k))

    def state_dict(self) -> dict[str, Any]:
        return {"gens": {i: g.get_state() for i, g in self._gens.items()},
                "buf": {i: list(b) for i, b in self._buf.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gens = {}
        for i, s in state["gens"].items():
            g = torch.Generator()
            g.set_state(s)
            self._gens[int(i)] = g
        self._buf = {int(i): list(b) for i, b in state["buf"].items()}


def expected_steps_per_contact(mean_step: float, round_time: float, contact_prob: float, max_steps: int,
                               timing: str, seed: int, num_contacts: int = 4000) -> float:
    """Monte Carlo estimate of H_i, the mean number of local steps a QuAFL client completes between
    two contacts, under the released simulator's semantics (docs/timing.md#quafl-lazy-progress: lazily completed steps that
    fit before the contact, at most K, the in-flight step's drawn duration kept across contacts).

    Used only by the ``speed_lr_correction`` extension; it draws from its own stream.
    """
    rng = numpy_generator(seed, "estimate_H", mean_step, round_time, contact_prob, max_steps)
    total, t_client, t_now = 0, 0.0, 0.0
    d = mean_step if timing == "uniform" else rng.exponential(mean_step)
    for _ in range(num_contacts):
        t_now += round_time * rng.geometric(contact_prob)
        k = 0
        while k < max_steps and t_client + d < t_now:
            t_client += d
            d = mean_step if timing == "uniform" else rng.exponential(mean_step)
            k += 1
        total += k
        t_client = t_now
    return total / num_contacts


__all__ = ["ClientClocks", "expected_steps_per_contact", "num_slow_clients"]
