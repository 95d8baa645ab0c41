"""FedAsync (Xie, Koyejo, Gupta, "Asynchronous Federated Optimization", 2019, arXiv:1903.03934), on the
simulated clock.

The server merges every arriving client model at once, damped by its staleness. Server state: the model x and
its version t, the number of merges so far. A job started at version tau trains from x_tau for H = K local steps

    y <- y - gamma * (grad f_i(y; batch) + rho * (y - x_tau))          (``lr`` = gamma, ``fedasync_rho`` = rho)

and uploads its full model y (not a delta). On arrival, with d = t - tau the staleness (0: nothing was merged
since the job started),

    alpha_t = alpha * s(d),        x <- (1 - alpha_t) x + alpha_t y,        t <- t + 1

and the server spends ``sit`` on the merge. Staleness functions (``fedasync_staleness``):
constant ``s = 1``; polynomial ``s(d) = (d + 1)^-a``; hinge ``s(d) = 1`` if ``d <= b`` else
``1 / (a (d - b) + 1)`` (``fedasync_a``, ``fedasync_b``; the paper uses a = 0.5 for the polynomial and
a = 10, b = 4 for the hinge). ``alpha`` is ``fedasync_alpha`` (the paper: 0.6 to 0.9).

Scheduling: C jobs run at once (``concurrency``, default n); whenever one arrives, the server triggers a client
drawn uniformly among the idle ones with the freshly merged model and version t + 1 -- the paper's scheduler
with staleness coming from the simulated clock (:mod:`qafl_core.algorithms.asynchronous`). Updates merge in
arrival order.

Quantization: the client uploads its model, decoded against the server model as key (as QuAFL does), and
downloads the server model, decoded against its own last model; bits are counted both ways.
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.asynchronous import Arrival, AsyncSimulation


def staleness_factor(kind: str, d: int, a: float, b: float) -> float:
    """s(d) of FedAsync: ``constant`` 1, ``poly`` (d+1)^-a, ``hinge`` 1 if d <= b else 1/(a(d-b)+1)."""
    if kind == "poly":
        return (d + 1.0) ** (-a)
    if kind == "hinge":
        return 1.0 if d <= b else 1.0 / (a * (d - b) + 1.0)
    return 1.0


def mix(x: torch.Tensor, y: torch.Tensor, alpha_t: float) -> torch.Tensor:
    """``x <- (1 - alpha_t) x + alpha_t y`` in place."""
    return x.mul_(1.0 - alpha_t).add_(y, alpha=alpha_t)


class FedAsync(AsyncSimulation):
    name = "fedasync"
    arrivals_per_step = 1     # every arrival is merged on its own

    def alpha_t(self, staleness: int) -> float:
        cfg = self.cfg
        return cfg.fedasync_alpha * staleness_factor(cfg.fedasync_staleness, staleness, cfg.fedasync_a, cfg.fedasync_b)

    def train(self, arrivals: list[Arrival]) -> None:
        """K local steps; with ``rho > 0`` one step at a time, each followed by the proximal pull
        ``y <- y - gamma rho (y_before - x_tau)`` (the gradient is taken at ``y_before``, as in the paper)."""
        rho = self.cfg.fedasync_rho
        if rho == 0:
            return super().train(arrivals)
        rows = [self.clients[a.client] for a in arrivals]
        starts = [self._starts.take().copy_(r) for r in rows]
        prev = [self._starts.take() for _ in rows]

        def save(j: int):
            prev[j].copy_(rows[j])
            return rows[j], 1, arrivals[j].lr

        def pull(j: int) -> None:
            rows[j].sub_(prev[j].sub_(starts[j]), alpha=arrivals[j].lr * rho)

        for _ in range(self.cfg.local_steps):
            self.train_many([a.client for a in arrivals], save, pull)
        for a, s in zip(arrivals, starts):
            self.receive(a, s)
        for t in starts + prev:
            self._starts.give(t)

    def receive(self, arrival: Arrival, start: torch.Tensor) -> None:
        i = arrival.client
        mix(self.server, self.send(self.clients[i], self.server, "client->server", "up", i),
            self.alpha_t(arrival.staleness))
        self.record_contact(i, self.cfg.local_steps)

    def download(self, client: int) -> None:
        row = self.clients[client]
        row.copy_(self.send(self.server, row, "server->client", "down"))
