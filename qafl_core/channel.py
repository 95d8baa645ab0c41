"""The channel every algorithm sends through: encoding, decoding against the receiver's key, exact bits, failures.

One place for what each send involves (docs/quantizers.md):

* **Encoding** from the message's own named random stream (:mod:`qafl_core.rng`): ``("quant", server step,
  *message id)`` under the root seed, on the run's device, so a message's randomness does not depend on how
  many other messages were sent.
* **Decoding** against the *receiver's* key (its own model, or zero for deltas), never the sender's value.
* **Exact bits**, counted when a message is delivered: ``Message.bits`` (payload and headers) per receiver,
  as ``bits_up`` (client to server) or ``bits_down`` (server to client(s)). A message decoded once for many
  receivers (a broadcast) is counted once per receiver.
* **Decode failures** (coordinates a lattice decoded outside its window): counted and logged, never silent.
* **Averaging on arrival**: ``send(..., add_to=acc)`` adds an upload into the server's sum and
  :meth:`Channel.decode_mix` averages a download into the client's model, each bit for bit the separate
  steps; the lattice fuses them into its own pass (one fewer write and read of the model per message).
* **One-receiver messages** (an upload, a download encoded for one client) go through :meth:`Channel.send`:
  the quantizer's fused ``send`` (encode and decode in one pass, no codes; the same value, bits and failures
  as :meth:`Channel.encode` then :meth:`Channel.decode`, tested bit for bit) into a work buffer the channel
  reuses. A message several receivers decode (QuAFL's server model) is encoded once and decoded by each.

The counters are part of the simulation's checkpointed state (:class:`qafl_core.algorithms.base.Simulation`
exposes them under their old names).
"""
from __future__ import annotations

import logging

import torch

from qafl_core.quantize import IdentityQuantizer, LatticeQuantizer, QSGDQuantizer
from qafl_core.rng import torch_generator

log = logging.getLogger("qafl")


class Channel:
    """Sends of one run.

    Args:
        quantizer: the run's quantizer (a send may name another one, e.g. QAFeL's server quantizer).
        seed: the run's root seed.
        device: where the run's vectors live (the generators of the messages are made there).
        name: the algorithm's name, for log messages.
    """

    def __init__(self, quantizer, seed: int, device: torch.device, name: str):
        self.quantizer, self.seed, self.device, self.name = quantizer, seed, device, name
        self.bits_up = 0
        self.bits_down = 0
        self.decode_failures = 0
        self.failed_messages = 0
        self._work: dict[str, torch.Tensor] = {}   # reused outputs: a fresh 26 MB tensor costs page faults

    def encode(self, x: torch.Tensor, step: int, *msg_id: object, quantizer=None):
        """Encode ``x`` with the run's quantizer (or ``quantizer``), from the stream ``("quant", step, *msg_id)``."""
        q = quantizer if quantizer is not None else self.quantizer
        return q.encode(x, torch_generator(self.seed, "quant", step, *msg_id, device=self.device))

    def send(self, x: torch.Tensor, key: torch.Tensor | None, direction: str, time: float, step: int,
             *msg_id: object, quantizer=None, receivers: int = 1, add_to: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Encode ``x`` (stream ``("quant", step, *msg_id)``) and deliver it at once: :meth:`encode` then
        :meth:`decode`, with the same value, bits and failures, in one pass without the codes.

        The value is the channel's work buffer (or ``x`` itself for the engine's zero-copy identity): read
        it before the next send and never change it. ``add_to``: the receiver adds the value into this
        vector (the server's sum of uploads) and gets it back, bit for bit ``add_to.add_(value)``; the
        lattice does it in the send's own pass.
        """
        q = quantizer if quantizer is not None else self.quantizer
        g = torch_generator(self.seed, "quant", step, *msg_id, device=self.device)
        if add_to is not None and getattr(q, "fused_accumulate", False):
            sent = q.send(x, key, g, out=add_to, accumulate=True)
            self._count(q, sent.bits, sent.failures, direction, time, receivers)
            return add_to
        if not hasattr(q, "send"):                  # a quantizer without a fused send (topk, qsgd_norm)
            value = self.decode(q.encode(x, g), key, direction, time, quantizer=q, receivers=receivers)
        else:
            borrows = isinstance(q, IdentityQuantizer) and not q.copy     # returns x itself: nothing to write
            sent = q.send(x, key, g, out=None if borrows else self._buffer("send", x))
            self._count(q, sent.bits, sent.failures, direction, time, receivers)
            value = sent.value
        return value if add_to is None else add_to.add_(value)

    def decode(self, msg, key: torch.Tensor | None, direction: str, time: float, quantizer=None,
               receivers: int = 1, scratch: bool = False) -> torch.Tensor:
        """Deliver ``msg``: decode it against the receiver's ``key`` and count its bits and failures.

        Args:
            msg: an encoded message.
            key: the receiver's decoding key (None: zero).
            direction: ``client->server`` (counted as ``bits_up``), else ``server->client`` or
                ``server->clients`` (``bits_down``).
            time: the simulated time, for the log.
            quantizer: the quantizer that encoded ``msg`` (default: the run's).
            receivers: how many receivers get this same message (each is counted).
            scratch: the caller reads the value before the next scratch decode and never changes it; it
                may then be the channel's work buffer instead of a fresh tensor.
        """
        q = quantizer if quantizer is not None else self.quantizer
        if scratch and isinstance(q, (LatticeQuantizer, QSGDQuantizer)):     # decoders that write into ``out``
            out = q.decode(msg, key, out=self._buffer("decode", msg.payload["codes"], msg.numel))
        else:
            out = q.decode(msg, key)
        self._count(q, msg.bits, out.failures, direction, time, receivers)
        return out.value

    def decode_mix(self, msg, key: torch.Tensor | None, y: torch.Tensor, p: float, direction: str, time: float,
                   quantizer=None, receivers: int = 1) -> torch.Tensor:
        """Deliver ``msg`` to a receiver that averages it into its model ``y``: ``y <- (1-p) y + p v`` with
        ``v`` the value :meth:`decode` gives against ``key`` (which may be ``y`` itself), bit for bit
        ``y.mul_(1 - p).add_(v, alpha=p)``; bits and failures counted. The lattice decodes and averages in
        one pass (:meth:`qafl_core.quantize.LatticeQuantizer.decode_mix`). Returns ``y``."""
        q = quantizer if quantizer is not None else self.quantizer
        if not hasattr(q, "decode_mix"):
            v = self.decode(msg, key, direction, time, quantizer=q, receivers=receivers, scratch=True)
            return y.mul_(1.0 - p).add_(v, alpha=p)
        out = q.decode_mix(msg, key, y, p)
        self._count(q, msg.bits, out.failures, direction, time, receivers)
        return y

    def _count(self, q, bits: int, failures: int, direction: str, time: float, receivers: int) -> None:
        """Count a delivered message's bits (per receiver) and decode failures (logged)."""
        if direction.endswith("->server"):
            self.bits_up += receivers * bits
        else:
            self.bits_down += receivers * bits
        if failures:
            self.decode_failures += failures
            self.failed_messages += 1
            if self.failed_messages <= 5 or self.failed_messages % 100 == 0:
                log.warning("%s: %d coordinate(s) of a %s message fell outside the %s decoding window at t=%.1f "
                            "(%d failed messages so far)", self.name, failures, direction, q.name,
                            time, self.failed_messages)

    def _buffer(self, name: str, like: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """A float32 work vector of length ``n`` (default ``like``'s) on ``like``'s device, reused."""
        n = like.numel() if n is None else n
        buf = self._work.get(name)
        if buf is None or buf.numel() != n or buf.device != like.device:
            buf = self._work[name] = torch.empty(n, dtype=torch.float32, device=like.device)
        return buf
