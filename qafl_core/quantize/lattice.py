"""The paper code's modular lattice quantizer and its dithered extension.

Kept over 250 lines: the encode, decode, decode-and-average and fused-send kernels are each written twice
(pure ``*_math`` functions for ``torch.compile``, in-place chunk loops or separate steps for eager runs) and
belong next to each other.

Per coordinate, in float64 (``u``: the dither, 0 for the plain lattice; ``q = 2**b``)::

    m     = round((x + u) / eps)                 half to even, as torch.round in the paper code
    code  = m mod q                              in [0, q); b = 32: the int32 bit pattern of m
    m_hat = code + q * round((key + u)/(q eps) - code/q)
    value = float32(eps * m_hat - u)

``1/eps`` is multiplied (relative error <= 2**-52), never divided. ``code/q`` and ``q * round(.)`` are
exact (``q`` is a power of two), so ``m mod q`` computed in float64 as ``m - q floor(m/q)`` equals the
integer one for ``|m| < 2**62``. ``failures`` counts ``m_hat != m``.
"""
from __future__ import annotations

import logging
import math

import torch

from qafl_core.quantize import kernels
from qafl_core.quantize.base import (
    _SEED_BITS,
    Decoded,
    Message,
    Sent,
    Workspace,
    _check_out,
    _check_vec,
    _chunks,
    _need_generator,
)

_F64 = torch.float64
log = logging.getLogger("qafl")


# ---------------------------------------------------------------------------------------------- pure kernels
def _codes_math(m, inv_q: float, q: float, half: float):
    """``m mod q`` as float64 in [0, q), minus ``q`` from ``half`` up: ``half = q`` gives the ``b < 32``
    codes, ``half = 2**31`` (``b = 32``) the signed int32 value of ``m``'s low 32 bits (one kernel for both)."""
    c = m - (m * inv_q).floor() * q
    return torch.where(c >= half, c - q, c)


def _encode_math(x, u, m_out, codes_out, inv_eps: float, inv_q: float, q: float):
    """``b < 32``, int32 ``m``: writes ``m`` and its codes."""
    t = x.to(_F64) if u is None else x.to(_F64) + u.to(_F64)
    m = (t * inv_eps).round()
    m_out.copy_(m)
    codes_out.copy_(_codes_math(m, inv_q, q, q))


def _decoded(c, t, u, check, inv_eps_q: float, inv_q: float, q: float, eps: float):
    """The decode's arithmetic, shared by :func:`_decode_math` and :func:`_decode_mix_math`: the float64 value of
    codes ``c`` against the float64 key ``t`` (dither ``u`` not yet added), and the number of ``m_hat != m``
    (0-d int64; 0 when ``check`` is None)."""
    c = c.to(_F64)
    if u is not None:
        t = t + u.to(_F64)
    m_hat = c + (t * inv_eps_q - c * inv_q).round() * q
    v = m_hat * eps
    fails = (torch.zeros((), dtype=torch.int64, device=c.device) if check is None
             else (m_hat != check.to(_F64)).sum())
    return (v if u is None else v - u.to(_F64)), fails


def _decode_math(c, key, u, check, out, inv_eps_q: float, inv_q: float, q: float, eps: float):
    """Writes ``out``; returns the number of ``m_hat != m`` (0-d int64; 0 when ``check`` is None).
    ``c`` is the code (int32 codes, or the float64 code of a fused send)."""
    t = torch.zeros_like(c, dtype=_F64) if key is None else key.to(_F64)
    value, fails = _decoded(c, t, u, check, inv_eps_q, inv_q, q, eps)
    out.copy_(value)
    return fails


def _decode_mix_math(c, key, u, check, y, inv_eps_q: float, inv_q: float, q: float, eps: float, p, keep):
    """:func:`_decode_math` into the receiver's average: ``y <- fma(value, p, y * keep)``, the bits of
    ``y.mul_(1 - p).add_(value, alpha=p)`` (torch's CPU ``add`` with ``alpha`` is a fused multiply-add, so the
    kernel calls one explicitly: inductor never contracts ``a*b + c`` itself). ``p`` and ``keep`` are float32
    0-d tensors holding ``p`` and ``1 - p`` as torch rounds those scalars (passed as Python floats, torch 2.13's
    compiled kernel kept the first call's ``p``; measured). ``key`` None: the key is ``y``."""
    value, fails = _decoded(c, (y if key is None else key).to(_F64), u, check, inv_eps_q, inv_q, q, eps)
    y.copy_(torch.ops.prims.fma(value.to(torch.float32), p, y * keep))
    return fails


def _send_math(x, key, u, out, inv_eps: float, inv_eps_q: float, qeps: float, inv_q: float, wide: bool,
               accumulate: bool = False):
    """Fused send, written in units of ``q`` (exact: ``q`` is a power of two, and scaling by one commutes
    with float64 rounding), which saves a third of the operations and gives the same bits::

        mq = m/q,  f = mq - floor(mq) = c/q,  s = f + round(t/(q eps) - f) = m_hat/q,  value = s * (q eps)

    (``b = 32``: ``f - 1`` from ``f >= 1/2`` up, the signed code over ``q``). Failures: ``s != mq``, i.e.
    ``m_hat != m``. Also returns ``max |x|`` (nan if any is nan), the range check of :meth:`encode`, so
    the send needs no separate pass over ``x``. ``accumulate``: ``out += value`` (one float32 addition, the
    bits of ``out.add_(value)``) instead of ``out = value``."""
    t = x.to(_F64) if u is None else x.to(_F64) + u.to(_F64)
    mq = (t * inv_eps).round() * inv_q
    f = mq - mq.floor()
    if wide:
        f = torch.where(f >= 0.5, f - 1.0, f)
    k = key.to(_F64) if u is None else key.to(_F64) + u.to(_F64)
    s = f + (k * inv_eps_q - f).round()
    v = s * qeps
    w = v if u is None else v - u.to(_F64)
    out.copy_(out + w.to(torch.float32) if accumulate else w)   # accumulate: float32 sum, as ``out.add_(value)``
    return (s != mq).sum(), x.abs().amax()


class LatticeQuantizer:
    """Modular scalar lattice of the paper code (docs/quantizers.md), decoded against the receiver's vector.

    Args:
        bits: bits per coordinate ``b``; ``q = 2**b`` colours.
        eps: lattice spacing.
        segments: tensor sizes (only used to check the vector length; the lattice is elementwise).
    """

    name = "lattice"
    needs_key = True
    fused_accumulate = True    # ``send(..., accumulate=True)`` adds the value into ``out`` in the same pass

    def __init__(self, bits: int, eps: float, segments: list[int] | None = None):
        self.bits_per_coord, self.eps = bits, eps
        self.inv_eps = 1.0 / eps   # multiplying is 2x faster than dividing; off by <= 2**-52 relative
        self.q = 1 << bits
        self.dim = sum(segments) if segments is not None else None
        self.ws = Workspace()

    @property
    def window(self) -> float:
        """Half-width ``q*eps/2`` of the decoding window around the key."""
        return self.q * self.eps / 2

    # -------------------------------------------------------------------------------- dither hooks
    def _draw_seed(self, generator: torch.Generator | None, device: torch.device) -> int | None:
        return None                # deterministic: no seed, no header, no dither

    def _dither_stream(self, seed: int | None, device: torch.device) -> torch.Generator | None:
        return None

    def _next_dither(self, stream: torch.Generator, n: int, device: torch.device, name: str = "u") -> torch.Tensor:
        """The stream's next ``n`` dither values ``U[-eps/2, eps/2)`` (float32), drawn in work chunks."""
        u = self.ws.get(name, n, torch.float32, device)
        for a, b in _chunks(n, device):      # CPU: the chunk sizes the draws were always made in
            u[a:b].uniform_(generator=stream)
        return u.sub_(0.5).mul_(self.eps)

    def _whole_dither(self, seed: int | None, n: int, device: torch.device) -> torch.Tensor | None:
        stream = self._dither_stream(seed, device)
        return None if stream is None else self._next_dither(stream, n, device, "u_all")

    # -------------------------------------------------------------------------------- checks
    def _integer_dtype(self, x: torch.Tensor) -> torch.dtype:
        """int32 for ``m`` unless ``|x|/eps`` needs more; rejects inf/nan and ``|x|/eps >= 2**62``.
        One host read per message (the largest ``|x|``), no ``|x|`` temporary."""
        if x.numel():
            lo, hi = torch.aminmax(x)
            top = torch.maximum(lo.neg(), hi).item()    # nan propagates
        else:
            top = 0.0
        return self._dtype_for(top)

    def _dtype_for(self, top: float) -> torch.dtype:
        """:meth:`_integer_dtype` from ``top``, the largest ``|x|`` (nan if any coordinate is nan)."""
        if not math.isfinite(top) or top * self.inv_eps + 1 >= 2.0 ** 62:
            raise ValueError(f"x: {self.name} needs finite values with |x|/eps < 2**62, got max |x| = {top} "
                             f"with eps = {self.eps}")
        return torch.int32 if top * self.inv_eps + 1 < 2.0 ** 31 - 2 else torch.int64

    def _consts(self) -> tuple[float, float, float]:
        """``1/(q eps)``, ``1/q`` and ``q`` as floats (exact: ``q`` is a power of two)."""
        return self.inv_eps / self.q, 1.0 / self.q, float(self.q)

    # -------------------------------------------------------------------------------- encode
    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message:
        """``m = round((x + u)/eps)``, codes ``m mod q`` (int32); ``check`` keeps ``m`` (int32, or int64
        when ``|x|/eps`` needs it; for ``b = 32`` with int32 ``m`` the codes *are* ``m``)."""
        _check_vec(x, self.dim, "x")
        n, dev = x.numel(), x.device
        seed = self._draw_seed(generator, dev)
        m = torch.empty(n, dtype=self._integer_dtype(x), device=dev)
        wide = self.bits_per_coord == 32
        # a 32-bit code is the int32 bit pattern of m (two's complement), so it can share m's storage
        codes = m if wide and m.dtype == torch.int32 else torch.empty(n, dtype=torch.int32, device=dev)
        _, inv_q, q = self._consts()
        res = kernels.FAILED
        if not wide and m.dtype == torch.int32 and kernels.use_compiled(n, dev):   # the common case: one kernel
            res = kernels.run_compiled(_encode_math, x, self._whole_dither(seed, n, dev), m, codes, self.inv_eps,
                                       inv_q, q)
        if res is kernels.FAILED:
            self._encode_eager(x, seed, m, codes, wide)
        payload, header = {"codes": codes}, 0
        if seed is not None:
            payload["seed"], header = torch.tensor(seed, dtype=torch.int64, device=dev), _SEED_BITS
        return Message(payload, self.bits_per_coord * n + header, n, check=m)

    def _encode_eager(self, x, seed, m, codes, wide) -> None:
        stream = self._dither_stream(seed, x.device)
        for a, b in _chunks(x.numel(), x.device):
            t = self.ws.get("t", b - a, _F64, x.device).copy_(x[a:b])
            if stream is not None:
                t.add_(self._next_dither(stream, b - a, x.device))
            m_c = m[a:b]
            m_c.copy_(t.mul_(self.inv_eps).round_())           # half to even, as torch.round in the paper code
            if codes is not m:
                # two's complement: m & (q-1) == m mod q in [0, q); int64 -> int32 keeps the low 32 bits
                if wide:
                    codes[a:b].copy_(m_c)
                else:
                    torch.bitwise_and(m_c, self.q - 1, out=codes[a:b])

    # -------------------------------------------------------------------------------- decode
    def decode(self, msg: Message, key: torch.Tensor | None, out: torch.Tensor | None = None) -> Decoded:
        """``m_hat = c + q*round((key/eps - c)/q)``, value ``eps*m_hat`` (= the paper's
        ``q eps round(key/(q eps) - c/q) + eps c``). ``key=None`` decodes against the zero vector.
        ``failures`` counts coordinates with ``m_hat != m`` (0 when the message carries no ``check``).
        ``out``: a float32 vector to write into (default: a fresh one)."""
        n, codes, check = msg.numel, msg.payload["codes"], msg.check
        dev = codes.device
        if key is not None:
            _check_vec(key, n, "key", any_float=True, device=dev)
        out = _check_out(out, n, dev)
        seed = int(msg.payload["seed"]) if "seed" in msg.payload else None
        inv_eps_q, inv_q, q = self._consts()
        fails = kernels.FAILED
        if self._compiles(key, n, dev, check is not None and check.dtype == torch.int32):
            c, m = self._exact_float32(msg, codes, check)
            fails = kernels.run_compiled(_decode_math, c, key, self._whole_dither(seed, n, dev), m, out,
                                         inv_eps_q, inv_q, q, self.eps)
        if fails is kernels.FAILED:
            fails = self._decode_eager(codes, key, seed, check, out)
        return Decoded(out, int(fails))

    def decode_mix(self, msg: Message, key: torch.Tensor | None, y: torch.Tensor, p: float) -> Decoded:
        """The receiver averages the message into its model: ``y <- (1-p) y + p decode(msg, key)`` in one pass,
        bit for bit ``v = decode(msg, key).value; y.mul_(1 - p).add_(v, alpha=p)`` (``key`` may be ``y``
        itself; it is read before ``y`` changes). Returns ``Decoded(y, failures)``.

        The one-pass kernel runs where the decode compiles and only once a check in this process found that
        its fused multiply-add gives torch's bits (:func:`_mix_is_exact`); otherwise the two steps run as
        written."""
        n, codes, check = msg.numel, msg.payload["codes"], msg.check
        dev = codes.device
        _check_vec(y, n, "y", device=dev)
        if key is not None:
            _check_vec(key, n, "key", any_float=True, device=dev)
        seed = int(msg.payload["seed"]) if "seed" in msg.payload else None
        fails = kernels.FAILED
        if self._compiles(key, n, dev, check is not None and check.dtype == torch.int32) and _mix_is_exact(dev):
            c, m = self._exact_float32(msg, codes, check)
            inv_eps_q, inv_q, q = self._consts()
            fails = kernels.run_compiled(_decode_mix_math, c, None if key is y else key,
                                         self._whole_dither(seed, n, dev), m, y, inv_eps_q, inv_q, q, self.eps,
                                         *_mix_weights(p, dev))
        if fails is kernels.FAILED:
            value = self.ws.get("mix", n, torch.float32, dev)
            fails = self.decode(msg, key, out=value).failures
            y.mul_(1.0 - p).add_(value, alpha=p)
        return Decoded(y, int(fails))

    def _exact_float32(self, msg: Message, codes: torch.Tensor, check: torch.Tensor):
        """The message's int32 codes and oracle as float32 when that is exact (``b <= 24`` and ``|m| < 2**24``),
        converted once per message and reused by its other receivers (the server's model is decoded by every
        contacted client); otherwise the int32 tensors. Same values, so the decode gives the same bits: torch's
        AVX2 kernels convert int32 to float64 one lane at a time, but int32 to float32 and float32 to float64 in
        vector registers: 7.6 against 16.0 ms per 6.6 M-coordinate decode (bench/README.md)."""
        memo = self.ws.memo
        if memo is not None and memo[0] is msg:
            return memo[1], memo[2]
        n, dev = codes.numel(), codes.device
        if self.bits_per_coord > 24 or dev.type != "cpu" or n == 0:     # (a GPU converts in vector lanes anyway)
            return codes, check
        c = self.ws.get("codes_f32", n, torch.float32, dev).copy_(codes)
        m = self.ws.get("check_f32", n, torch.float32, dev).copy_(check)
        lo, hi = m.aminmax()
        if float(torch.maximum(-lo, hi)) >= 2.0 ** 24:        # rounding is monotone: an inexact value lands here
            self.ws.memo = None
            return codes, check
        self.ws.memo = (msg, c, m)
        return c, m

    def _decode_eager(self, codes, key, seed, check, out) -> torch.Tensor:
        dev = codes.device
        stream = self._dither_stream(seed, dev)
        inv_eps_q, inv_q, q = self._consts()
        fails = torch.zeros((), dtype=torch.int64, device=dev)
        for a, b in _chunks(codes.numel(), dev):
            c = self.ws.get("c", b - a, _F64, dev).copy_(codes[a:b])   # any representative of m mod q decodes
            t = self.ws.get("t", b - a, _F64, dev)
            t.zero_() if key is None else t.copy_(key[a:b])
            u = None if stream is None else self._next_dither(stream, b - a, dev)
            if u is not None:
                t.add_(u)                                # the sender rounded x + u: compare like with like
            # m_hat = c + q*round((t/eps - c)/q), 3 ops instead of 6: scaling by 1/q (a power of two) commutes with
            # float64 rounding and c/q, q*round(.) are exact, so this is bit-identical to the step-by-step form
            t.mul_(inv_eps_q).sub_(c, alpha=inv_q).round_()
            torch.add(c, t, alpha=q, out=t)              # m_hat (exact integers)
            if check is not None:
                fails += self._count_ne(t, c.copy_(check[a:b]))
            t.mul_(self.eps)
            if u is not None:
                t.sub_(u)
            out[a:b].copy_(t)
        return fails

    @staticmethod
    def _compiles(key, n: int, device: torch.device, int32_check: bool = True) -> bool:
        """Compiled decode/send for what the simulator sends (float32 keys; decode: an int32 oracle); other
        key dtypes, ``key=None``, int64 ``m`` and messages without oracle run eagerly: fewer kernels to compile."""
        return key is not None and key.dtype == torch.float32 and int32_check and kernels.use_compiled(n, device)

    def _count_ne(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Number of coordinates where ``a != b``, on the device (no host read per chunk)."""
        return torch.ne(a, b, out=self.ws.get("ne", a.numel(), torch.bool, a.device)).sum()

    # -------------------------------------------------------------------------------- fused send
    def send(self, x: torch.Tensor, key: torch.Tensor | None, generator: torch.Generator | None = None,
             out: torch.Tensor | None = None, accumulate: bool = False) -> Sent:
        """``decode(encode(x, generator), key)`` in one pass, without the codes: same value, failures, bits.

        ``accumulate``: add the value into ``out`` (required then) instead of writing it, bit for bit
        ``out.add_(value)``; the returned value is ``out``, the sum. (If ``x`` is out of range the error
        comes after ``out`` was written.)"""
        _check_vec(x, self.dim, "x")
        n, dev = x.numel(), x.device
        if key is not None:
            _check_vec(key, n, "key", any_float=True, device=dev)
        if accumulate and out is None:
            raise ValueError("out: send(accumulate=True) adds into out, got None")
        seed = self._draw_seed(generator, dev)
        wide = self.bits_per_coord == 32
        out = _check_out(out, n, dev)
        inv_eps_q, inv_q, q = self._consts()
        res = kernels.FAILED
        if self._compiles(key, n, dev):
            # the range check comes back with the failures: one pass over x (x out of range: ``out`` is
            # overwritten, then the same error as encode's)
            res = kernels.run_compiled(_send_math, x, key, self._whole_dither(seed, n, dev), out, self.inv_eps,
                                       inv_eps_q, q * self.eps, inv_q, wide, accumulate)
        if res is kernels.FAILED:
            wrap = self._integer_dtype(x) == torch.int64 and wide  # checks x; int32 m: a 32-bit code is m itself
            value = self.ws.get("sent", n, torch.float32, dev) if accumulate else out
            fails = self._send_eager(x, key, seed, value, wide, wrap)
            if accumulate:
                out.add_(value)
        else:
            fails, top = res
            self._dtype_for(float(top))
        return Sent(out, int(fails), self.bits_per_coord * n + (0 if seed is None else _SEED_BITS))

    def _send_eager(self, x, key, seed, out, wide, wrap) -> torch.Tensor:
        dev = x.device
        stream = self._dither_stream(seed, dev)
        inv_eps_q, inv_q, q = self._consts()
        fails = torch.zeros((), dtype=torch.int64, device=dev)
        for a, b in _chunks(x.numel(), dev):
            m = self.ws.get("m", b - a, _F64, dev).copy_(x[a:b])
            u = None if stream is None else self._next_dither(stream, b - a, dev)
            if u is not None:
                m.add_(u)
            m.mul_(self.inv_eps).round_()
            if wide and not wrap:                        # |m| < 2**31: the int32 code is m; + 0.0 turns
                c = m.add_(0.0)                          # -0.0 into the code's +0.0 (m_hat = c + q*(-0.0))
            else:                                        # c = m - q floor(m/q), exact; b = 32: signed
                c = torch.mul(m, inv_q, out=self.ws.get("c", b - a, _F64, dev)).floor_()
                torch.sub(m, c, alpha=q, out=c)
                if wide:
                    c.add_(torch.ge(c, 2.0 ** 31, out=self.ws.get("ne", b - a, torch.bool, dev)), alpha=-q)
            t = self.ws.get("t", b - a, _F64, dev)
            t.zero_() if key is None else t.copy_(key[a:b])
            if u is not None:
                t.add_(u)
            t.mul_(inv_eps_q).sub_(c, alpha=inv_q).round_()
            torch.add(c, t, alpha=q, out=t)              # m_hat
            fails += self._count_ne(t, m)
            t.mul_(self.eps)
            if u is not None:
                t.sub_(u)
            out[a:b].copy_(t)
        return fails


_MIX_EXACT: dict[str, bool] = {}


def _mix_weights(p: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``p`` and ``1 - p`` as the float32 scalars that ``add_(alpha=p)`` and ``mul_(1 - p)`` use."""
    return (torch.tensor(p, dtype=torch.float32, device=device),
            torch.tensor(1.0 - p, dtype=torch.float32, device=device))


def _mix_is_exact(device: torch.device) -> bool:
    """Whether the compiled :func:`_decode_mix_math` gives the bits of the eager decode, ``mul_`` and
    ``add_(alpha=p)`` here: both are fused multiply-adds on CPUs with FMA, but that is torch's build and
    this CPU's to decide, so it is measured once per process (a 4,099-coordinate message, vector lanes
    and the scalar tail, two values of ``p``) and the mismatch, if any, is logged. Where it is not exact
    the mix runs as two steps; results are the same either way."""
    known = _MIX_EXACT.get(device.type)
    if known is None:
        g = torch.Generator(device=device)
        g.manual_seed(0)
        n, quant = 4099, LatticeQuantizer(12, 1e-3)
        x = torch.randn(n, generator=g, device=device)
        msg = quant.encode(x)
        known = True
        for p in (1 / 11, 1 / 3):
            y = x + 1e-2 * torch.randn(n, generator=g, device=device)
            want = y.clone().mul_(1.0 - p).add_(quant.decode(msg, y).value, alpha=p)
            inv_eps_q, inv_q, q = quant._consts()
            # float32 codes and oracle, as the simulator's messages reach the kernel (:meth:`_exact_float32`)
            res = kernels.run_compiled(_decode_mix_math, msg.payload["codes"].float(), None, None, msg.check.float(), y,
                                       inv_eps_q, inv_q, q, quant.eps, *_mix_weights(p, device))
            if res is kernels.FAILED:
                return False                    # compiling is broken: every kernel runs eagerly anyway
            if not torch.equal(y, want):
                known = False
                log.warning("lattice: the compiled decode-and-average differs from torch's mul_/add_ in %d of %d "
                            "coordinates on this CPU; the two steps run separately (same results, slower)",
                            int((y != want).sum()), n)
                break
        _MIX_EXACT[device.type] = known
    return known


class DitheredLatticeQuantizer(LatticeQuantizer):
    """Lattice with subtractive dither (suite extension; unbiased, docs/quantizers.md).

    The sender draws a seed from the message generator and sends it as a 64-bit header; both sides
    regenerate ``u ~ U[-eps/2, eps/2)^d`` from it (float32 draws, chunk by chunk, on the vector's device).
    Encode ``m = round((x + u)/eps)``, decode ``eps*m_hat - u``: the error ``eps*m - (x + u)`` is uniform on
    ``[-eps/2, eps/2]`` and independent of ``x`` (up to the 2**-24 resolution of the draws), hence
    zero-mean. Decoding uses ``key + u`` and is exact whenever ``|key - x| < (q - 1) eps/2``.
    """

    name = "dithered_lattice"

    def _draw_seed(self, generator: torch.Generator | None, device: torch.device) -> int:
        g = _need_generator(generator, self.name, device)
        return int(torch.randint(0, 2 ** 62, (), generator=g, dtype=torch.int64, device=g.device))

    def _dither_stream(self, seed: int | None, device: torch.device) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(seed)
        return g
