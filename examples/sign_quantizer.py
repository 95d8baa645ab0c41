"""Example quantizer: scaled signs (signSGD with a norm scale; Bernstein et al., "signSGD: Compressed
Optimisation for Non-Convex Problems", ICML 2018, arXiv:1802.04434), with an exact bit count.

One file plus one registration line (README "Extending the suite"):

    from examples.sign_quantizer import SignQuantizer
    register_quantizer("sign", lambda bits, eps, bucket, segments: SignQuantizer())

A message is one sign bit per coordinate plus the float32 scale ``mean |x|``: ``d + 32`` bits, and the
receiver decodes ``scale * sign(x)`` without a key.  Run it with ``--set quantizer=sign --set bits=1``.
"""
from __future__ import annotations

import torch

from qafl_core.quantize import Decoded, Message


class SignQuantizer:
    name = "sign"
    bits_per_coord = 1
    needs_key = False  # decoding does not use the receiver's own vector

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        scale = x.abs().mean() if x.numel() else x.new_zeros(())
        return Message({"signs": x >= 0, "scale": scale.reshape(1).clone()}, x.numel() + 32, x.numel())

    def decode(self, msg: Message, key: torch.Tensor | None = None) -> Decoded:
        signs = msg.payload["signs"].to(torch.float32).mul_(2).sub_(1)  # {0, 1} -> {-1, +1}
        return Decoded(signs.mul_(msg.payload["scale"]), 0)
