"""FedBuff: buffered asynchronous aggregation (Nguyen, Malik, Zhan, Yousefpour, Rabbat, Malek, Huba,
"Federated Learning with Buffered Asynchronous Aggregation", AISTATS 2022, arXiv:2106.06639), on the simulated
clock, as the released code of the QuAFL paper runs it (Zakerinia et al., AISTATS 2024, arXiv:2206.10032).

Clients run jobs of K local SGD steps on the model they downloaded when the job started, at most C at once
(``concurrency``; default n: every client always busy, the paper code). A finished job uploads its quantized
displacement Delta_i = (start model - trained model), decoded against zero (the paper code decoded deltas
against the server model, which is why its lattice-quantized FedBuff never learned). The server keeps the
updates in a buffer and, when it holds Z of them (``buffer_size``, default s), applies
``X <- X - server_lr * (1/Z) sum_i w(tau_i) Q(Delta_i)`` and spends ``sit``. ``tau_i`` is the staleness of
update i in server steps; ``w`` is 1 (``staleness=none``, as in the paper code), ``1/sqrt(1+tau)`` (``sqrt``,
Nguyen et al.) or ``(1+tau)^-a`` (``poly``).

BatchNorm running statistics (the floating buffers after the parameters in a model vector) are not a quantity one
can step by stale displacements: a running variance that each job shrinks from its own, older start would be
shrunk again and again (seen: Fashion-MNIST CNN with Adam, variances below zero and a NaN loss at t = 37). They
take the plain mean of the Z arrivals' own statistics, each the job's start minus the decoded displacement of
these coordinates (exactly the client's trained statistics with an exact channel). This is what the suite's
FedAvg does too (there every start is X, so subtracting the mean displacement gives that mean) and what the
paper code meant by averaging the statistics instead of applying deltas to them.

Who gets which model (:mod:`qafl_core.algorithms.asynchronous` states the event rules): each arrival starts a
new job for a client drawn uniformly among the idle ones (with C = n: the reporter itself); the jobs started by
the first Z-1 arrivals of a buffer download the current model X_t (start version t), the job started by the
Z-th arrival downloads X_{t+1} after the flush. Every download is the server model encoded once per version
and decoded against the receiving client's own last model. The client step size is ``lr``; the paper code's
extra factor s/n is available as ``fedbuff_client_lr_s_over_n``.
"""
from __future__ import annotations

import math

import torch

from qafl_core.algorithms.asynchronous import Arrival, AsyncSimulation


class FedBuff(AsyncSimulation):
    name = "fedbuff"

    def __init__(self, cfg, task, quantizer, clocks):
        if cfg.effective_buffer_size > task.num_clients:
            raise ValueError(f"buffer_size: Z = {cfg.effective_buffer_size} exceeds the {task.num_clients} clients "
                             "of the dataset")
        super().__init__(cfg, task, quantizer, clocks)
        # (server_steps, message): the server model is encoded once per version; not checkpointed, since
        # re-encoding is deterministic (the message generator is keyed by the server step)
        self._down_cache = None
        self.client_lr = cfg.lr * (cfg.clients_per_round / self.n if cfg.fedbuff_client_lr_s_over_n else 1.0)
        self._buffer: torch.Tensor | None = None
        # the Z arrivals' BatchNorm statistics, summed (None: the model has no floating buffers)
        self._stats = torch.empty_like(self.server[self.num_params:]) if self.num_params < self.task.dim else None

    @property
    def arrivals_per_step(self) -> int:
        return self.cfg.effective_buffer_size

    def weight(self, tau: int) -> float:
        """The staleness weight w(tau) of an update."""
        if self.cfg.staleness == "sqrt":
            return 1.0 / math.sqrt(1.0 + tau)
        if self.cfg.staleness == "poly":
            return (1.0 + tau) ** (-self.cfg.staleness_exponent)
        return 1.0

    def begin_step(self) -> None:
        self._buffer = self.accumulator()
        if self._stats is not None:
            self._stats.zero_()

    def receive(self, arrival: Arrival, start: torch.Tensor) -> None:
        """Q(start - trained), decoded against zero, enters the buffer with weight w(tau); the statistics
        part of start - Q(start - trained) enters the statistics' sum."""
        i, p = arrival.client, self.num_params
        if self._stats is not None:
            self._stats.add_(start[p:])
        up = self.send(start.sub_(self.clients[i]), self.zeros, "client->server", "up", i)  # start: reused buffer
        self._buffer.add_(up, alpha=self.weight(arrival.staleness))
        if self._stats is not None:
            self._stats.sub_(up[p:])
        self.record_contact(i, self.cfg.local_steps)

    def server_update(self) -> None:
        """``X <- X - server_lr * (1/Z) sum_i w(tau_i) Q(Delta_i)`` on the parameters; the statistics become
        the arrivals' mean."""
        z = self.arrivals_per_step
        stats = None if self._stats is None else self._stats.div_(z)
        self.apply_server_delta(self._buffer.div_(z), self.cfg.server_lr, stats)

    def _down_message(self):
        if self._down_cache is None or self._down_cache[0] != self.server_steps:
            self._down_cache = (self.server_steps, self.encode(self.server, "down"))
        return self._down_cache[1]

    def download(self, client: int) -> None:
        """The client decodes the current server model's message against its own last model."""
        down = self._down_message()
        row = self.clients[client]
        row.copy_(self.decode(down, row, "server->client", scratch=True))
