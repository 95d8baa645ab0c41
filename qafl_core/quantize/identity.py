"""The identity quantizer: float32 as is (32 bits per coordinate)."""
from __future__ import annotations

import torch

from qafl_core.quantize.base import Decoded, Message, Sent, _check_out, _check_vec


class IdentityQuantizer:
    """float32 as is (docs/quantizers.md#identity): 32 bits per coordinate, no key, never fails."""

    name = "identity"
    bits_per_coord = 32
    needs_key = False

    def __init__(self, segments: list[int] | None = None, copy: bool = True):
        self.dim = sum(segments) if segments is not None else None
        self.copy = copy

    def borrowing(self) -> "IdentityQuantizer":
        """A zero-copy twin: ``encode`` wraps ``x`` itself and ``decode`` returns the payload itself.

        Contract: the sender must not change ``x`` until every receiver has decoded and consumed the
        message, and receivers must not change the decoded value. The simulator's algorithms keep it
        (:class:`qafl_core.algorithms.base.Simulation` switches to this twin); results are bit-identical.
        """
        twin = IdentityQuantizer(copy=False)
        twin.dim = self.dim
        return twin

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        # snapshot: the sender may change x (e.g. average in place) before the receiver decodes
        return Message({"values": x.clone() if self.copy else x}, 32 * x.numel(), x.numel())

    def decode(self, msg: Message, key: torch.Tensor | None = None, out: torch.Tensor | None = None) -> Decoded:
        # fresh tensor: one message may be decoded by several receivers that mutate what they get
        v = msg.payload["values"]
        if out is not None:
            return Decoded(_check_out(out, v.numel(), v.device).copy_(v), 0)
        return Decoded(v.clone() if self.copy else v, 0)

    def send(self, x: torch.Tensor, key: torch.Tensor | None = None, generator: torch.Generator | None = None,
             out: torch.Tensor | None = None) -> Sent:
        """``decode(encode(x))`` with one copy (none when borrowing)."""
        _check_vec(x, self.dim, "x")
        if out is not None:
            value = _check_out(out, x.numel(), x.device).copy_(x)
        else:
            value = x.clone() if self.copy else x
        return Sent(value, 0, 32 * x.numel())
