"""FedAvg (McMahan et al., 2017) on the simulated clock, as the QuAFL paper's code runs it (PAPER.md §5.1).

One round: sample s clients; each loads the (encoded) server model — decoded against its own stale
model — runs exactly K local SGD steps and uploads its quantized displacement Delta_i, decoded
against zero (never against the server model; PAPER.md §5.2); the server applies
``X <- X - server_lr * mean_i Q(Delta_i)`` (BatchNorm statistics take the plain mean).  The round
lasts as long as the slowest sampled client's K steps, plus ``sit``: the server waits for everyone.
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.base import Simulation


class FedAvg(Simulation):
    name = "fedavg"
    extra_state = ("clients",)

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        # stale client models are only needed as decoding keys of key-based (lattice) quantizers
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1) if getattr(quantizer, "needs_key", True) else None
        self._work = torch.empty_like(self.server)

    def step(self) -> None:
        cfg = self.cfg
        contacted = self.sample_clients()
        down = self.encode(self.server, "down")
        acc = torch.zeros_like(self.server)
        slowest = 0.0
        lr = cfg.lr * self.lr_factor()
        for i in contacted:
            row = self.clients[i] if self.clients is not None else self._work
            start = self.decode(down, row, "server->client")
            row.copy_(start)
            self.task.local_sgd(row, i, cfg.local_steps, lr)
            up = self.encode(start - row, "up", i)
            acc.add_(self.decode(up, self.zeros, "client->server"))
            self.record_contact(i, cfg.local_steps)
            slowest = max(slowest, self.clocks.draw_sum(i, cfg.local_steps))
            self.bits_up += up.bits
            self.bits_down += down.bits
        self.apply_server_delta(acc.div_(len(contacted)), cfg.server_lr)
        self.server_steps += 1
        self.time += slowest + cfg.round_sit
