"""QSGD with a norm scale (:mod:`qafl_core.quantize.qsgd_norm`; Alistarh et al. 2017): the hand-computed seeded
case, unbiasedness, exact bits, levels from bits, buckets."""
from __future__ import annotations

import math

import pytest
import torch

from qafl_core.quantize import make_quantizer
from qafl_core.quantize.qsgd_norm import NormQSGDQuantizer


def test_seeded_case_by_hand():
    # v = (3, -4), s = 2: ||v|| = 5, a = (1.2, 1.6); uniforms (0.1, 0.7): l = (1 + 1, 1 + 0) -> (5.0, -2.5)
    q = NormQSGDQuantizer(2)
    msg = q.encode_with_uniforms(torch.tensor([3.0, -4.0]), torch.tensor([0.1, 0.7]))
    assert torch.equal(q.decode(msg).value, torch.tensor([5.0, -2.5]))
    assert msg.bits == 32 + 2 * (1 + 2)


def test_monte_carlo_mean_is_the_input():
    q = NormQSGDQuantizer(2)
    g = torch.Generator().manual_seed(0)
    x = torch.tensor([3.0, -4.0])
    mean = torch.stack([q.decode(q.encode(x, g)).value for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, x, atol=0.12)        # std of one draw <= 2.5, of the mean <= 0.04: 3 sigma


@pytest.mark.parametrize("levels,bucket", [(1, None), (3, None), (7, 100), (127, 33)])
def test_values_on_the_levels_unbiased_and_bits_exact(levels, bucket):
    d = 1000
    q = NormQSGDQuantizer(levels, bucket)
    x = torch.randn(d, generator=torch.Generator().manual_seed(levels))
    g = torch.Generator().manual_seed(1)
    outs = torch.stack([q.decode(q.encode(x, g)).value for _ in range(400)])
    size = bucket or d
    norms = torch.stack([x[a:a + size].double().norm() for a in range(0, d, size)]).float()
    norm_of = norms.repeat_interleave(size)[:d].double()
    lv = outs.double() * levels / norm_of
    assert torch.allclose(lv, lv.round(), atol=1e-4) and bool((lv.abs() <= levels + 1e-4).all())
    assert bool((torch.sign(outs) * torch.sign(x) >= 0).all())           # never flips a sign
    assert (outs.mean(0) - x).abs().max() < 4 * (norm_of.max() / levels) / math.sqrt(400) + 1e-3
    buckets = -(-d // size)
    assert q.encode(x, g).bits == 32 * buckets + d * (1 + math.ceil(math.log2(levels + 1)))


def test_levels_from_bits_and_the_registry():
    assert [NormQSGDQuantizer.from_bits(b).levels for b in (2, 3, 4, 8)] == [1, 3, 7, 127]
    q = make_quantizer("qsgd_norm", bits=4)
    assert q.levels == 7 and q.bits_per_coord == 4
    assert q.encode(torch.ones(10), torch.Generator().manual_seed(0)).bits == 32 + 40
    with pytest.raises(ValueError, match="bits: qsgd_norm needs an integer in 2..32"):
        make_quantizer("qsgd_norm", bits=1)


def test_zero_vector_and_bad_input():
    q = NormQSGDQuantizer(3)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(q.decode(q.encode(torch.zeros(4), g)).value, torch.zeros(4))
    assert torch.equal(q.decode(q.encode(torch.full((4,), 1e-12), g)).value, torch.zeros(4))   # norm < 1e-10
    with pytest.raises(ValueError, match="x: qsgd_norm needs finite values"):
        q.encode(torch.tensor([1.0, float("inf")]), g)
    with pytest.raises(ValueError, match="generator: qsgd_norm encoding is random"):
        q.encode(torch.ones(3))
    with pytest.raises(ValueError, match="levels: expected an integer"):
        NormQSGDQuantizer(0)
