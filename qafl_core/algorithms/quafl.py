"""QuAFL: asynchronous, quantized federated averaging.

Zakerinia, Talaei, Nadiradze, Alistarh, "Communication-Efficient Federated Learning With Data and
Client Heterogeneity", AISTATS 2024 (arXiv:2206.10032), Algorithm 1, as specified in docs/algorithm.md.

One round (server step) at server time T:

1. sample s of n clients without replacement; encode the server model X once;
2. each contacted client i answers at once: it first completes, lazily, the local SGD steps whose
   durations fit before T (at most K since its last contact; the step in flight is dropped, its
   drawn duration kept — the released simulator's semantics, docs/timing.md#quafl-lazy-progress), sends Enc(Y_i) of its
   *full current model* Y_i, then sets ``X_i <- Q(X)/(s+1) + s Y_i/(s+1)`` and restarts its K steps;
3. the server sets ``X <- (X + sum_i Q(Y_i)) / (s+1)`` (decoding with its own X as key);
4. the clock advances by ``sit + swt`` (``sit`` scaled by b/32 when quantized).

Options (RunConfig): ``server_averaging`` / ``client_averaging`` (the Fig. 3 ablation; off means the
server adopts the clients' mean / the client adopts Q(X)), ``client_lr_scaling`` (the paper code's
client step size eta (s+1)/s when the server averages — on by default), ``client_decode_key``
(``current``: the client's current model Y_i, as in the code; ``base``: its base model X_i, as in the
paper's pseudocode), and ``speed_correction`` — this suite's extension, off by default because the
AISTATS text's mechanism for heterogeneous speeds is not available: step-size factors or a rescaled
progress that give fast and slow clients comparable weight (:mod:`qafl_core.speed`,
docs/algorithm.md#speed-heterogeneity-corrections).
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.base import Simulation, vector_ops_on_one_thread
from qafl_core.algorithms.state import QuAFLState
from qafl_core.speed import make_speed_correction
from qafl_core.timing import lazy_progress


class QuAFL(Simulation):
    name = "quafl"
    State = QuAFLState

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        s = cfg.clients_per_round
        self.p = 1.0 / (s + 1)
        self.round_time = cfg.round_sit + cfg.swt
        # (n, d) client models, every one starting from the server's initial model
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1)
        self.base = self.clients.clone() if cfg.client_decode_key == "base" else None
        self.client_time = [0.0] * self.n
        self.next_duration = [clocks.draw(i) for i in range(self.n)]
        scale = (s + 1) / s if (cfg.client_lr_scaling and cfg.server_averaging) else 1.0
        self.client_lr = [cfg.lr * scale] * self.n
        self.speed_state = None  # the running estimates of a realised-progress speed correction, if any
        self.speed = make_speed_correction(self)  # speed_correction: none = factors 1, nothing changed

    def _completed_steps(self, i: int, now: float) -> int:
        """How many of client i's local steps finish strictly before ``now`` (at most K); advances its clock."""
        k, self.next_duration[i] = lazy_progress(self.client_time[i], self.next_duration[i], now, self.cfg.local_steps,
                                                 lambda: self.clocks.draw(i))
        self.client_time[i] = now  # partial progress of the in-flight step is discarded
        return k

    @vector_ops_on_one_thread
    def step(self) -> None:
        contacted = self.sample_clients()
        down = self.encode(self.server, "down")
        acc = self.accumulator()
        now, f = self.time, self.lr_factor()
        contacts, ks = [], []

        def progress(j: int):
            """Client i completes, lazily, the local steps that finish strictly before now (at most K)."""
            i = contacted[j]
            ks.append(self._completed_steps(i, now))
            contacts.append(self.speed.contact([i], [ks[j]]))
            return self.clients[i], ks[j], self.client_lr[i] * f * contacts[j].factors[0]

        def answer(j: int) -> None:
            """Client i sends its model and averages it with the server's."""
            i = contacted[j]
            contacts[j].finish()    # speed_correction: normalized rescales the progress here
            self.record_contact(i, ks[j])
            self.exchange(i, down, acc)

        self.train_many(contacted, progress, answer)
        self.finish_round(acc, len(contacted))

    def exchange(self, i: int, down, acc: torch.Tensor) -> None:
        """Client i uploads Enc(Y_i) (the server adds it to ``acc``) and sets ``Y_i <- Q(X)/(s+1) + s Y_i/(s+1)``."""
        cfg, p = self.cfg, self.p
        y = self.clients[i]
        self.send(y, self.server, "client->server", "up", i, add_to=acc)    # acc += Q(Y_i)
        key = self.base[i] if self.base is not None else y
        if cfg.client_averaging:
            self.decode_mix(down, key, y, p, "server->client")      # y.mul_(1 - p).add_(Q(X), alpha=p)
        else:
            y.copy_(self.decode(down, key, "server->client", scratch=True))
        if self.base is not None:
            self.base[i].copy_(y)

    def finish_round(self, acc: torch.Tensor, s: int) -> None:
        """``X <- (X + sum_i Q(Y_i)) / (s+1)`` (or the clients' mean), and the clock."""
        cfg, p = self.cfg, self.p
        if cfg.server_averaging:
            self.server.mul_(p).add_(acc, alpha=(1.0 - p) / s)
        else:
            self.server.copy_(acc.div_(s))
        self.server_steps += 1
        self.time += self.round_time
