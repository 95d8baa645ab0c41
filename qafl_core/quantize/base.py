"""Message types, the quantizer protocol and shared checks of :mod:`qafl_core.quantize`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

_CHUNK = 1 << 18          # float64 work chunk: 2 MiB, stays in cache
_SEED_BITS = 64           # the dithered lattice sends its dither seed as a 64-bit header
_MINMAX_BITS = 64         # qsgd sends float32 min and max per bucket


@dataclass
class Message:
    """What one send puts on the wire.

    Attributes:
        payload: the transmitted tensors (codes, per-bucket scales, seed, ...).
        bits: exact size of the payload in bits, headers included.
        numel: length of the encoded vector.
        check: simulation-only oracle (the lattice's un-wrapped integers ``m``) used to *count* decode
            failures; never counted in ``bits`` and never used to decode.
    """

    payload: dict[str, torch.Tensor]
    bits: int
    numel: int
    check: torch.Tensor | None = None


@dataclass
class Decoded:
    """A decoded vector (fresh float32 tensor) and its number of wrongly decoded coordinates."""

    value: torch.Tensor
    failures: int


@runtime_checkable
class Quantizer(Protocol):
    """Encode/decode pair. ``needs_key`` says whether ``decode`` uses the receiver's vector."""

    name: str
    bits_per_coord: int
    needs_key: bool

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message: ...

    def decode(self, msg: Message, key: torch.Tensor | None) -> Decoded: ...



# ---------------------------------------------------------------------------------------------- helpers
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
