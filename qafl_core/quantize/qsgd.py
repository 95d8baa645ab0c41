"""The paper code's QSGD-style quantizer: unbiased stochastic rounding between a bucket's min and max."""
from __future__ import annotations

import torch

from qafl_core.quantize.base import (
    _CHUNK,
    _MINMAX_BITS,
    Decoded,
    Message,
    Sent,
    Workspace,
    _check_out,
    _check_vec,
    _need_generator,
)


class QSGDQuantizer:
    """Unbiased stochastic rounding onto ``k = 2**b`` levels per bucket (docs/quantizers.md#qsgd-paper-code).

    Per bucket: ``unit = (max - min)/(k - 1)``, code ``v = floor((x - min)/unit + U)`` with
    ``U ~ U[0, 1)`` from the message generator, value ``min + v*unit``; constant buckets give codes 0.
    Arithmetic is float32 for ``b <= 16`` (as the paper code) and float64 above, where float32 cannot
    resolve the levels. Work runs over cache-sized blocks of whole buckets (or pieces of one big bucket),
    in place in reused buffers; the uniform draws are made block by block in coordinate order, so a
    message is a function of ``x``, the layout and the generator's seed only (on any device; a CUDA
    generator draws other numbers than a CPU one). :meth:`send` skips the codes: the clamped level
    ``v`` is already the decoded code, so ``value = min(lo + v*unit, max)`` bit for bit.

    Cost per message (d coordinates): two reductions (min, max), ``d`` uniform draws -- the largest part
    on CPU, and bound to the generator's sequential stream -- and about 8 elementwise passes over each
    cache-sized block (encode 7, decode 4, send 10).

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
        self._indices: dict[tuple[int, torch.device], list] = {}
        self.ws = Workspace()

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

    def _blocks(self, d: int, device: torch.device) -> list:
        """The plan's blocks with their ragged indices on ``device``."""
        key = (d, device)
        if key not in self._indices:
            self._indices[key] = [b if b[5] is None else b[:5] + (b[5].to(device),) for b in self._plan(d)[2]]
        return self._indices[key]

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

    def _min_max(self, x: torch.Tensor):
        """Per-bucket float32 min and max (one host read: the finiteness check)."""
        runs, nb, _ = self._plan(x.numel())
        # amin + amax: two passes, yet ~10x faster than aminmax(dim=1) in torch 2.x
        views = [x[a:a + c * s].view(c, s) for a, c, s in runs]
        lo = torch.cat([v.amin(dim=1) for v in views]) if views else torch.empty(0, device=x.device)
        hi = torch.cat([v.amax(dim=1) for v in views]) if views else torch.empty(0, device=x.device)
        if nb and not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
            raise ValueError("x: qsgd needs finite values (got inf or nan)")
        return lo, hi, nb

    def _levels(self, x: torch.Tensor, blk, lo_v, unit_v, g: torch.Generator, v: torch.Tensor) -> torch.Tensor:
        """The block's random levels ``v = clamp(floor((x - min)/unit + U), 0, k-1)`` written into ``v``
        (a work-dtype buffer of the block's shape)."""
        s, e = blk[0], blk[1]
        v.copy_(x[s:e].view(v.shape))
        noise = self.ws.get("noise", e - s, torch.float32, x.device).uniform_(generator=g).view(v.shape)
        return v.sub_(lo_v).div_(unit_v).add_(noise).floor_().clamp_(0, self.levels - 1)  # x = max may round up to k

    def _work(self, name: str, n: int, shape, device) -> torch.Tensor:
        return self.ws.get(name, n, self.work, device).view(shape)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        _check_vec(x, self.dim, "x")
        d, dev = x.numel(), x.device
        g = _need_generator(generator, self.name, dev)
        lo, hi, nb = self._min_max(x)
        scales = self._scales(lo, hi)[:2]
        codes = torch.empty(d, dtype=torch.int32, device=dev)
        for blk in self._blocks(d, dev):
            shape, (lo_v, unit_v) = self._views(blk, scales)
            v = self._levels(x, blk, lo_v, unit_v, g, self._work("v", blk[1] - blk[0], shape, dev))
            c = codes[blk[0]:blk[1]].view(shape)
            if self.bits_per_coord < 32:
                c.copy_(v)
            else:                                            # 32 bits: via int64, the int32 store wraps
                c.copy_(self.ws.get("i64", c.numel(), torch.int64, dev).view(shape).copy_(v))
        return Message({"codes": codes, "min": lo, "max": hi}, self.bits_per_coord * d + _MINMAX_BITS * nb, d)

    def decode(self, msg: Message, key: torch.Tensor | None = None, out: torch.Tensor | None = None) -> Decoded:
        d, codes = msg.numel, msg.payload["codes"]
        dev = codes.device
        scales = self._scales(msg.payload["min"], msg.payload["max"])
        out = _check_out(out, d, dev)
        for blk in self._blocks(d, dev):
            s, e = blk[0], blk[1]
            shape, (lo_v, unit_v, hi_v) = self._views(blk, scales)
            ob = out[s:e].view(shape)
            if self.work == torch.float32:
                v = ob.copy_(codes[s:e].view(shape))       # codes < 2**16: exact in float32
            else:
                c = self.ws.get("i64", e - s, torch.int64, dev).view(shape).copy_(codes[s:e].view(shape))
                if self.bits_per_coord == 32:
                    c.bitwise_and_(0xFFFFFFFF)
                v = self._work("v", e - s, shape, dev).copy_(c)
            self._finish(v, ob, lo_v, unit_v, hi_v)
        return Decoded(out, 0)

    @staticmethod
    def _finish(v, ob, lo_v, unit_v, hi_v) -> None:
        """``ob = min(lo + v*unit, max)``: the decoded value of level ``v``."""
        v.mul_(unit_v).add_(lo_v)
        torch.minimum(v, hi_v, out=v)                      # lo + (k-1)*unit may overshoot max by an ulp
        if v is not ob:
            ob.copy_(v)

    def send(self, x: torch.Tensor, key: torch.Tensor | None = None, generator: torch.Generator | None = None,
             out: torch.Tensor | None = None) -> Sent:
        """``decode(encode(x, generator))`` without the codes: the same draws, value and bits."""
        _check_vec(x, self.dim, "x")
        d, dev = x.numel(), x.device
        g = _need_generator(generator, self.name, dev)
        lo, hi, nb = self._min_max(x)
        scales = self._scales(lo, hi)
        out = _check_out(out, d, dev)
        for blk in self._blocks(d, dev):
            shape, (lo_v, unit_v, hi_v) = self._views(blk, scales)
            ob = out[blk[0]:blk[1]].view(shape)
            # float32 work: the output block is the work buffer
            v = ob if self.work == torch.float32 else self._work("v", blk[1] - blk[0], shape, dev)
            self._finish(self._levels(x, blk, lo_v, unit_v, g, v), ob, lo_v, unit_v, hi_v)
        return Sent(out, 0, self.bits_per_coord * d + _MINMAX_BITS * nb)
