"""Frozen copy of the lattice, dithered-lattice and QSGD quantizers as of commit 2d94557 (before the
fused kernels), the oracle of the bit-identity tests in ``tests/test_quantize.py``. Do not edit: the
current implementation must reproduce this one bit for bit on CPU (codes, oracle, decoded values, failure
counts, bits and the random draws for a given generator). Self-contained on purpose.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_CHUNK = 1 << 18
_SEED_BITS = 64
_MINMAX_BITS = 64


@dataclass
class Message:
    payload: dict
    bits: int
    numel: int
    check: torch.Tensor | None = None


@dataclass
class Decoded:
    value: torch.Tensor
    failures: int


def _check_vec(v, n: int | None, field: str, any_float: bool = False) -> None:
    """ValueError naming ``field`` unless ``v`` is a 1-D float32 (``any_float``: floating) tensor of length ``n``."""
    if not (isinstance(v, torch.Tensor) and v.dim() == 1 and (n is None or v.numel() == n)
            and (v.is_floating_point() if any_float else v.dtype == torch.float32)):
        got = f"{v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        need = f"1-D {'float' if any_float else 'float32'} tensor" + (f" of length {n}" if n is not None else "")
        raise ValueError(f"{field}: expected a {need}, got a {got}")


def _need_generator(generator: torch.Generator | None, name: str) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: {name} encoding is random and needs a per-message torch.Generator, "
                         f"got {generator!r}")
    return generator


class LatticeQuantizer:
    """Modular scalar lattice of the paper code, decoded against the receiver's vector.

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

    _dither = staticmethod(lambda seed: None)

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
        dither = self._dither(seed)
        m = torch.empty(n, dtype=self._integer_dtype(x))
        wide = self.bits_per_coord == 32
        # a 32-bit code is the int32 bit pattern of m (two's complement), so it can share m's storage
        codes = m if wide and m.dtype == torch.int32 else torch.empty(n, dtype=torch.int32)
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
        dither = self._dither(int(msg.payload["seed"]) if "seed" in msg.payload else None)
        out = torch.empty(n, dtype=torch.float32)
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
    """Lattice with subtractive dither (suite extension; unbiased).

    The sender draws a seed from the message generator and sends it as a 64-bit header; both sides
    regenerate ``u ~ U[-eps/2, eps/2)^d`` from it (float32 draws, chunk by chunk). Encode
    ``m = round((x + u)/eps)``, decode ``eps*m_hat - u``: the error ``eps*m - (x + u)`` is uniform on
    ``[-eps/2, eps/2]`` and independent of ``x`` (up to the 2**-24 resolution of the draws), hence
    zero-mean. Decoding uses ``key + u`` and is exact whenever ``|key - x| < (q - 1) eps/2``.
    """

    name = "dithered_lattice"

    def _draw_seed(self, generator: torch.Generator | None) -> int:
        g = _need_generator(generator, self.name)
        return int(torch.randint(0, 2 ** 62, (), generator=g, dtype=torch.int64))

    def _dither(self, seed: int | None):
        g = torch.Generator()
        g.manual_seed(seed)
        eps = self.eps
        return lambda k: torch.rand(k, generator=g).sub_(0.5).mul_(eps)   # next k draws, in [-eps/2, eps/2)


class QSGDQuantizer:
    """Unbiased stochastic rounding onto ``k = 2**b`` levels per bucket.

    Per bucket: ``unit = (max - min)/(k - 1)``, code ``v = floor((x - min)/unit + U)`` with
    ``U ~ U[0, 1)`` from the message generator, value ``min + v*unit``; constant buckets give codes 0.
    Arithmetic is float32 for ``b <= 16`` (as the paper code) and float64 above, where float32 cannot
    resolve the levels. Work runs over cache-sized blocks of whole buckets (or pieces of one big bucket).

    Args:
        bits: bits per coordinate ``b`` (``b = 1``: two levels, min and max).
        bucket: bucket size within each segment; None = one bucket per segment.
        segments: tensor sizes; None = the whole vector is one segment.
    """

    name = "qsgd"
    needs_key = False

    def __init__(self, bits: int, bucket: int | None = None, segments: list[int] | None = None):
        self.bits_per_coord = bits
        self.levels = 1 << bits
        self.bucket, self.segments = bucket, segments
        self.dim = sum(segments) if segments is not None else None
        self.work = torch.float32 if bits <= 16 else torch.float64
        self._plans: dict[int, tuple[list, int, list]] = {}

    def _plan(self, d: int):
        """``runs`` of equal buckets ``(start, count, size)``, bucket count, and work ``blocks``.

        A block is ``(start, end, first_bucket, rows, size, index)``: ``rows`` buckets of ``size`` viewed
        as a (rows, size) grid, or -- ``index`` set -- several small runs merged (ragged), or a piece of one
        bucket larger than a chunk (``rows = 0``)."""
        if d in self._plans:
            return self._plans[d]
        runs, a = [], 0
        for length in (self.segments if self.segments is not None else [d]):
            size = min(self.bucket or length, length)
            if length:
                full, tail = divmod(length, size)
                runs.append((a, full, size))
                if tail:
                    runs.append((a + full * size, 1, tail))
            a += length
        blocks, bi = [], 0
        for a, count, size in runs:
            if size > _CHUNK:                                 # one huge bucket per row: split it
                blocks += [(a + r * size + j, a + r * size + min(j + _CHUNK, size), bi + r, 0, size, None)
                           for r in range(count) for j in range(0, size, _CHUNK)]
            else:
                per = _CHUNK // size
                blocks += [(a + r * size, a + min(r + per, count) * size, bi + r, min(per, count - r), size, None)
                           for r in range(0, count, per)]
            bi += count
        merged = blocks[:1]                                  # glue tiny blocks (small tensors) together
        for blk in blocks[1:]:
            prev = merged[-1]
            if blk[3] and prev[3] and blk[0] == prev[1] and blk[1] - prev[0] <= _CHUNK:
                sizes = prev[5] if prev[5] is not None else [prev[4]] * prev[3]
                merged[-1] = (prev[0], blk[1], prev[2], prev[3] + blk[3], 0, sizes + [blk[4]] * blk[3])
            else:
                merged.append(blk)
        # ragged blocks keep each coordinate's bucket (relative to the block's first) for index_select
        blocks = [b if b[5] is None else b[:5] + (torch.arange(b[3], dtype=torch.int32).repeat_interleave(
            torch.tensor(b[5])),) for b in merged]
        self._plans[d] = (runs, bi, blocks)
        return self._plans[d]

    @staticmethod
    def _views(block, per_bucket: tuple[torch.Tensor, ...]):
        """Shape of the block's work view and its per-bucket values broadcast to it."""
        s, e, bi, rows, size, index = block
        if index is not None:                                # ragged: expand per coordinate
            return (e - s,), tuple(v[bi:bi + rows].index_select(0, index) for v in per_bucket)
        if rows == 0:                                        # piece of one bucket
            return (e - s,), tuple(v[bi] for v in per_bucket)
        return (rows, size), tuple(v[bi:bi + rows].unsqueeze(1) for v in per_bucket)

    def _scales(self, lo: torch.Tensor, hi: torch.Tensor):
        lo_w, hi_w = lo.to(self.work), hi.to(self.work)
        unit = (hi_w - lo_w) / (self.levels - 1)
        unit = torch.where(unit > 0, unit, torch.ones_like(unit))     # constant bucket: codes are all 0
        return lo_w, unit, hi_w

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        g = _need_generator(generator, self.name)
        d = x.numel()
        runs, nb, blocks = self._plan(d)
        # amin + amax: two passes, yet ~10x faster than aminmax(dim=1) in torch 2.x
        views = [x[a:a + c * s].view(c, s) for a, c, s in runs]
        lo = torch.cat([v.amin(dim=1) for v in views]) if views else torch.empty(0)
        hi = torch.cat([v.amax(dim=1) for v in views]) if views else torch.empty(0)
        if nb and not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            raise ValueError("x: qsgd needs finite values (got inf or nan)")
        scales = self._scales(lo, hi)[:2]
        codes = torch.empty(d, dtype=torch.int32)
        for blk in blocks:
            s, e = blk[0], blk[1]
            shape, (lo_v, unit_v) = self._views(blk, scales)
            v = x[s:e].view(shape).to(self.work, copy=True)
            noise = torch.rand(e - s, generator=g).view(shape)
            v.sub_(lo_v).div_(unit_v).add_(noise).floor_().clamp_(0, self.levels - 1)   # x = max may round up to k
            codes[s:e].view(shape).copy_(v if self.bits_per_coord < 32 else v.to(torch.int64))  # 32 bits: wraps
        return Message({"codes": codes, "min": lo, "max": hi}, self.bits_per_coord * d + _MINMAX_BITS * nb, d)

    def decode(self, msg: Message, key: torch.Tensor | None = None) -> Decoded:
        d = msg.numel
        scales = self._scales(msg.payload["min"], msg.payload["max"])
        codes = msg.payload["codes"]
        out = torch.empty(d, dtype=torch.float32)
        for blk in self._plan(d)[2]:
            s, e = blk[0], blk[1]
            shape, (lo_v, unit_v, hi_v) = self._views(blk, scales)
            ob = out[s:e].view(shape)
            if self.work == torch.float32:
                v = ob.copy_(codes[s:e].view(shape))       # codes < 2**16: exact in float32
            else:
                c = codes[s:e].to(torch.int64)
                v = (c.bitwise_and_(0xFFFFFFFF) if self.bits_per_coord == 32 else c).to(self.work).view(shape)
            v.mul_(unit_v).add_(lo_v)
            torch.minimum(v, hi_v, out=v)                  # lo + (k-1)*unit may overshoot max by an ulp
            if v is not ob:
                ob.copy_(v)
        return Decoded(out, 0)
