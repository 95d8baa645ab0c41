"""FedAvg (McMahan et al., 2017) on the simulated clock, as the QuAFL paper's code runs it (docs/baselines.md#fedavg).

One round: sample s clients; each loads the (encoded) server model — decoded against its own stale
model — runs exactly K local SGD steps and uploads its quantized displacement Delta_i, decoded
against zero (never against the server model; docs/choices.md#delta-decoding); the server applies
``X <- X - server_lr * mean_i Q(Delta_i)`` (BatchNorm statistics take the plain mean).  The round
lasts as long as the slowest sampled client's K steps, plus ``sit``: the server waits for everyone.
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.base import Simulation, vector_ops_on_one_thread


class FedAvg(Simulation):
    name = "fedavg"
    extra_state = ("clients",)

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        # stale client models are only needed as decoding keys of key-based (lattice) quantizers
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1) if getattr(quantizer, "needs_key", True) else None
        self._work = torch.empty_like(self.server)
        self._delta = torch.empty_like(self.server)
        self._work_rows: torch.Tensor | None = None   # batched mode without stale client models

    @vector_ops_on_one_thread
    def step(self) -> None:
        cfg = self.cfg
        contacted = self.sample_clients()
        down = self.encode(self.server, "down")
        acc = self.accumulator()
        slowest = 0.0
        lr = cfg.lr * self.lr_factor()
        if self.batched:
            return self._step_batched(contacted, down, acc, lr)
        for i in contacted:
            row = self.clients[i] if self.clients is not None else self._work
            start = self.decode(down, row, "server->client")
            row.copy_(start)
            self.local_sgd(row, i, cfg.local_steps, lr)
            slowest = max(slowest, self._upload(i, start, row, down, acc))
        self._finish(acc, len(contacted), slowest)

    def _upload(self, i: int, start: torch.Tensor, row: torch.Tensor, down, acc: torch.Tensor) -> float:
        """Client i sends Q(start - row); the server adds it to ``acc``. Returns the client's K-step time."""
        acc.add_(self.send(torch.sub(start, row, out=self._delta), self.zeros, "client->server", "up", i))
        self.record_contact(i, self.cfg.local_steps)
        return self.clocks.draw_sum(i, self.cfg.local_steps)

    def _step_batched(self, contacted: list[int], down, acc: torch.Tensor, lr: float) -> None:
        """The same round with the clients' local SGD batched (every client downloads, all train, all upload:
        a client's download, steps and upload touch only its own row, batch stream and message)."""
        if self.clients is None and (self._work_rows is None or len(self._work_rows) < len(contacted)):
            self._work_rows = torch.empty(len(contacted), self.task.dim, device=self.device)
        rows, starts = [], []
        for j, i in enumerate(contacted):
            row = self.clients[i] if self.clients is not None else self._work_rows[j]
            starts.append(self.decode(down, row, "server->client"))
            rows.append(row.copy_(starts[-1]))
        k = self.cfg.local_steps
        self.local_sgd_many(rows, contacted, [k] * len(contacted), [lr] * len(contacted))
        slowest = max(self._upload(i, start, row, down, acc) for i, start, row in zip(contacted, starts, rows))
        self._finish(acc, len(contacted), slowest)

    def _finish(self, acc: torch.Tensor, s: int, slowest: float) -> None:
        self.apply_server_delta(acc.div_(s), self.cfg.server_lr)
        self.server_steps += 1
        self.time += slowest + self.cfg.round_sit
