"""QSGD with a norm scale (Alistarh, Grubic, Li, Tomioka, Vojnovic, "QSGD: Communication-Efficient SGD via
Gradient Quantization and Encoding", NeurIPS 2017, arXiv:1610.02132), the unbiased client quantizer of QAFeL's
authors (Ortega, Jafarkhani, arXiv:2410.00242).

With ``s`` levels, per bucket (default: the whole vector) of norm ``||v||_2``:
``Q(v)_j = ||v|| sign(v_j) l_j / s``, ``a = s |v_j| / ||v||``, ``l_j = floor(a) + Bernoulli(a - floor(a))``;
a bucket with ``||v|| < 1e-10`` is sent as zeros. ``E[Q(v)] = v``.

Bits (exact): ``32`` per bucket (the float32 norm) ``+ d * (1 + ceil(log2(s + 1)))`` (a sign and a level in
``0..s`` per coordinate). Through the ``quantizer: qsgd_norm`` config route ``bits = b`` sets the most levels
that fit ``b`` bits per coordinate, ``s = 2**(b-1) - 1`` (b >= 2).

Numerics: norms and levels are computed in float64 from the float32 norm that is sent, so sender and receiver
agree; ``l_j`` is clamped to ``s`` (the float32 norm may round below ``|v_j|``). The Bernoulli draws are
``U < a - floor(a)`` with ``U`` uniform float32 from the message generator, one per coordinate, in order.
"""
from __future__ import annotations

import math

import torch

from qafl_core.quantize.base import Decoded, Message, _check_vec, _need_generator

_TINY = 1e-10


class NormQSGDQuantizer:
    """Unbiased QSGD with ``levels`` = s levels per sign and one float32 norm per bucket.

    Args:
        levels: s >= 1.
        bucket: bucket size (contiguous in the flat vector, the last one shorter); None = the whole vector.
        segments: tensor sizes (only used to check the vector length).
    """

    name = "qsgd_norm"
    needs_key = False

    def __init__(self, levels: int, bucket: int | None = None, segments: list[int] | None = None):
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 2 ** 31 - 1:
            raise ValueError(f"levels: expected an integer in 1..2**31-1, got {levels!r}")
        if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1):
            raise ValueError(f"bucket: expected a positive integer bucket size or None, got {bucket!r}")
        self.levels, self.bucket = levels, bucket
        self.bits_per_coord = 1 + math.ceil(math.log2(levels + 1))
        self.dim = sum(segments) if segments is not None else None

    @classmethod
    def from_bits(cls, bits: int, bucket: int | None = None, segments: list[int] | None = None) -> "NormQSGDQuantizer":
        """The most levels that fit ``bits`` bits per coordinate (a sign bit and ``bits - 1`` level bits)."""
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
            raise ValueError(f"bits: qsgd_norm needs an integer in 2..32 (a sign and a level), got {bits!r}")
        return cls(2 ** (bits - 1) - 1, bucket, segments)

    def _buckets(self, d: int) -> tuple[int, int]:
        size = self.bucket if self.bucket is not None else max(d, 1)
        return size, -(-d // size)

    def _per_coord(self, values: torch.Tensor, d: int, size: int) -> torch.Tensor:
        return values.repeat_interleave(size)[:d]

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        g = _need_generator(generator, self.name)
        return self.encode_with_uniforms(x, torch.rand(x.numel(), generator=g, device=g.device))

    def encode_with_uniforms(self, x: torch.Tensor, u: torch.Tensor) -> Message:
        """:meth:`encode` with the uniforms ``u`` (one per coordinate) given."""
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: qsgd_norm needs finite values (got inf or nan)")
        d = x.numel()
        size, nb = self._buckets(d)
        v = x.to(torch.float64)
        sq = torch.zeros(nb * size, dtype=torch.float64, device=x.device)
        sq[:d] = v * v
        norms = sq.view(nb, size).sum(1).sqrt().to(torch.float32)       # what is sent
        n64 = self._per_coord(norms.to(torch.float64), d, size)
        live = n64 >= _TINY
        a = v.abs().mul_(self.levels).div_(torch.where(live, n64, torch.ones_like(n64)))
        low = a.floor()
        level = low.add_((u.to(torch.float64) < a.sub_(low)).to(torch.float64)).clamp_(max=self.levels)
        level = torch.where(live, level, torch.zeros_like(level)).mul_(torch.sign(v))
        codes = level.to(torch.int32)
        return Message({"levels": codes, "norms": norms}, 32 * nb + self.bits_per_coord * d, d)

    def decode(self, msg: Message, key: torch.Tensor | None = None) -> Decoded:
        d = msg.numel
        size, _ = self._buckets(d)
        n64 = self._per_coord(msg.payload["norms"].to(torch.float64), d, size)
        out = msg.payload["levels"].to(torch.float64).mul_(n64).div_(self.levels)
        return Decoded(out.to(torch.float32), 0)
