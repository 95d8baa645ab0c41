"""Message types, the quantizer protocol and what the quantizers share: checks, work buffers, chunking."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, NamedTuple, Protocol, runtime_checkable

import torch

_CHUNK = 1 << 18          # eager work chunk on CPU: 2 MiB of float64, stays in cache
_SEED_BITS = 64           # the dithered lattice sends its dither seed as a 64-bit header
_MINMAX_BITS = 64         # qsgd sends float32 min and max per bucket


@dataclass
class Message:
    """What one send puts on the wire.

    Attributes:
        payload: the transmitted tensors (codes, per-bucket scales, seed, ...), on the sender's device.
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


class Sent(NamedTuple):
    """One message encoded and decoded at once (:meth:`Quantizer.send`): what the receiver gets, its
    wrongly decoded coordinates and the message's exact size in bits -- equal to ``decode(encode(x))``."""

    value: torch.Tensor
    failures: int
    bits: int


@runtime_checkable
class Quantizer(Protocol):
    """Encode/decode pair. ``needs_key`` says whether ``decode`` uses the receiver's vector.

    ``send(x, key, generator)`` equals ``decode(encode(x, generator), key)`` (value, failures) plus the
    message's bits, without materialising the codes: the simulator's one-receiver messages use it; a
    message decoded by several receivers (the server's model in QuAFL) is encoded once and decoded by each.
    """

    name: str
    bits_per_coord: int
    needs_key: bool

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> Message: ...

    def decode(self, msg: Message, key: torch.Tensor | None) -> Decoded: ...

    def send(self, x: torch.Tensor, key: torch.Tensor | None, generator: torch.Generator | None = None,
             out: torch.Tensor | None = None) -> Sent: ...


class SendViaDecode:
    """Mixin: ``send`` as ``decode(encode(x))``, for quantizers without a fused one (registered extensions)."""

    def send(self, x: torch.Tensor, key: torch.Tensor | None, generator: torch.Generator | None = None,
             out: torch.Tensor | None = None) -> Sent:
        msg = self.encode(x, generator)
        dec = self.decode(msg, key)
        if out is not None:
            _check_out(out, msg.numel, dec.value.device).copy_(dec.value)
        return Sent(dec.value if out is None else out, dec.failures, msg.bits)


# ---------------------------------------------------------------------------------------------- helpers
def _check_vec(v, n: int | None, field: str, any_float: bool = False, device: torch.device | None = None) -> None:
    """ValueError naming ``field`` unless ``v`` is a 1-D float32 (``any_float``: floating) tensor of length ``n``
    (on ``device`` when given)."""
    if not (isinstance(v, torch.Tensor) and v.dim() == 1 and (n is None or v.numel() == n)
            and (v.is_floating_point() if any_float else v.dtype == torch.float32)):
        got = f"{v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        need = f"1-D {'float' if any_float else 'float32'} tensor" + (f" of length {n}" if n is not None else "")
        raise ValueError(f"{field}: expected a {need}, got a {got}")
    if device is not None and v.device != device:
        raise ValueError(f"{field}: expected a tensor on {device} (the message's device), got one on {v.device}")


def _check_out(out: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """``out`` (a float32 vector of length ``n`` on ``device``) or a fresh one."""
    if out is None:
        return torch.empty(n, dtype=torch.float32, device=device)
    _check_vec(out, n, "out", device=device)
    return out


def _need_generator(generator: torch.Generator | None, name: str, device: torch.device | None = None
                    ) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator: {name} encoding is random and needs a per-message torch.Generator, "
                         f"got {generator!r}")
    if device is not None and torch.device(generator.device).type != device.type:
        raise ValueError(f"generator: {name} draws on the vector's device {device}, got a generator on "
                         f"{generator.device}")
    return generator


def _chunks(n: int, device: torch.device, size: int = _CHUNK) -> Iterator[tuple[int, int]]:
    """``(start, end)`` work chunks: cache-sized on CPU (eager ops stream each chunk through cache),
    the whole vector elsewhere (an accelerator wants few, large kernels; no host round-trip per chunk)."""
    step = size if device.type == "cpu" else max(n, 1)
    return ((a, min(a + step, n)) for a in range(0, n, step))


class Workspace:
    """Work buffers reused across calls (a fresh 2-26 MB tensor per call costs page faults).

    ``get(name, n, dtype, device)`` returns the first ``n`` elements of a persistent buffer. A buffer is
    only valid until the next ``get`` of the same name; the simulator is single-threaded. Not pickled.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        #: (message, derived tensors): what a quantizer derived from the last message it decoded, for that
        #: message's other receivers; holds the message itself, so ``is`` identifies it
        self.memo: tuple | None = None

    def get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def __getstate__(self) -> dict:
        return {"_bufs": {}, "memo": None}
