"""The channel (:mod:`qafl_core.channel`): messages from their own named streams, decoded against the
receiver's key, bits counted exactly per receiver and direction, decode failures counted."""
from __future__ import annotations

import pytest
import torch

from qafl_core.channel import Channel
from qafl_core.quantize import make_quantizer


def test_bits_are_counted_per_receiver_and_direction():
    ch = Channel(make_quantizer("identity", bits=32), seed=0, device=torch.device("cpu"), name="test")
    x = torch.arange(5, dtype=torch.float32)
    msg = ch.encode(x, 0, "up", 1)
    assert msg.bits == 5 * 32
    assert torch.equal(ch.decode(msg, None, "client->server", time=0.0), x)
    assert (ch.bits_up, ch.bits_down) == (160, 0)
    ch.decode(msg, None, "server->client", time=0.0)
    ch.decode(msg, None, "server->clients", time=0.0, receivers=7)
    assert (ch.bits_up, ch.bits_down) == (160, 160 * 8)


def test_messages_come_from_their_own_named_streams():
    ch = Channel(make_quantizer("qsgd", bits=3), seed=4, device=torch.device("cpu"), name="test")
    x = torch.linspace(-1, 1, 50)
    a, b, c = ch.encode(x, 2, "up", 3), ch.encode(x, 2, "up", 3), ch.encode(x, 2, "up", 4)
    assert torch.equal(a.payload["codes"], b.payload["codes"])          # same step and id: same draws
    assert not torch.equal(a.payload["codes"], c.payload["codes"])      # another sender: another stream
    assert ch.bits_up == ch.bits_down == 0                              # encoding sends nothing yet


def test_lattice_failures_are_counted_against_the_receivers_key(caplog):
    q = make_quantizer("lattice", bits=2, eps=0.1)           # window q*eps/2 = 0.2 around the key
    ch = Channel(q, seed=0, device=torch.device("cpu"), name="test")
    x = torch.tensor([0.0, 0.1, 1.0])
    msg = ch.encode(x, 0, "down")
    near = ch.decode(msg, x.clone(), "server->client", time=3.0)
    assert torch.allclose(near, x) and ch.decode_failures == 0
    ch.decode(msg, torch.zeros(3), "server->client", time=3.0)   # 1.0 is 10 lattice steps from the key 0
    assert ch.decode_failures == 1 and ch.failed_messages == 1
    assert "fell outside the lattice decoding window at t=3.0" in caplog.text
    assert ch.bits_down == 2 * msg.bits


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("name,bits", [("lattice", 3), ("lattice", 32), ("dithered_lattice", 4), ("qsgd", 3),
                                       ("identity", 32), ("topk", 8), ("qsgd_norm", 4)])
def test_send_equals_encode_then_decode(name, bits, caplog):
    """One pass (the quantizer's fused send, or encode + decode where it has none) gives the same value, bits,
    failures and log as encoding and decoding from the same named stream; the key is 0.3 away from x in
    places, beyond a 3-bit lattice's window, so failures occur and are counted."""
    x = torch.linspace(-1, 1, 50)
    key = x.clone()
    key[::7] += 0.3
    two = [Channel(make_quantizer(name, bits=bits, eps=0.05), seed=3, device=torch.device("cpu"), name="t")
           for _ in range(2)]
    fused = two[0].send(x, key, "client->server", 1.5, 4, "up", 2).clone()
    want = two[1].decode(two[1].encode(x, 4, "up", 2), key, "client->server", time=1.5)
    assert _same_bits(fused, want)
    counts = [(c.bits_up, c.bits_down, c.decode_failures, c.failed_messages) for c in two]
    assert counts[0] == counts[1] and counts[0][0] > 0
    if name == "lattice" and bits == 3:
        assert counts[0][2] > 0 and caplog.text.count("fell outside the lattice decoding window at t=1.5") == 2
    down = two[0].send(x, key, "server->client", 1.5, 4, "down")
    assert two[0].bits_down == counts[0][0] and down.shape == x.shape


def test_send_reuses_one_work_buffer_and_the_zero_copy_identity_writes_nothing():
    ch = Channel(make_quantizer("lattice", bits=8, eps=0.01), seed=0, device=torch.device("cpu"), name="t")
    x = torch.linspace(-1, 1, 20)
    a = ch.send(x, x, "client->server", 0.0, 0, "up", 1)
    b = ch.send(x * 0.5, x, "client->server", 0.0, 0, "up", 2)
    assert a.data_ptr() == b.data_ptr() and torch.allclose(b, x * 0.5, atol=0.005)
    msg = ch.encode(x, 0, "down")
    c, d = (ch.decode(msg, x, "server->client", 0.0, scratch=True) for _ in range(2))
    assert c.data_ptr() == d.data_ptr() != a.data_ptr()                 # scratch decodes: their own buffer
    assert ch.decode(msg, x, "server->client", 0.0).data_ptr() != c.data_ptr()   # default: a fresh tensor
    borrow = Channel(make_quantizer("identity").borrowing(), seed=0, device=torch.device("cpu"), name="t")
    assert borrow.send(x, None, "client->server", 0.0, 0, "up", 1) is x and borrow.bits_up == 20 * 32


@pytest.mark.parametrize("name,bits", [("lattice", 3), ("lattice", 32), ("dithered_lattice", 4), ("qsgd", 3),
                                       ("identity", 32), ("topk", 8), ("qsgd_norm", 4)])
def test_averaging_on_arrival_equals_the_separate_steps(name, bits, caplog):
    """``send(add_to=acc)`` is ``acc.add_(send(...))`` and ``decode_mix`` is ``decode`` then ``mul_``/``add_``: same
    bits, counts, failures and log, for every quantizer (eager here; the compiled lattice kernels are held to
    the same in tests/test_quantize.py). The key is 0.3 away in places, so a 3-bit lattice fails there."""
    x = torch.linspace(-1, 1, 53)
    key = x.clone()
    key[::7] += 0.3
    fused, plain = (Channel(make_quantizer(name, bits=bits, eps=0.05), seed=3, device=torch.device("cpu"), name="t")
                    for _ in range(2))
    acc0 = torch.linspace(0.5, -2.0, 53)
    acc1 = acc0.clone()
    assert fused.send(x, key, "client->server", 1.5, 4, "up", 2, add_to=acc0) is acc0
    acc1.add_(plain.send(x, key, "client->server", 1.5, 4, "up", 2))
    assert _same_bits(acc0, acc1)
    msg = fused.encode(x * 0.9, 4, "down")
    for p, key_is_y in [(1 / 11, True), (1 / 3, False)]:
        y0 = key.clone()
        y1 = y0.clone()
        other = y0 + 0.01
        assert fused.decode_mix(msg, y0 if key_is_y else other, y0, p, "server->client", 1.5) is y0
        v = plain.decode(msg, y1 if key_is_y else other, "server->client", 1.5, scratch=True)
        y1.mul_(1.0 - p).add_(v, alpha=p)
        assert _same_bits(y0, y1), p
    counts = [(c.bits_up, c.bits_down, c.decode_failures, c.failed_messages) for c in (fused, plain)]
    assert counts[0] == counts[1] and counts[0][1] == 2 * msg.bits
    if name == "lattice" and bits == 3:
        assert counts[0][2] > 0 and caplog.text.count("fell outside the lattice decoding window at t=1.5") == 2 * 3
