"""Quantizers: pure encode/decode of flat float32 vectors with exact bit counts.

The seam between the algorithms and the channel (docs/design.md#quantizers-are-a-seam): a sender calls ``encode(x, generator)`` and pays
``Message.bits``; a receiver calls ``decode(msg, key)`` with its own vector as key. ``send(x, key,
generator)`` is both at once for a message with one receiver: the same value, failure count and bits as
``decode(encode(x, generator), key)``, bit for bit, without materialising the codes. A message decoded by
several receivers (QuAFL's server model) is encoded once and decoded by each.

* ``identity`` -- float32 as is, 32 bits per coordinate (docs/quantizers.md#identity).
* ``lattice`` -- the scalar cubic lattice with modular ("coloured") encoding of the QuAFL paper's code
  (Zakerinia et al., "Communication-Efficient Federated Learning With Data and Client Heterogeneity",
  AISTATS 2024, arXiv:2206.10032; ``Lattice_Quantizer``): ``m = round(x/eps)`` (half to even), codes
  ``c = m mod 2**b``; the receiver takes the integer congruent to ``c`` nearest to ``key/eps``. Exact iff
  ``|key - eps*m| < 2**b eps/2``; otherwise it wraps by a multiple of ``2**b eps`` -- such coordinates are
  *counted* (``Decoded.failures``).
* ``dithered_lattice`` -- suite extension: the lattice with subtractive dither shared through a 64-bit
  seed, so the error is uniform, zero-mean and independent of ``x`` (the unbiasedness the paper's analysis
  assumes of its quantizer).
* ``qsgd`` -- the paper code's ``QSGD_Quantizer``: per tensor (or bucket) unbiased stochastic rounding onto
  ``2**b`` levels between the bucket's min and max.

See ``docs/quantizers.md``. Bits (exact, headers included): identity ``32 d``; lattice ``b d`` (``eps`` and
``b`` are shared run parameters, no header); dithered lattice ``b d + 64`` (the seed); qsgd ``b d + 64 *
buckets`` (float32 min and max per bucket). Codes travel as int32 holding ``b``-bit values (``b = 32``: the
bit pattern).

Ownership: payloads never alias the input (the sender may change ``x`` before the receiver decodes) and
``Decoded.value`` is always a fresh tensor the caller may mutate (or the ``out`` it was given), so identity
copies on both sides -- except the engine's zero-copy identity (:meth:`IdentityQuantizer.borrowing`), whose
message *is* the sender's vector: the simulator consumes every message before it changes the sender or the
decoded value (checked in QuAFL, FedAvg and FedBuff), which saves two 26 MB copies per FEMNIST-CNN message.

Numerics: lattice arithmetic runs in float64, multiplying by ``1/eps`` (relative error 2**-52). So ``m`` is
the half-to-even rounding of ``x/eps`` (the paper code rounds in float32: off by one near ties for large
``|x|/eps``), grid points ``x = fl32(eps*k)`` decode bit-exactly, decoding is correct whenever ``|key -
eps*m| < 2**b eps/2``, and ``|x_hat - x| <= eps/2 + ulp32(x)/2`` (the float32 result's rounding). QSGD runs
in float32 for ``b <= 16`` (as the paper code) and float64 above. Random draws (qsgd noise, dither) come
from the message's generator in a fixed order and chunking, so a message is a function of ``x``, the layout
and the generator's seed only. The implementation is held bit for bit to the original one (kept frozen in
the tests) on CPU.

Costs, per message of ``d`` coordinates on one CPU thread (``qafl bench``: ``quantizer_gbps``,
``lattice_vs_copy``): each lattice operation is one fused loop over its vectors when compiled (see
:mod:`~qafl_core.quantize.kernels`: on CPU from 2**20 coordinates by default) -- ``send`` reads ``x`` and the
key and writes the value; ``encode`` reads ``x`` and writes codes and the oracle ``m``; ``decode`` reads
codes, key and ``m`` and writes the value -- plus one ``aminmax`` pass over ``x`` per encode/send (the
finiteness and int32/int64 check). Eagerly, each runs 5 to 15 in-place passes over 2 MiB chunks in reused
buffers. The dither and QSGD add ``d`` uniform draws from the generator's sequential stream, the larger
part of their cost on CPU; QSGD also two reductions (min, max) and about 8 eager passes.

Devices: every tensor op runs on the vector's device, payloads and results stay there, and random draws use
the message generator, which must be on that device (a CUDA run passes a CUDA generator seeded from the same
named stream; the numbers differ from a CPU run, the determinism does not). Eager loops go chunk by chunk on
CPU and over whole vectors elsewhere; a message costs at most three host reads (the input check, the dither
seed, the failure count), never one per chunk.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

from qafl_core.quantize import kernels
from qafl_core.quantize.base import _CHUNK, Decoded, Message, Quantizer, Sent, SendViaDecode  # noqa: F401 (_CHUNK)
from qafl_core.quantize.identity import IdentityQuantizer
from qafl_core.quantize.lattice import DitheredLatticeQuantizer, LatticeQuantizer
from qafl_core.quantize.qsgd import QSGDQuantizer
from qafl_core.quantize.qsgd_norm import NormQSGDQuantizer
from qafl_core.quantize.topk import TopKQuantizer

#: name -> builder ``(bits, eps, bucket, segments) -> Quantizer``; add one with :func:`register_quantizer`.
BUILDERS: dict[str, Callable[..., Quantizer]] = {}


def register_quantizer(name: str, builder: Callable[..., Quantizer]) -> None:
    """Make ``name`` available to :func:`make_quantizer` and the ``quantizer`` config key.

    ``builder(bits=, eps=, bucket=, segments=)`` returns the quantizer (it may ignore arguments it does not use):
    an object with ``encode``, ``decode`` and ``send`` (:class:`Quantizer`); one without a fused ``send`` can
    inherit :class:`~qafl_core.quantize.base.SendViaDecode`.
    """
    BUILDERS[name] = builder


register_quantizer("identity", lambda bits, eps, bucket, segments: IdentityQuantizer(segments))
register_quantizer("lattice", lambda bits, eps, bucket, segments: LatticeQuantizer(bits, float(eps), segments))
register_quantizer("dithered_lattice",
                   lambda bits, eps, bucket, segments: DitheredLatticeQuantizer(bits, float(eps), segments))
register_quantizer("qsgd", lambda bits, eps, bucket, segments: QSGDQuantizer(bits, bucket, segments))
register_quantizer("topk", lambda bits, eps, bucket, segments: TopKQuantizer(bits=bits, segments=segments))
register_quantizer("qsgd_norm", lambda bits, eps, bucket, segments: NormQSGDQuantizer.from_bits(bits, bucket, segments))
QUANTIZERS = tuple(BUILDERS)


def make_quantizer(name: str, bits: int = 32, eps: float = 1e-4, bucket: int | None = None,
                   segments: list[int] | None = None) -> Quantizer:
    """Build a quantizer by name.

    Args:
        name: one of ``identity``, ``lattice``, ``qsgd``, ``dithered_lattice``.
        bits: bits per coordinate ``b`` in 1..32 (identity: must be 32).
        eps: lattice spacing (lattice variants; must be > 0).
        bucket: qsgd bucket size (buckets never cross segment boundaries); None = one bucket per
            segment, as the paper code quantizes each state-dict tensor separately. Ignored by the others.
        segments: sizes of the tensors that make up the flat vector; None = one segment.

    Raises:
        ValueError: naming the field (``name``, ``bits``, ``eps``, ``bucket``, ``segments``).
    """
    if name not in BUILDERS:
        raise ValueError(f"name: unknown quantizer {name!r}; expected one of {', '.join(BUILDERS)}")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits: expected an integer in 1..32, got {bits!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps: expected a finite lattice spacing > 0, got {eps!r}")
    if bucket is not None and (isinstance(bucket, bool) or not isinstance(bucket, int) or bucket < 1):
        raise ValueError(f"bucket: expected a positive integer bucket size or None, got {bucket!r}")
    if segments is not None:
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in segments):
            raise ValueError(f"segments: expected non-negative integer tensor sizes, got {segments!r}")
        segments = [int(s) for s in segments]
    if name == "identity" and bits != 32:
        raise ValueError(f"bits: the identity quantizer sends float32 (32 bits), got {bits}")
    return BUILDERS[name](bits=bits, eps=eps, bucket=bucket, segments=segments)


__all__ = ["BUILDERS", "QUANTIZERS", "Decoded", "DitheredLatticeQuantizer", "IdentityQuantizer", "LatticeQuantizer",
           "Message", "QSGDQuantizer", "Quantizer", "Sent", "SendViaDecode", "kernels", "make_quantizer",
           "register_quantizer"]
