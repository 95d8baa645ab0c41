"""FedAvg (McMahan et al., 2017) on the simulated clock, as the QuAFL paper's code runs it (docs/baselines.md#fedavg).

One round: sample s clients; each loads the (encoded) server model — decoded against its own stale
model — runs exactly K local SGD steps and uploads its quantized displacement Delta_i, decoded
against zero (never against the server model; docs/choices.md#delta-decoding); the server applies
``X <- X - server_lr * mean_i Q(Delta_i)`` (BatchNorm statistics take the plain mean).  The round
lasts as long as the slowest sampled client's K steps, plus ``sit``: the server waits for everyone.
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.base import RowPool, Simulation, vector_ops_on_one_thread
from qafl_core.algorithms.state import ClientModelsState


class FedAvg(Simulation):
    name = "fedavg"
    State = ClientModelsState

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        # stale client models are only needed as decoding keys of key-based (lattice) quantizers
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1) if getattr(quantizer, "needs_key", True) else None
        self._work = RowPool(self.task.dim, self.device)   # work rows without stale client models
        self._delta = torch.empty_like(self.server)

    @vector_ops_on_one_thread
    def step(self) -> None:
        cfg = self.cfg
        contacted = self.sample_clients()
        down = self.encode(self.server, "down")
        acc = self.accumulator()
        lr = cfg.lr * self.lr_factor()
        rows, starts, times = {}, {}, []

        def download(j: int):
            """Client i decodes the server model (against its stale model) and starts from it."""
            i = contacted[j]
            rows[j] = self.clients[i] if self.clients is not None else self._work.take()
            starts[j] = self.decode(down, rows[j], "server->client")
            rows[j].copy_(starts[j])
            return rows[j], cfg.local_steps, lr

        def upload(j: int) -> None:
            times.append(self._upload(contacted[j], starts.pop(j), rows[j], down, acc))
            if self.clients is None:
                self._work.give(rows.pop(j))

        self.train_many(contacted, download, upload)
        self._finish(acc, len(contacted), max(times, default=0.0))

    def _upload(self, i: int, start: torch.Tensor, row: torch.Tensor, down, acc: torch.Tensor) -> float:
        """Client i sends Q(start - row); the server adds it to ``acc``. Returns the client's K-step time."""
        self.send(torch.sub(start, row, out=self._delta), self.zeros, "client->server", "up", i, add_to=acc)
        self.record_contact(i, self.cfg.local_steps)
        return self.clocks.draw_sum(i, self.cfg.local_steps)

    def _finish(self, acc: torch.Tensor, s: int, slowest: float) -> None:
        self.apply_server_delta(acc.div_(s), self.cfg.server_lr)
        self.server_steps += 1
        self.time += slowest + self.cfg.round_sit
