"""Top-k sparsification (:mod:`qafl_core.quantize.topk`): what it keeps, exact bits, both ways of sizing k."""
from __future__ import annotations

import pytest
import torch

from qafl_core.quantize import make_quantizer
from qafl_core.quantize.topk import TopKQuantizer, index_bits


def test_top1_of_the_error_feedback_example():
    q = TopKQuantizer(percent=50)
    msg = q.encode(torch.tensor([0.8, -0.1]))
    assert torch.equal(q.decode(msg).value, torch.tensor([0.8, 0.0])) and msg.bits == 1 * (32 + 1)
    assert torch.equal(q.decode(q.encode(torch.tensor([0.1, 0.2]))).value, torch.tensor([0.0, 0.2]))


@pytest.mark.parametrize("d,percent", [(1000, 1), (1000, 10), (7, 50), (1_000_003, 1), (5, 100)])
def test_keeps_the_largest_magnitudes_exactly(d, percent):
    g = torch.Generator().manual_seed(d)
    x = torch.randn(d, generator=g)
    q = TopKQuantizer(percent=percent)
    k = q.k(d)
    assert k == d * percent // 100
    out = q.decode(q.encode(x)).value
    kept = out != 0
    assert int(kept.sum()) == k and torch.equal(out[kept], x[kept])
    if 0 < k < d:
        assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())
    assert q.encode(x).bits == k * (32 + index_bits(d))


@pytest.mark.parametrize("bits", [1, 4, 8, 32])
def test_bits_route_never_exceeds_the_budget(bits):
    d = 10_000
    q = make_quantizer("topk", bits=bits)
    msg = q.encode(torch.randn(d, generator=torch.Generator().manual_seed(1)))
    assert msg.bits <= bits * d and msg.bits > bits * d - (32 + 14)    # as many pairs as fit
    assert q.k(d) == bits * d // 46 and index_bits(d) == 14


def test_index_bits_and_edge_cases():
    assert [index_bits(d) for d in (0, 1, 2, 3, 4, 5, 1024, 1025)] == [0, 0, 1, 2, 2, 3, 10, 11]
    q = TopKQuantizer(percent=10)
    msg = q.encode(torch.ones(5))                        # k = 0: nothing is sent
    assert msg.bits == 0 and torch.equal(q.decode(msg).value, torch.zeros(5))
    with pytest.raises(ValueError, match="x: topk needs finite values"):
        q.encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="percent: give exactly one"):
        TopKQuantizer()
    with pytest.raises(ValueError, match="percent: expected a number in"):
        TopKQuantizer(percent=0)
    with pytest.raises(ValueError, match="bits: expected an integer in 1..32"):
        TopKQuantizer(bits=0)


def test_decoded_value_is_a_fresh_tensor():
    q = TopKQuantizer(percent=100)
    x = torch.tensor([1.0, 2.0])
    msg = q.encode(x)
    a, b = q.decode(msg).value, q.decode(msg).value
    a.add_(1)
    x.add_(5)
    assert torch.equal(b, torch.tensor([1.0, 2.0]))
