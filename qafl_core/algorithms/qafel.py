"""QAFeL: FedBuff with a hidden state and quantized messages both ways (Ortega, Jafarkhani, "Quantized and
Asynchronous Federated Learning", arXiv:2410.00242; earlier "Asynchronous Federated Learning with
Bidirectional Quantized Communications and Buffered Aggregation", arXiv:2308.00263).

State: the server model x (full precision, server only), the hidden state x_hat (the same value on the server
and on every client; x_hat^0 = x^0), FedBuff's buffer. Per server step t (Z = ``buffer_size`` arrivals):

* a job started at version t0 trains from y_0 = x_hat^{t0} (not x) for K local steps and uploads
  Q_c(y_0 - y_K) (the run's ``quantizer``), decoded against zero, weighted by FedBuff's staleness weight;
* with Z updates in the buffer: ``x <- x - server_lr * (1/Z) sum_i w(tau_i) Q_c(Delta_i)`` (FedBuff's step,
  server_lr = eta_g), then the server broadcasts ``q = Q_s(x - x_hat)`` (``server_quantizer`` /
  ``server_bits``, default the run's own) and everyone sets ``x_hat <- x_hat + q``.

The hidden state feeds the broadcast's error back: what Q_s drops stays in ``x - x_hat`` and is sent later,
so Q_s may be biased (top-k) while Q_c should be unbiased. Hence x_hat^t = x_hat^0 + sum of the q's, and with
lossless quantizers x_hat = x and the run is FedBuff's. The model evaluated is x; ``hidden_state_distance``
(a ``sim`` metric) is ``||x - x_hat||_2``.

Options:
* ``qafel_order``: ``step_then_dispatch`` (default; the job started by the Z-th arrival starts after the step,
  from x_hat^{t+1}) or ``dispatch_then_step`` (it starts at its arrival from x_hat^t, as the authors'
  logistic-regression simulator does);
* ``qafel_variant: naive``: no hidden state, the broadcast is ``Q_s(x)`` itself and clients start from it --
  the ablation showing why the hidden state matters (a coordinate that top-k never selects is lost for ever).

Bits: uploads ``Q_c`` per arrival; downloads per receiving client: every broadcast reaches all n clients
(idle ones too, so that their x_hat stays current), so ``bits_down`` grows by ``n * bits(q)`` per server step;
the ``sim`` metric ``broadcast_bits`` counts each broadcast once (the authors' "MB broadcasted").

Floating point: with a lossless Q_s (identity) the hidden state is set to x itself. A lossless channel carries
x as cheaply as x - x_hat (32 bits a coordinate either way), whereas x_hat + fl(x - x_hat) can differ from x in
the last bit where a coordinate nearly cancels; so the identity run stays FedBuff's bit for bit.
"""
from __future__ import annotations

import torch

from qafl_core.algorithms.fedbuff import FedBuff
from qafl_core.algorithms.state import QAFeLState
from qafl_core.quantize import IdentityQuantizer, make_quantizer


class QAFeL(FedBuff):
    name = "qafel"
    State = QAFeLState

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        name, bits = cfg.effective_server_quantizer
        self.server_quantizer = make_quantizer(name, bits=bits, eps=cfg.lattice_eps, bucket=cfg.qsgd_bucket,
                                               segments=task.segments)
        self.lossless_broadcast = isinstance(self.server_quantizer, IdentityQuantizer)
        self.naive = cfg.qafel_variant == "naive"
        self.dispatch_before_step = cfg.qafel_order == "dispatch_then_step"
        self.hidden = self.server.clone()        # x_hat: what every client holds
        self.broadcast_bits = 0
        self._diff = torch.empty_like(self.server)

    def download(self, client: int) -> None:
        """The new job starts from x_hat, which the client already holds: no message."""
        self.clients[client].copy_(self.hidden)

    def server_update(self) -> None:
        super().server_update()
        self.broadcast()

    def broadcast(self) -> None:
        """q = Q_s(x - x_hat) to every client, x_hat <- x_hat + q (naive: x_hat <- Q_s(x))."""
        if self.naive:
            msg = self.encode(self.server, "broadcast", quantizer=self.server_quantizer)
            self.hidden.copy_(self.decode(msg, self.hidden, "server->clients", quantizer=self.server_quantizer,
                                          receivers=self.n))
        else:
            msg = self.encode(torch.sub(self.server, self.hidden, out=self._diff), "broadcast",
                              quantizer=self.server_quantizer)
            q = self.decode(msg, self.zeros, "server->clients", quantizer=self.server_quantizer, receivers=self.n)
            if self.lossless_broadcast:
                self.hidden.copy_(self.server)
            else:
                self.hidden.add_(q)
        self.broadcast_bits += msg.bits      # bits_down counted n receivers (the channel)

    def sim_metrics(self) -> dict[str, float]:
        out = super().sim_metrics()
        out["hidden_state_distance"] = float(torch.linalg.vector_norm(self.server.double() - self.hidden.double()))
        out["broadcast_bits"] = float(self.broadcast_bits)
        return out
