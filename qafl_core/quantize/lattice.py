"""The paper code's modular lattice quantizer and its dithered extension."""
from __future__ import annotations

import math

import torch

from qafl_core.quantize.base import _CHUNK, _SEED_BITS, Decoded, Message, _check_vec, _need_generator


class LatticeQuantizer:
    """Modular scalar lattice of the paper code (docs/quantizers.md), decoded against the receiver's vector.

    Args:
        bits: bits per coordinate ``b``; ``q = 2**b`` colours.
        eps: lattice spacing.
        segments: tensor sizes (only used to check the vector length; the lattice is elementwise).
    """

    name = "lattice"
    needs_key = True

    def __init__(self, bits: int, eps: float, segments: list[int] | None = None):
        self.bits_per_coord, self.eps = bits, eps
        self.inv_eps = 1.0 / eps   # multiplying is 2x faster than dividing; off by <= 2**-52 relative
        self.q = 1 << bits
        self.dim = sum(segments) if segments is not None else None

    @property
    def window(self) -> float:
        """Half-width ``q*eps/2`` of the decoding window around the key."""
        return self.q * self.eps / 2

    def _draw_seed(self, generator: torch.Generator | None) -> int | None:
        return None                # deterministic: no seed, no header, no dither

    _dither = staticmethod(lambda seed, device: None)

    def _integer_dtype(self, x: torch.Tensor) -> torch.dtype:
        """int32 for ``m`` unless ``|x|/eps`` needs more; rejects inf/nan and ``|x|/eps >= 2**62``."""
        lo, hi = torch.aminmax(x) if x.numel() else (torch.zeros(()), torch.zeros(()))   # no |x| temporary
        top = max(-lo.item(), hi.item())              # nan propagates through both
        if not math.isfinite(top) or top * self.inv_eps + 1 >= 2.0 ** 62:
            raise ValueError(f"x: {self.name} needs finite values with |x|/eps < 2**62, got max |x| = {top} "
                             f"with eps = {self.eps}")
        return torch.int32 if top * self.inv_eps + 1 < 2.0 ** 31 - 2 else torch.int64

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        """``m = round((x + u)/eps)`` (``u = 0`` here), codes ``m mod q``; ``check`` keeps ``m``."""
        _check_vec(x, self.dim, "x")
        n = x.numel()
        seed = self._draw_seed(generator)
        dither = self._dither(seed, x.device)
        m = torch.empty(n, dtype=self._integer_dtype(x), device=x.device)
        wide = self.bits_per_coord == 32
        # a 32-bit code is the int32 bit pattern of m (two's complement), so it can share m's storage
        codes = m if wide and m.dtype == torch.int32 else torch.empty(n, dtype=torch.int32, device=x.device)
        for a in range(0, n, _CHUNK):
            t = x[a:a + _CHUNK].to(torch.float64)
            if dither is not None:
                t.add_(dither(t.numel()))
            m_c = m[a:a + _CHUNK]
            m_c.copy_(t.mul_(self.inv_eps).round_())          # half to even, as torch.round in the paper code
            if codes is not m:
                # two's complement: m & (q-1) == m mod q in [0, q); int64 -> int32 keeps the low 32 bits
                codes[a:a + _CHUNK] = m_c if wide else m_c & (self.q - 1)
        payload, header = {"codes": codes}, 0
        if seed is not None:
            payload["seed"], header = torch.tensor(seed, dtype=torch.int64), _SEED_BITS
        return Message(payload, self.bits_per_coord * n + header, n, check=m)

    def decode(self, msg: Message, key: torch.Tensor | None) -> Decoded:
        """``m_hat = c + q*round((key/eps - c)/q)``, value ``eps*m_hat`` (= the paper's
        ``q eps round(key/(q eps) - c/q) + eps c``). ``key=None`` decodes against the zero vector.
        ``failures`` counts coordinates with ``m_hat != m`` (0 when the message carries no ``check``)."""
        n = msg.numel
        if key is not None:
            _check_vec(key, n, "key", any_float=True)
        codes, check = msg.payload["codes"], msg.check
        dither = self._dither(int(msg.payload["seed"]) if "seed" in msg.payload else None, codes.device)
        out = torch.empty(n, dtype=torch.float32, device=codes.device)
        failures = 0
        inv_eps_q = self.inv_eps / self.q               # exact: q is a power of two
        for a in range(0, n, _CHUNK):
            c = codes[a:a + _CHUNK].to(torch.float64)   # any representative of m mod q decodes (signed 32-bit too)
            t = torch.zeros_like(c) if key is None else key[a:a + _CHUNK].to(torch.float64, copy=True)
            u = dither(c.numel()) if dither is not None else None
            if u is not None:
                t.add_(u)                                # the sender rounded x + u: compare like with like
            # m_hat = c + q*round((t/eps - c)/q), 3 ops instead of 6: scaling by 1/q (a power of two) commutes with
            # float64 rounding and c/q, q*round(.) are exact, so this is bit-identical to the step-by-step form
            t.mul_(inv_eps_q).sub_(c, alpha=1.0 / self.q).round_()
            torch.add(c, t, alpha=self.q, out=t)         # m_hat (exact integers)
            if check is not None:
                true_m = check[a:a + _CHUNK].to(torch.float64)
                if not torch.equal(t, true_m):          # fast path when nothing wrapped
                    failures += int(t.ne(true_m).sum())
            t.mul_(self.eps)
            if u is not None:
                t.sub_(u)
            out[a:a + _CHUNK] = t
        return Decoded(out, failures)


class DitheredLatticeQuantizer(LatticeQuantizer):
    """Lattice with subtractive dither (suite extension; unbiased, docs/quantizers.md).

    The sender draws a seed from the message generator and sends it as a 64-bit header; both sides
    regenerate ``u ~ U[-eps/2, eps/2)^d`` from it (float32 draws, chunk by chunk). Encode
    ``m = round((x + u)/eps)``, decode ``eps*m_hat - u``: the error ``eps*m - (x + u)`` is uniform on
    ``[-eps/2, eps/2]`` and independent of ``x`` (up to the 2**-24 resolution of the draws), hence
    zero-mean. Decoding uses ``key + u`` and is exact whenever ``|key - x| < (q - 1) eps/2``.
    """

    name = "dithered_lattice"

    def _draw_seed(self, generator: torch.Generator | None) -> int:
        g = _need_generator(generator, self.name)
        return int(torch.randint(0, 2 ** 62, (), generator=g, dtype=torch.int64, device=g.device))

    def _dither(self, seed: int | None, device: torch.device):
        """The dither stream of a message, on the message's device (CUDA draws other numbers than the CPU)."""
        g = torch.Generator() if device.type == "cpu" else torch.Generator(device=device)
        g.manual_seed(seed)
        eps = self.eps
        return lambda k: torch.rand(k, generator=g, device=g.device).sub_(0.5).mul_(eps)   # next k draws, in [-eps/2, eps/2)
