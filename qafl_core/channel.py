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

The counters are part of the simulation's checkpointed state (:class:`qafl_core.algorithms.base.Simulation`
exposes them under their old names).
"""
from __future__ import annotations

import logging

import torch

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

    def encode(self, x: torch.Tensor, step: int, *msg_id: object, quantizer=None):
        """Encode ``x`` with the run's quantizer (or ``quantizer``), from the stream ``("quant", step, *msg_id)``."""
        q = quantizer if quantizer is not None else self.quantizer
        return q.encode(x, torch_generator(self.seed, "quant", step, *msg_id, device=self.device))

    def decode(self, msg, key: torch.Tensor | None, direction: str, time: float, quantizer=None,
               receivers: int = 1) -> torch.Tensor:
        """Deliver ``msg``: decode it against the receiver's ``key`` and count its bits and failures.

        Args:
            msg: an encoded message.
            key: the receiver's decoding key (None: zero).
            direction: ``client->server`` (counted as ``bits_up``), else ``server->client`` or
                ``server->clients`` (``bits_down``).
            time: the simulated time, for the log.
            quantizer: the quantizer that encoded ``msg`` (default: the run's).
            receivers: how many receivers get this same message (each is counted).
        """
        q = quantizer if quantizer is not None else self.quantizer
        out = q.decode(msg, key)
        if direction.endswith("->server"):
            self.bits_up += receivers * msg.bits
        else:
            self.bits_down += receivers * msg.bits
        if out.failures:
            self.decode_failures += out.failures
            self.failed_messages += 1
            if self.failed_messages <= 5 or self.failed_messages % 100 == 0:
                log.warning("%s: %d coordinate(s) of a %s message fell outside the %s decoding window at t=%.1f "
                            "(%d failed messages so far)", self.name, out.failures, direction, q.name,
                            time, self.failed_messages)
        return out.value
