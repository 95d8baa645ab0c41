"""Per-tensor scalar quantization as in FLSim (the framework of QAFeL's authors' neural-network experiments,
Ortega, Jafarkhani, arXiv:2410.00242): each weight tensor is mapped affinely from ``[min, max]`` onto
``2**b`` levels with round-to-nearest; tensors marked full precision (biases) travel as float32.

Bits (exact): per quantized tensor ``b * numel + 96`` (a 96-bit header: float32 min and max and a 32-bit field
for ``b``), per full-precision tensor ``32 * numel``. Decoding error at most half a level, ``(max - min) /
(2 * (2**b - 1))``, per coordinate. Deterministic (biased) and keyless.

Not in the ``quantizer`` registry: its bit count depends on which tensors are biases, and the registry's
builders only receive tensor sizes. Build it with ``full_precision`` flags from the model's tensor list.
"""
from __future__ import annotations

import torch

from qafl_core.quantize.base import Decoded, Message, _check_vec

HEADER_BITS = 96


class ScalarQuantizer:
    """Affine min-max round-to-nearest with ``bits`` bits per coordinate, per tensor.

    Args:
        bits: b in 1..16.
        segments: tensor sizes of the flat vector.
        full_precision: one flag per segment; True = sent as float32 (biases). None = all quantized.
    """

    name = "scalar"
    needs_key = False

    def __init__(self, bits: int, segments: list[int], full_precision: list[bool] | None = None):
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
            raise ValueError(f"bits: expected an integer in 1..16, got {bits!r}")
        flags = list(full_precision) if full_precision is not None else [False] * len(segments)
        if len(flags) != len(segments):
            raise ValueError(f"full_precision: expected {len(segments)} flags (one per segment), got {len(flags)}")
        self.bits_per_coord, self.levels = bits, (1 << bits) - 1
        self.segments, self.full_precision = [int(s) for s in segments], [bool(f) for f in flags]
        self.dim = sum(self.segments)

    def bits_of(self) -> int:
        """Exact size of one message."""
        return sum(32 * n if fp else self.bits_per_coord * n + HEADER_BITS
                   for n, fp in zip(self.segments, self.full_precision) if n)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x: scalar needs finite values (got inf or nan)")
        out = x.clone()          # full-precision segments are sent as they are; the others become codes
        lo, hi = torch.zeros(len(self.segments), device=x.device), torch.zeros(len(self.segments), device=x.device)
        a = 0
        for j, (n, fp) in enumerate(zip(self.segments, self.full_precision)):
            seg = out[a:a + n]
            if n and not fp:
                lo[j], hi[j] = seg.min(), seg.max()
                unit = float(hi[j] - lo[j]) / self.levels
                seg.sub_(lo[j]).div_(unit if unit > 0 else 1.0).round_()
            a += n
        return Message({"values": out, "min": lo, "max": hi}, self.bits_of(), self.dim)

    def decode(self, msg: Message, key: torch.Tensor | None = None) -> Decoded:
        out = msg.payload["values"].clone()
        lo, hi = msg.payload["min"], msg.payload["max"]
        a = 0
        for j, (n, fp) in enumerate(zip(self.segments, self.full_precision)):
            if n and not fp:
                unit = float(hi[j] - lo[j]) / self.levels
                out[a:a + n].mul_(unit).add_(lo[j]).clamp_(max=float(hi[j]))
            a += n
        return Decoded(out, 0)
