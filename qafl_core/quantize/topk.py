"""Top-k sparsification: the k largest-magnitude coordinates, sent as (index, float32 value) pairs.

Used by QAFeL's authors as a (biased) server quantizer (Ortega, Jafarkhani, "Quantized and Asynchronous
Federated Learning", arXiv:2410.00242, after Stich, Cordonnier, Jaggi, "Sparsified SGD with Memory", NeurIPS
2018): a coordinate that is not sent stays in the difference ``x - x_hat`` and is sent later.

Bits (exact): ``k * (32 + ceil(log2 d))`` -- a float32 value and an index of ``ceil(log2 d)`` bits per kept
coordinate, no header (``d`` and ``k`` are run parameters).

Two ways to say how many coordinates are kept:

* ``percent=p``: ``k = floor(p * d / 100)`` (the authors' "top-k p %");
* ``bits=b`` (the ``quantizer: topk`` config route, where ``bits`` is every quantizer's budget): the most
  coordinates that fit ``b`` bits per coordinate, ``k = floor(b * d / (32 + ceil(log2 d)))``, so a message
  never costs more than ``b * d`` bits and ``sit`` scales by ``b/32`` as for the other quantizers.
"""
from __future__ import annotations

import math

import torch

from qafl_core.quantize.base import Decoded, Message, _check_vec


def index_bits(d: int) -> int:
    """``ceil(log2 d)``: bits of one index into a length-``d`` vector (0 for d <= 1)."""
    return (d - 1).bit_length() if d > 1 else 0


class TopKQuantizer:
    """Keep the ``k`` largest ``|x_j|`` (exactly, float32), zero elsewhere. Deterministic; no key.

    Args:
        percent: keep ``floor(percent * d / 100)`` coordinates (0 < percent <= 100).
        bits: or keep as many as ``bits`` bits per coordinate pay for (1..32).
        segments: tensor sizes (only used to check the vector length).
    """

    name = "topk"
    needs_key = False

    def __init__(self, percent: float | None = None, bits: int | None = None, segments: list[int] | None = None):
        if (percent is None) == (bits is None):
            raise ValueError("percent: give exactly one of percent and bits")
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, (int, float))
                                    or not 0 < percent <= 100):
            raise ValueError(f"percent: expected a number in (0, 100], got {percent!r}")
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32):
            raise ValueError(f"bits: expected an integer in 1..32, got {bits!r}")
        self.percent, self.budget = percent, bits
        self.bits_per_coord = bits if bits is not None else 32
        self.dim = sum(segments) if segments is not None else None

    def k(self, d: int) -> int:
        """How many coordinates a length-``d`` message keeps."""
        if self.percent is not None:
            return min(d, math.floor(self.percent * d / 100 + 1e-9))   # 1e-9: 0.7 * 100 / 100 is not 0.7
        return min(d, self.budget * d // (32 + index_bits(d)))

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: topk needs finite values (got inf or nan)")
        d = x.numel()
        k = self.k(d)
        idx = torch.topk(x.abs(), k, sorted=False).indices.sort().values
        return Message({"indices": idx, "values": x.index_select(0, idx)}, k * (32 + index_bits(d)), d)

    def decode(self, msg: Message, key: torch.Tensor | None = None) -> Decoded:
        out = torch.zeros(msg.numel, dtype=torch.float32, device=msg.payload["values"].device)
        out.index_copy_(0, msg.payload["indices"], msg.payload["values"])
        return Decoded(out, 0)
