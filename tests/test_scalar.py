"""Per-tensor scalar quantization (:mod:`qafl_core.quantize.scalar`, FLSim's as used by QAFeL's authors):
the hand-computed bit count, round-to-nearest error, full-precision tensors."""
from __future__ import annotations

import pytest
import torch

from qafl_core.quantize.scalar import ScalarQuantizer


def test_bits_of_a_weight_tensor_and_its_biases():
    # scalar(4) on a 1,000-weight tensor + 10 biases: 4,000 + 96 + 320 bits = 552 bytes
    q = ScalarQuantizer(4, [1000, 10], full_precision=[False, True])
    msg = q.encode(torch.randn(1010, generator=torch.Generator().manual_seed(0)))
    assert msg.bits == 4000 + 96 + 320 == 552 * 8


@pytest.mark.parametrize("bits", [1, 2, 4, 8, 16])
def test_round_to_nearest_within_half_a_level_biases_exact(bits):
    segs = [300, 20, 50, 5]
    x = torch.randn(sum(segs), generator=torch.Generator().manual_seed(bits)) * 3
    q = ScalarQuantizer(bits, segs, full_precision=[False, True, False, True])
    out = q.decode(q.encode(x)).value
    a = 0
    for n, fp in zip(segs, q.full_precision):
        seg, got = x[a:a + n], out[a:a + n]
        if fp:
            assert torch.equal(seg, got)
        else:
            half = float(seg.max() - seg.min()) / (2 * (2 ** bits - 1))
            assert float((seg - got).abs().max()) <= half * (1 + 1e-5) + 1e-6
            assert float(got.min()) >= float(seg.min()) - 1e-6 and float(got.max()) <= float(seg.max())
            levels = (got - seg.min()) / ((seg.max() - seg.min()) / (2 ** bits - 1))
            assert torch.allclose(levels, levels.round(), atol=1e-3)
        a += n


def test_constant_tensor_and_bad_arguments():
    q = ScalarQuantizer(4, [3])
    assert torch.equal(q.decode(q.encode(torch.full((3,), 2.5))).value, torch.full((3,), 2.5))
    with pytest.raises(ValueError, match="full_precision: expected 2 flags"):
        ScalarQuantizer(4, [3, 4], full_precision=[True])
    with pytest.raises(ValueError, match="bits: expected an integer in 1..16"):
        ScalarQuantizer(17, [3])
    with pytest.raises(ValueError, match="x: scalar needs finite values"):
        q.encode(torch.tensor([1.0, float("nan"), 0.0]))
