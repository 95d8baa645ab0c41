"""FedBuff: buffered asynchronous aggregation (Nguyen et al., "Federated Learning with Buffered
Asynchronous Aggregation", AISTATS 2022), on the simulated clock (docs/baselines.md#fedbuff).

Every client is always working: it runs K local SGD steps on the model it last received, uploads its
quantized displacement Delta_i (decoded against zero — the paper code decoded deltas against the
server model, which is why its lattice-quantized FedBuff never learned, docs/choices.md#delta-decoding), immediately
downloads the current server model and starts again (the client whose update fills the buffer gets
the freshly updated model).  Clients finish in order of simulated time; the server keeps the first Z
finished updates in a buffer and, when it holds Z of them, applies
``X <- X - server_lr * (1/Z) sum_i w(tau_i) Q(Delta_i)`` and spends ``sit``.  ``tau_i`` is the number of
server steps since client i's model was sent; ``w`` is 1 (``staleness=none``, as in the paper code),
``1/sqrt(1+tau)`` (``sqrt``, Nguyen et al.) or ``(1+tau)^-a`` (``poly``).  The client step size is
``lr``; the paper code's extra factor s/n is available as ``fedbuff_client_lr_s_over_n``.
"""
from __future__ import annotations

import heapq
import math

import torch

from qafl_core.algorithms.base import Simulation, vector_ops_on_one_thread


class FedBuff(Simulation):
    name = "fedbuff"
    extra_state = ("clients", "start_step", "queue")

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        if cfg.effective_buffer_size > self.n:
            raise ValueError(f"buffer_size: Z = {cfg.effective_buffer_size} exceeds the {self.n} clients of the dataset")
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1)
        self.start_step = [0] * self.n
        self.queue = [(clocks.draw_sum(i, cfg.local_steps), i) for i in range(self.n)]
        heapq.heapify(self.queue)
        # (server_steps, message): the server model is encoded once per version; not checkpointed, since
        # re-encoding is deterministic (the message generator is keyed by the server step)
        self._down_cache = None
        lr = cfg.lr * (cfg.clients_per_round / self.n if cfg.fedbuff_client_lr_s_over_n else 1.0)
        self.client_lr = lr
        self._delta = torch.empty_like(self.server)

    def weight(self, tau: int) -> float:
        if self.cfg.staleness == "sqrt":
            return 1.0 / math.sqrt(1.0 + tau)
        if self.cfg.staleness == "poly":
            return (1.0 + tau) ** (-self.cfg.staleness_exponent)
        return 1.0

    def _down_message(self):
        if self._down_cache is None or self._down_cache[0] != self.server_steps:
            self._down_cache = (self.server_steps, self.encode(self.server, "down"))
        return self._down_cache[1]

    def _restart(self, i: int) -> None:
        """Client i downloads the current server model and starts its next K steps now."""
        down = self._down_message()
        row = self.clients[i]
        row.copy_(self.decode(down, row, "server->client"))
        self.bits_down += down.bits
        self.start_step[i] = self.server_steps
        heapq.heappush(self.queue, (self.time + self.clocks.draw_sum(i, self.cfg.local_steps), i))

    @vector_ops_on_one_thread
    def step(self) -> None:
        cfg = self.cfg
        z = cfg.effective_buffer_size
        acc = self.accumulator()
        for j in range(z):
            finish, i = heapq.heappop(self.queue)
            self.time = max(self.time, finish)
            row = self.clients[i]
            start = self._delta.copy_(row)          # reused buffer: the message is consumed before the next client
            self.local_sgd(row, i, cfg.local_steps, self.client_lr * self.lr_factor())
            up = self.encode(start.sub_(row), "up", i)
            acc.add_(self.decode(up, self.zeros, "client->server"), alpha=self.weight(self.server_steps - self.start_step[i]))
            self.record_contact(i, cfg.local_steps)
            self.bits_up += up.bits
            if j < z - 1:  # the buffer is not full: the client takes the current model and goes on
                self._restart(i)
        # the Z-th update fills the buffer: the server applies it, and that client gets the new model
        self.apply_server_delta(acc.div_(z), cfg.server_lr)
        self.server_steps += 1
        self.time += cfg.round_sit
        self._restart(i)
