"""Property tests of qafl_core.quantize (in the style of fedjax's compression tests).

Identity is exact; the lattice is the identity on grid points for any key inside the window, errs by
at most eps/2 inside it and counts every wrapped coordinate outside it; QSGD and the dithered lattice
are unbiased (Monte Carlo over seeded messages, tolerance from the exact variance); bit counts are
exact; messages are a function of the generator seed only; bad parameters name their field.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qafl_core import quantize as qz
from qafl_core.quantize import Decoded, Message, Quantizer, kernels, make_quantizer

sys.path.insert(0, str(Path(__file__).parent))
import quantize_reference as ref  # noqa: E402


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def ulp_bound(x: torch.Tensor) -> torch.Tensor:
    """Half a float32 ulp of |x| (generously), the float32 output's rounding."""
    return x.abs() * 2.0 ** -24 + 1e-30


def grid(k: torch.Tensor, eps: float) -> torch.Tensor:
    return (k.to(torch.float64) * eps).to(torch.float32)


# ---------------------------------------------------------------------------------------------- identity
def test_identity_is_exact_and_owns_its_tensors():
    q = make_quantizer("identity")
    assert isinstance(q, Quantizer) and q.bits_per_coord == 32 and not q.needs_key
    x = torch.randn(1000, generator=gen(0))
    msg = q.encode(x, None)
    assert msg.bits == 32 * 1000 and msg.numel == 1000
    x_orig = x.clone()
    x.add_(1.0)                                   # sender changes its vector after sending
    out = q.decode(msg, None)
    assert isinstance(out, Decoded) and out.failures == 0
    assert torch.equal(out.value, x_orig)
    out.value.mul_(0)                             # receiver mutates what it got
    assert torch.equal(q.decode(msg, None).value, x_orig)


# ---------------------------------------------------------------------------------------------- lattice
@pytest.mark.parametrize("bits", [2, 8, 12, 32])
def test_lattice_is_identity_on_grid_points_for_any_key_in_window(bits):
    eps = 1e-4
    q = make_quantizer("lattice", bits, eps)
    k = torch.randint(-1_000_000, 1_000_000, (5000,), generator=gen(1))
    x = grid(k, eps)
    msg = q.encode(x)
    assert torch.equal(msg.check.long(), k)
    assert int(msg.payload["codes"].min()) >= (0 if bits < 32 else -2 ** 31)
    assert bits == 32 or int(msg.payload["codes"].max()) < 2 ** bits
    half = min(q.window, 1e3) * 0.9                                 # margin > float32 ulp of the key
    key = x.double() + (torch.rand(5000, generator=gen(2), dtype=torch.float64) * 2 - 1) * half
    out = q.decode(msg, key.float())
    assert out.failures == 0
    assert torch.equal(out.value, x)


def test_lattice_rounds_half_to_even_like_torch_round_and_matches_paper_formula():
    eps, bits = 0.5, 4                             # eps a power of 2: x/eps is exact, ties are real ties
    q = make_quantizer("lattice", bits, eps)
    x = torch.tensor([0.25, 0.75, -0.25, -0.75, 1.25, 3.0, -7.9])
    msg = q.encode(x)
    assert msg.check.tolist() == torch.round(x / eps).long().tolist() == [0, 2, 0, -2, 2, 6, -16]
    assert msg.payload["codes"].tolist() == [0, 2, 0, 14, 2, 6, 0]
    y = x + torch.tensor([1.9, -1.9, 0.3, 0.0, -1.0, 1.5, 1.2])
    c = msg.payload["codes"].double()
    paper = q.q * eps * torch.round(y.double() / (q.q * eps) - c / q.q) + eps * c    # paper code's formula
    assert torch.equal(q.decode(msg, y).value, paper.float())


@pytest.mark.parametrize("bits,eps", [(8, 1e-4), (12, 1e-4), (14, 1e-3), (3, 0.1)])
def test_lattice_error_at_most_half_eps_inside_window(bits, eps):
    q = make_quantizer("lattice", bits, eps)
    x = torch.randn(20_000, generator=gen(3)) * 0.5
    msg = q.encode(x)
    m_ref = np.round(x.numpy().astype(np.float64) / eps)        # exact half-to-even rounding of x/eps
    assert np.array_equal(msg.check.numpy(), m_ref)
    reach = (q.window - eps / 2) * 0.999                       # |key - x| < window - eps/2 => |key - eps m| < window
    key = (x.double() + (torch.rand(20_000, generator=gen(4), dtype=torch.float64) * 2 - 1) * reach).float()
    out = q.decode(msg, key)
    assert out.failures == 0
    assert bool(((out.value - x).abs() <= eps / 2 * (1 + 1e-9) + ulp_bound(x)).all())
    assert torch.equal(out.value, grid(torch.from_numpy(m_ref), eps))


@pytest.mark.parametrize("dithered", [False, True])
def test_lattice_counts_failures_exactly_outside_window(dithered):
    eps, bits, n = 1e-3, 6, qz._CHUNK + 3000                    # spans two work chunks
    name = "dithered_lattice" if dithered else "lattice"
    q = make_quantizer(name, bits, eps)
    x = torch.randn(n, generator=gen(5)) * 0.1
    msg = q.encode(x, gen(6))
    wrong = torch.randperm(n, generator=gen(7))[:137]
    key = x.clone()
    shift = torch.tensor([1.0, -1.0]).repeat(69)[:137] * (q.window + 2 * eps)
    shift *= 1 + torch.rand(137, generator=gen(8)) * 5                          # off by 1..6 windows
    key[wrong] += shift
    out = q.decode(msg, key)
    assert out.failures == 137
    bad = torch.zeros(n, dtype=torch.bool)
    bad[wrong] = True
    err = (out.value - x).double()
    assert bool((err[~bad].abs() <= eps / 2 + 1e-7).all())
    laps = err[bad] / (q.q * eps)                                 # wrapped by a non-zero multiple of q*eps
    assert bool((laps.abs() > 0.5).all()) and bool(((laps - laps.round()).abs() < 0.02).all())
    no_oracle = Message(msg.payload, msg.bits, msg.numel, check=None)
    assert q.decode(no_oracle, key).failures == 0               # nothing to count against


def test_lattice_decodes_against_zero_when_key_is_none():
    q = make_quantizer("lattice", 10, 1e-4)                       # window 0.0512
    x = torch.tensor([0.01, -0.05, 0.0, 0.06])
    out = q.decode(q.encode(x), None)
    assert out.failures == 1
    assert torch.allclose(out.value[:3], x[:3], atol=5e-5)


def test_lattice_large_values_decode():
    eps, bits = 1e-4, 14
    q = make_quantizer("lattice", bits, eps)
    x = (torch.rand(50_000, generator=gen(9)) * 2 - 1) * 1e3
    x[:4] = torch.tensor([1e3, -1e3, 999.99995, -0.00005])
    key = x + (torch.rand(50_000, generator=gen(10)) * 2 - 1) * 0.8
    out = q.decode(q.encode(x), key)
    assert out.failures == 0
    assert bool(((out.value - x).abs() <= eps / 2 + ulp_bound(x) * 1.0001).all())
    k = torch.randint(-10_000_000, 10_000_000, (50_000,), generator=gen(11))   # grid points up to |x| = 1e3
    xg = grid(k, eps)
    assert torch.equal(q.decode(q.encode(xg), xg + 0.5).value, xg)


@pytest.mark.parametrize("bits", [12, 32])
def test_lattice_integers_beyond_int32(bits):
    eps = 1e-7
    q = make_quantizer("lattice", bits, eps)
    x = torch.tensor([1e3, -2e3, 0.5, 3e2])                       # |x|/eps up to 2e10 > 2**31
    msg = q.encode(x)
    assert msg.check.dtype == torch.int64 and msg.payload["codes"].dtype == torch.int32
    out = q.decode(msg, x + 1e-5)
    assert out.failures == 0
    assert bool(((out.value - x).abs() <= eps / 2 + ulp_bound(x)).all())


# ---------------------------------------------------------------------------------------------- dithered
def test_dithered_lattice_is_unbiased_and_error_at_most_eps():
    eps, n, trials = 1e-3, 64, 1500
    q = make_quantizer("dithered_lattice", 8, eps)
    x = (torch.rand(n, generator=gen(12)) - 0.5) * 0.02
    outs = [q.decode(q.encode(x, gen(1000 + t)), x) for t in range(trials)]
    assert all(o.failures == 0 for o in outs)
    err = (torch.stack([o.value for o in outs]) - x).double()
    assert bool((err.abs() <= eps / 2 + 1e-8).all())              # <= eps/2 (+ float32 output rounding)
    sd = eps / math.sqrt(12 * trials)                             # error ~ U[-eps/2, eps/2]
    assert float(err.mean(0).abs().max()) < 5 * sd
    # the plain lattice is biased on the same points: the test can tell the difference
    plain = make_quantizer("lattice", 8, eps)
    bias = (plain.decode(plain.encode(x), x).value - x).double().abs().max()
    assert float(bias) > 20 * sd


# ---------------------------------------------------------------------------------------------- qsgd
@pytest.mark.parametrize("bucket,segments", [(None, [20, 44]), (8, None), (5, [7, 3, 54])])
def test_qsgd_unbiased_within_range_and_on_k_levels(bucket, segments):
    bits, n, trials = 2, 64, 1000
    k = 2 ** bits
    q = make_quantizer("qsgd", bits, bucket=bucket, segments=segments)
    x = torch.randn(n, generator=gen(13))
    lo_c, hi_c, unit_c = torch.empty(n), torch.empty(n), torch.empty(n)
    start = 0
    for seg in segments or [n]:                                    # reference bucket ranges
        size = bucket or seg
        for a in range(start, start + seg, size):
            b = min(a + size, start + seg)
            lo_c[a:b], hi_c[a:b] = x[a:b].min(), x[a:b].max()
            unit_c[a:b] = (x[a:b].max() - x[a:b].min()) / (k - 1)
        start += seg
    v = torch.stack([q.decode(q.encode(x, gen(2000 + t)), None).value for t in range(trials)])
    assert bool((v >= lo_c).all() and (v <= hi_c).all())
    lvl = (v - lo_c) / unit_c
    assert bool(((lvl - lvl.round()).abs() < 1e-4).all())       # on the k-level grid of its bucket
    frac = ((x - lo_c) / unit_c).double()
    frac -= frac.floor()
    sd = (unit_c.double() * (frac * (1 - frac)).sqrt() / math.sqrt(trials)).clamp_min(1e-7)
    assert bool(((v.double().mean(0) - x.double()).abs() <= 6 * sd + 1e-6).all())


def test_qsgd_constant_segments_and_one_bit():
    q = make_quantizer("qsgd", 1, segments=[5, 5])
    x = torch.tensor([2.0] * 5 + [0.0, 1.0, 0.25, 0.5, 1.0])
    msg = q.encode(x, gen(0))
    assert msg.bits == 10 + 2 * 64
    assert int(msg.payload["codes"].max()) <= 1 and int(msg.payload["codes"].min()) >= 0
    v = q.decode(msg, None).value
    assert torch.equal(v[:5], x[:5])                                # constant segment: exact
    assert set(v[5:].tolist()) <= {0.0, 1.0}                        # b = 1: two levels, min and max
    assert v[5] == 0.0 and v[6] == 1.0 and v[9] == 1.0              # the extremes are levels


@pytest.mark.parametrize("bits", [4, 16, 24, 32])
def test_qsgd_matches_reference_decoding_on_chunked_layouts(bits):
    d = 2 * qz._CHUNK + 777                                      # one bucket larger than a work chunk
    for bucket, segments in [(None, None), (None, [3, 1, 1000, d - 1004]), (100_003, None), (7, [5, d - 5])]:
        q = make_quantizer("qsgd", bits, bucket=bucket, segments=segments)
        x = torch.randn(d, generator=gen(14))
        msg = q.encode(x, gen(15))
        codes = msg.payload["codes"].long() & (2 ** bits - 1 if bits < 32 else 0xFFFFFFFF)
        lo, hi = msg.payload["min"].double(), msg.payload["max"].double()
        sizes = q._plan(d)[0]
        per = torch.tensor([s for _, c, s in sizes for _ in range(c)])
        assert per.numel() == lo.numel() and int(per.sum()) == d
        assert msg.bits == bits * d + 64 * lo.numel()
        lo_e, hi_e = lo.repeat_interleave(per), hi.repeat_interleave(per)
        unit = (hi_e - lo_e) / (2 ** bits - 1)
        assert bool((x.double() >= lo_e).all() and (x.double() <= hi_e).all())
        ref = lo_e + codes.double() * unit
        v = q.decode(msg, None).value.double()
        tol = 2e-7 * (hi_e.abs() + lo_e.abs()) + 1e-12
        assert bool(((v - ref).abs() <= tol).all()) and bool((v <= hi_e).all())
        assert bool(((v - x.double()).abs() <= unit + tol).all())   # every coordinate was quantized


# ---------------------------------------------------------------------------------------------- bits, seeds
@pytest.mark.parametrize("d", [1, 10, 1000, 4097])
@pytest.mark.parametrize("bits", [1, 7, 12, 32])
def test_bit_counts_are_exact(d, bits):
    x = torch.randn(d, generator=gen(16))
    assert make_quantizer("lattice", bits).encode(x).bits == bits * d
    assert make_quantizer("dithered_lattice", bits).encode(x, gen(0)).bits == bits * d + 64
    for bucket in (None, 1, 3, 128, 5000):
        nb = math.ceil(d / bucket) if bucket else 1
        assert make_quantizer("qsgd", bits, bucket=bucket).encode(x, gen(0)).bits == bits * d + 64 * nb
    if d >= 10:
        segs = [3, 0, 4, d - 7]
        nb = 1 + 0 + 1 + math.ceil((d - 7) / 4) if d > 7 else 2
        assert make_quantizer("qsgd", bits, bucket=4, segments=segs).encode(x, gen(0)).bits == bits * d + 64 * nb
        assert make_quantizer("qsgd", bits, segments=segs).encode(x, gen(0)).bits == bits * d + 64 * 3


@pytest.mark.parametrize("name", ["qsgd", "dithered_lattice", "lattice", "identity"])
def test_messages_depend_only_on_the_generator_seed(name):
    q = make_quantizer(name, 32 if name == "identity" else 6, 1e-2, bucket=16)
    x = torch.randn(500, generator=gen(17))
    a, b, c = q.encode(x, gen(42)), q.encode(x, gen(42)), q.encode(x, gen(43))
    assert a.bits == b.bits == c.bits
    assert a.payload.keys() == b.payload.keys()
    assert all(torch.equal(a.payload[k], b.payload[k]) for k in a.payload)
    same = all(torch.equal(a.payload[k], c.payload[k]) for k in a.payload)
    assert same == (name in ("lattice", "identity"))
    assert torch.equal(q.decode(a, x).value, q.decode(b, x).value)


def test_encode_uses_no_global_rng():
    q = make_quantizer("qsgd", 4)
    x = torch.randn(100, generator=gen(18))
    state = torch.get_rng_state()
    q.encode(x, gen(1))
    make_quantizer("dithered_lattice", 4).encode(x, gen(1))
    assert torch.equal(torch.get_rng_state(), state)


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,field", [
    (dict(name="lattic"), "name"), (dict(name="lattice", bits=0), "bits"),
    (dict(name="lattice", bits=33), "bits"), (dict(name="qsgd", bits=2.5), "bits"),
    (dict(name="qsgd", bits=True), "bits"), (dict(name="identity", bits=8), "bits"),
    (dict(name="lattice", eps=0.0), "eps"), (dict(name="lattice", eps=-1e-4), "eps"),
    (dict(name="lattice", eps=math.nan), "eps"),
    (dict(name="qsgd", bucket=0), "bucket"), (dict(name="qsgd", bucket=-4), "bucket"),
    (dict(name="qsgd", segments=[3, -1]), "segments"),
])
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        make_quantizer(**kwargs)


def test_bad_inputs_name_the_argument():
    x = torch.randn(10, generator=gen(19))
    with pytest.raises(ValueError, match="^generator:"):
        make_quantizer("qsgd", 4).encode(x)
    with pytest.raises(ValueError, match="^generator:"):
        make_quantizer("dithered_lattice", 4).encode(x, None)
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("lattice", 4).encode(x.double())
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("lattice", 4).encode(x.view(2, 5))
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("qsgd", 4, segments=[4, 5]).encode(x, gen(0))
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("lattice", 4).encode(torch.tensor([1.0, math.inf]))
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("dithered_lattice", 4).encode(torch.tensor([1.0, math.nan, 2.0]), gen(0))
    with pytest.raises(ValueError, match="^x:"):
        make_quantizer("qsgd", 4).encode(torch.tensor([1.0, math.nan]), gen(0))
    for name in ("lattice", "dithered_lattice", "qsgd"):                # send checks x as encode does
        with pytest.raises(ValueError, match="^x:"):
            make_quantizer(name, 4).send(torch.tensor([1.0, math.inf]), None, gen(0))
    with pytest.raises(ValueError, match="^key:"):
        make_quantizer("lattice", 4).send(x, x[:5])
    q = make_quantizer("lattice", 4)
    with pytest.raises(ValueError, match="^key:"):
        q.decode(q.encode(x), x[:5])


# ---------------------------------------------------------------------------------------------- bit identity
# The fused/compiled kernels must reproduce the original implementation (frozen in quantize_reference.py)
# bit for bit on CPU: codes, oracle, decoded values, failure counts, bits and the random draws.


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bit patterns (+0.0 and -0.0 differ); NaN matches NaN whatever its payload."""
    if a.dtype != b.dtype or a.shape != b.shape or a.device != b.device:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    as_int = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return bool(((a.view(as_int) == b.view(as_int)) | (a.isnan() & b.isnan())).all())


def lattice_inputs(eps: float, bits: int, big: bool = True) -> dict[str, torch.Tensor]:
    """Named test vectors: ties, near-ties, the int64 path, zeros/subnormals, tiny and (``big``) chunk-spanning
    sizes."""
    k = torch.randint(-3000, 3000, (600,), generator=gen(30)).double()
    ties = ((k + 0.5) * eps).float()                          # exact ties when eps is a power of two
    near = torch.cat([torch.nextafter(ties, ties + 1), torch.nextafter(ties, ties - 1), ties])
    out = {
        "normal": torch.randn(3000, generator=gen(31)) * 0.05,
        "ties": ties, "near_ties": near,
        "zeros": torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, eps / 4, -eps / 4, -eps / 2, eps / 2]),
        "one": torch.tensor([-0.3]), "two": torch.tensor([0.7, -0.2]), "empty": torch.zeros(0),
    }
    if big:
        out["chunks"] = torch.randn(qz._CHUNK + 13, generator=gen(32)) * 0.1
    if 2000 / eps >= 2 ** 31:                                # |x|/eps beyond int32: the int64 path
        spread = torch.rand(500, generator=gen(33)) * 4e3 - 2e3
        out["huge"] = torch.cat([torch.tensor([2000.0, -2000.0, 1e3 + 0.5]), spread])
    return out


def lattice_keys(x: torch.Tensor, q) -> dict[str, torch.Tensor | None]:
    """Keys inside the window, some coordinates far outside it (wrapped), float64, one inf, none."""
    inside = x.double() + (torch.rand(x.numel(), generator=gen(34), dtype=torch.float64) * 2 - 1) * q.window * 0.7
    far = inside.clone()
    far[::7] += q.window * (3 + torch.rand(far[::7].numel(), generator=gen(35), dtype=torch.float64) * 40)
    keys = {"inside": inside.float(), "far": far.float(), "float64": far, "none": None}
    if x.numel() > 3:
        special = inside.float()
        special[1], special[2] = math.inf, -math.inf
        keys["inf"] = special
    return keys


def assert_lattice_matches_reference(name: str, bits: int, eps: float, inputs=None, keys=None, oracle_free: bool = True):
    """``oracle_free``: also decode without the oracle (always the eager loop: the compiled kernels need it)."""
    cls = ref.DitheredLatticeQuantizer if name == "dithered_lattice" else ref.LatticeQuantizer
    old, new = cls(bits, eps), make_quantizer(name, bits, eps)
    for label, x in (inputs or lattice_inputs(eps, bits)).items():
        where = f"{name} b={bits} eps={eps} x={label}"
        a, b = old.encode(x, gen(40)), new.encode(x, gen(40))
        assert a.payload.keys() == b.payload.keys() and a.bits == b.bits and a.numel == b.numel, where
        assert all(same_bits(a.payload[k], b.payload[k]) for k in a.payload), where
        assert same_bits(a.check, b.check), where
        for kname, key in (keys or lattice_keys)(x, new).items():
            r = old.decode(a, key)
            d, s = new.decode(b, key), new.send(x, key, gen(40))
            assert same_bits(r.value, d.value) and r.failures == d.failures, f"{where} key={kname} decode"
            assert same_bits(r.value, s.value) and r.failures == s.failures, f"{where} key={kname} send"
            assert s.bits == a.bits, where
        if oracle_free and name == "lattice" and x.numel():          # the oracle matters: decode without it counts 0
            bare = Message(b.payload, b.bits, b.numel, check=None)
            assert same_bits(new.decode(bare, x).value, old.decode(Message(a.payload, a.bits, a.numel), x).value)


@pytest.mark.parametrize("bits", [1, 2, 10, 12, 31, 32])
@pytest.mark.parametrize("name", ["lattice", "dithered_lattice"])
def test_lattice_is_bit_identical_to_the_reference(name, bits):
    for i, eps in enumerate((1e-4, 3e-3 if bits % 2 else 2.0 ** -10, 0.5, 1e-7)):   # 0.5, 2**-10: exact ties
        assert_lattice_matches_reference(name, bits, eps, lattice_inputs(eps, bits, big=i == 0))


def qsgd_layouts(d: int):
    return [(None, None), (7, None), (None, [3, 0, 1, 100, d - 104]), (5, [0, 5, d - 5]), (100_003, None),
            (None, [d]), (1, [2, d - 2])]


@pytest.mark.parametrize("bits", [1, 2, 4, 10, 16, 17, 24, 31, 32])
def test_qsgd_is_bit_identical_to_the_reference(bits):
    d = qz._CHUNK + 333                                      # buckets larger than a chunk, merged small ones
    x = torch.randn(d, generator=gen(41))
    x[200:300] = 0.25                                         # a constant bucket under bucket=7 and [3,0,1,100,..]
    x[5:9] = torch.tensor([3e4, -3e4, 1e-30, -0.0])
    for bucket, segments in qsgd_layouts(d):
        old = ref.QSGDQuantizer(bits, bucket, segments)
        new = make_quantizer("qsgd", bits, bucket=bucket, segments=segments)
        where = f"qsgd b={bits} bucket={bucket} segments={segments}"
        for xx in (x, x[:40].clone()) if segments is None else (x,):
            a, b = old.encode(xx, gen(42)), new.encode(xx, gen(42))
            assert a.payload.keys() == b.payload.keys() and a.bits == b.bits, where
            assert all(same_bits(a.payload[k], b.payload[k]) for k in a.payload), where
            r = old.decode(a, None)
            assert same_bits(r.value, new.decode(b, None).value), where
            s = new.send(xx, None, gen(42))
            assert same_bits(r.value, s.value) and s.failures == 0 and s.bits == a.bits, where


def test_identity_send_copies_unless_borrowing():
    q = make_quantizer("identity")
    x = torch.randn(50, generator=gen(43))
    s = q.send(x, None)
    assert torch.equal(s.value, x) and s.value.data_ptr() != x.data_ptr() and s.bits == 32 * 50 and s.failures == 0
    assert q.borrowing().send(x, None).value is x
    out = torch.empty(50)
    assert q.send(x, None, out=out).value is out and torch.equal(out, x)


@pytest.mark.parametrize("name", ["lattice", "dithered_lattice", "qsgd", "identity"])
def test_send_and_decode_write_into_out(name):
    q = make_quantizer(name, 32 if name == "identity" else 8, 1e-3)
    x = torch.randn(100, generator=gen(44)) * 0.01
    out = torch.full((100,), 7.0)
    s = q.send(x, x, gen(1), out=out)
    assert s.value is out and torch.equal(out, q.decode(q.encode(x, gen(1)), x).value)
    out2 = torch.empty(100)
    assert q.decode(q.encode(x, gen(1)), x, out=out2).value is out2 and torch.equal(out2, out)
    with pytest.raises(ValueError, match="^out:"):
        q.send(x, x, gen(1), out=torch.empty(99))
    with pytest.raises(ValueError, match="^out:"):
        q.send(x, x, gen(1), out=torch.empty(100, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- compiled kernels
@pytest.fixture
def restore_kernels_state():
    state = dict(kernels._state)
    yield
    kernels._state.update(state)


def test_compile_mode_comes_from_the_environment_and_is_validated(monkeypatch, restore_kernels_state):
    monkeypatch.setenv("QAFL_QUANT_COMPILE", "off")
    assert kernels.compile_mode() == "off" and not kernels.use_compiled(10 ** 7, torch.device("cpu"))
    monkeypatch.setenv("QAFL_QUANT_COMPILE", "auto")
    cpu = torch.device("cpu")
    assert kernels.use_compiled(kernels.COMPILE_MIN, cpu) and not kernels.use_compiled(kernels.COMPILE_MIN - 1, cpu)
    assert not kernels.use_compiled(10 ** 7, torch.device("cuda"))       # auto: CPU only (GPUs need Triton)
    with kernels.compiling("on"):
        assert kernels.use_compiled(2, cpu) and not kernels.use_compiled(1, cpu)
    monkeypatch.setenv("QAFL_QUANT_COMPILE", "fast")
    with pytest.raises(ValueError, match="^QAFL_QUANT_COMPILE: expected one of auto, on, off"):
        kernels.compile_mode()
    with pytest.raises(ValueError, match="^mode:"), kernels.compiling("yes"):
        pass


def test_a_failing_compiler_falls_back_to_the_same_results(monkeypatch, restore_kernels_state, caplog):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no C++ compiler")
        return call
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(kernels, "_compiled", {})
    q, old = make_quantizer("lattice", 10, 1e-3), ref.LatticeQuantizer(10, 1e-3)
    x = torch.randn(1000, generator=gen(45)) * 0.1
    with kernels.compiling("on"), caplog.at_level("WARNING", logger="qafl"):
        s = q.send(x, x + 0.01, None)
        assert kernels.compile_status()["failed"] == "RuntimeError: no C++ compiler"
        assert not kernels.use_compiled(1000, x.device)                      # eager from now on
        m = q.encode(x)
    assert same_bits(s.value, old.decode(old.encode(x), x + 0.01).value)
    assert same_bits(m.payload["codes"], old.encode(x).payload["codes"])
    assert sum("torch.compile failed" in r.message for r in caplog.records) == 1


@pytest.mark.slow
@pytest.mark.parametrize("bad", [float("nan"), -float("inf"), 1e15])
def test_the_compiled_send_checks_the_range_of_x_in_its_one_pass(bad, monkeypatch):
    """The compiled send returns max |x| with its failures instead of reading x twice; a nan, an inf or
    |x|/eps >= 2**62 is the same error as the encoder's (compiles the send kernel unless cached)."""
    q = make_quantizer("lattice", 10, 1e-4)
    x = torch.randn(1000, generator=gen(47)) * 0.1
    x[123] = bad
    with kernels.compiling("on"), monkeypatch.context() as mp:
        mp.setattr(type(q), "_send_eager", lambda *a, **k: pytest.fail("the eager loop ran"))
        with pytest.raises(ValueError, match=r"^x: lattice needs finite values with \|x\|/eps < 2\*\*62") as err:
            q.send(x, torch.zeros(1000), None)
        with pytest.raises(ValueError) as want:
            q.encode(x)
        assert str(err.value) == str(want.value)
        x[123] = 0.5
        assert q.send(x, x.clone(), None).failures == 0                 # in range: no error, nothing fails


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lattice", "dithered_lattice"])
def test_compiled_lattice_kernels_are_bit_identical_to_the_reference(name, monkeypatch):
    """Compiles the encode, decode and send kernels (about a minute each on 2 cores unless inductor's
    disk cache has them) and checks them on the reference cases; the eager loops are disabled where the
    compiled kernels must run, so a silent fallback cannot pass."""
    cls = type(make_quantizer(name, 10, 1e-3))

    def forbidden(*args, **kwargs):
        raise AssertionError("the eager loop ran where the compiled kernel should have")

    x_int64_or_wide = {"huge", "one", "empty"}
    for bits, eps in [(10, 1e-4), (12, 0.5), (32, 2.0 ** -10), (10, 1e-7)]:
        inputs = {k: v for k, v in lattice_inputs(eps, bits).items() if k not in x_int64_or_wide}

        def keys(x, q):
            return {k: v for k, v in lattice_keys(x, q).items() if k in ("inside", "far", "inf")}
        with kernels.compiling("on"), monkeypatch.context() as mp:
            mp.setattr(cls, "_send_eager", forbidden)
            mp.setattr(cls, "_decode_eager", forbidden)
            if bits < 32:
                mp.setattr(cls, "_encode_eager", forbidden)
            assert_lattice_matches_reference(name, bits, eps, inputs, keys, oracle_free=False)
        with kernels.compiling("on"):                         # key=None, float64 keys, int64 m: eager, same bits
            assert_lattice_matches_reference(name, bits, eps)
    assert kernels.compile_status()["failed"] is None


# ---------------------------------------------------------------------------------------------- devices, extensions
class HostReads:
    """Counts reads of tensor values into Python (``item``, ``bool``, ``int``, ``float``, ``tolist``): on an
    accelerator each is a synchronising round-trip."""

    def __init__(self, monkeypatch):
        self.count = 0
        for meth in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__"):
            real = getattr(torch.Tensor, meth)

            def counted(t, *a, _real=real, **k):
                self.count += 1
                return _real(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, meth, counted)


@pytest.mark.parametrize("name,reads", [("lattice", (1, 1, 2)), ("dithered_lattice", (2, 2, 3)), ("qsgd", (1, 0, 1))])
def test_host_reads_per_message_do_not_grow_with_chunks(name, reads, monkeypatch):
    """(encode, decode, send) read the device at most a fixed number of times, however many work chunks."""
    q = make_quantizer(name, 10, 1e-3, bucket=1000)
    for n in (100, 3 * qz._CHUNK + 5):
        x = torch.randn(n, generator=gen(46)) * 0.1
        key = x + 0.001
        msg = q.encode(x, gen(1))
        with monkeypatch.context() as mp:
            counter = HostReads(mp)
            q.encode(x, gen(1))
            after_encode = counter.count
            q.decode(msg, key)
            after_decode = counter.count
            q.send(x, key, gen(1))
        assert (after_encode, after_decode - after_encode, counter.count - after_decode) == reads, n


def test_work_chunks_are_cache_sized_on_cpu_and_whole_vectors_elsewhere():
    from qafl_core.quantize.base import _chunks

    n = 2 * qz._CHUNK + 1
    assert list(_chunks(n, torch.device("cpu"))) == [(0, qz._CHUNK), (qz._CHUNK, 2 * qz._CHUNK), (2 * qz._CHUNK, n)]
    assert list(_chunks(n, torch.device("cuda"))) == [(0, n)] and list(_chunks(0, torch.device("cuda"))) == []


def test_tensors_stay_on_the_vectors_device_and_generators_must_match():
    x = torch.randn(300, generator=gen(47))
    for name in ("lattice", "dithered_lattice", "qsgd"):
        q = make_quantizer(name, 8, 1e-2, bucket=64)
        msg = q.encode(x, gen(2))
        assert all(t.device == x.device for t in msg.payload.values())
        assert q.decode(msg, x).value.device == x.device and q.send(x, x, gen(2)).value.device == x.device

    class CudaGenerator(torch.Generator):                   # stands in for torch.Generator(device="cuda")
        @property
        def device(self):
            return torch.device("cuda")

    for name in ("qsgd", "dithered_lattice"):
        with pytest.raises(ValueError, match=f"^generator: {name} draws on the vector's device cpu, got a generator on"):
            make_quantizer(name, 4).encode(x, CudaGenerator())
    with pytest.raises(ValueError, match="^key: expected a tensor on"):
        make_quantizer("lattice", 8).decode(make_quantizer("lattice", 8).encode(x), x.to("meta"))


def test_a_registered_quantizer_can_send_via_decode(monkeypatch):
    class Halving(qz.SendViaDecode):
        name, bits_per_coord, needs_key = "halving", 16, False

        def encode(self, x, generator=None):
            return Message({"v": x * 0.5}, 16 * x.numel(), x.numel())

        def decode(self, msg, key=None):
            return Decoded(msg.payload["v"] * 2, 0)

    monkeypatch.setitem(qz.BUILDERS, "halving", lambda bits, eps, bucket, segments: Halving())
    q = make_quantizer("halving", 16)
    x = torch.randn(10, generator=gen(48))
    s = q.send(x, None)
    assert isinstance(s, qz.Sent) and torch.equal(s.value, x) and s.bits == 160 and s.failures == 0
    out = torch.empty(10)
    assert q.send(x, None, out=out).value is out and torch.equal(out, x)


@pytest.mark.slow
def test_compiled_decode_reuses_a_messages_float32_operands_only_for_that_message():
    """The server's message is decoded by every contacted client: its codes and oracle are converted to float32
    once (exact below 2**24) and reused. Every decode must equal the eager one bit for bit, across messages
    decoded in between and for oracles too large for float32 (no reuse then)."""
    q = make_quantizer("lattice", 12, 1e-3)
    g = torch.Generator().manual_seed(3)
    x1, x2 = torch.randn(3000, generator=g), torch.randn(3000, generator=g) * 3
    big = torch.full((3000,), 2.0 ** 25 * 1e-3) + torch.randn(3000, generator=g)    # |m| >= 2**24
    msgs = {"a": q.encode(x1), "b": q.encode(x2), "big": q.encode(big)}
    keys = {"a": x1 + 0.5, "b": x2 - 1.0, "big": big + 0.3}
    expected = {}
    with kernels.compiling("off"):
        for k, msg in msgs.items():
            for shift in (0.0, 3.0):                  # 3.0: outside the window, so failures are counted
                d = q.decode(msg, keys[k] + shift)
                expected[k, shift] = (d.value.clone(), d.failures)
    with kernels.compiling("on"):
        for k, shift in [("a", 0.0), ("a", 3.0), ("b", 0.0), ("a", 0.0), ("big", 3.0), ("big", 0.0), ("a", 3.0),
                         ("b", 3.0)]:
            d = q.decode(msgs[k], keys[k] + shift)
            value, failures = expected[k, shift]
            assert torch.equal(d.value, value) and d.failures == failures, (k, shift)
            reused = q.ws.memo is not None and q.ws.memo[0] is msgs[k]
            assert reused == (k != "big"), k
    assert expected["a", 3.0][1] > 0 and kernels.compile_status()["failed"] is None


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lattice", "dithered_lattice"])
def test_compiled_averaging_on_arrival_is_bit_identical_to_the_separate_steps(name, monkeypatch):
    """The lattice's accumulating send (``acc += value``) and decode-and-average (``y <- fma(value, p, y (1-p))``)
    run as single compiled kernels and give the bits of the separate eager steps: ``acc.add_(send)`` and
    ``decode`` then ``y.mul_(1 - p).add_(value, alpha=p)`` (torch's CPU add with alpha is a fused multiply-add).
    Lengths with odd tails, rows of a client matrix, the key being the model itself or another vector, and
    keys far enough that failures occur; the eager fallbacks are spied on, so a silent fallback cannot pass."""
    from qafl_core.quantize import lattice

    q = make_quantizer(name, 12, 1e-3)
    g = gen(61)
    ran = []
    real = kernels.run_compiled
    monkeypatch.setattr(kernels, "run_compiled", lambda fn, *a: ran.append(fn.__name__) or real(fn, *a))
    for n in (3000, 4103):
        rows = torch.randn(3, n, generator=g) * 0.2          # clients' models: rows of one matrix
        server = rows[0] + 0.01 * torch.randn(n, generator=g)
        server[::97] += 3.0                                  # outside the 12-bit window: failures
        with kernels.compiling("off"):
            msg = q.encode(server, gen(5))
        for i, p in [(1, 1 / 11), (2, 0.5)]:
            for key_is_y in (True, False):
                y = rows[i].clone() if key_is_y else rows[i]
                key = y if key_is_y else rows[i] - 0.002
                want_y = y.clone()
                with kernels.compiling("off"):
                    d = q.decode(msg, want_y if key_is_y else key)
                    want_y.mul_(1.0 - p).add_(d.value, alpha=p)
                    acc_want = torch.linspace(-1, 1, n)
                    s_want = q.send(y, server, gen(9))
                    acc_want.add_(s_want.value)
                acc = torch.linspace(-1, 1, n)
                with kernels.compiling("on"):
                    s = q.send(y, server, gen(9), out=acc, accumulate=True)
                    got = q.decode_mix(msg, key, y, p)
                assert same_bits(acc, acc_want) and s.failures == s_want.failures and s.bits == s_want.bits
                assert got.value is y and same_bits(y, want_y) and got.failures == d.failures > 0, (n, i, key_is_y)
                if not key_is_y:
                    rows[i].copy_(want_y)                     # (y was the row itself)
    assert ran.count("_decode_mix_math") >= 8 and ran.count("_send_math") == 8
    assert lattice._MIX_EXACT["cpu"] is True and kernels.compile_status()["failed"] is None
    with pytest.raises(ValueError, match="^out: send.accumulate=True. adds into out"):
        q.send(rows[0], server, gen(9), accumulate=True)
