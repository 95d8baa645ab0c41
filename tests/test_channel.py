"""The channel (:mod:`qafl_core.channel`): messages from their own named streams, decoded against the
receiver's key, bits counted exactly per receiver and direction, decode failures counted."""
from __future__ import annotations

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
