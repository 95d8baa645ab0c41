"""Limits that keep a command from hanging or exhausting the machine (issue 11, item 4).

* :func:`read_bytes_bounded` — reads a file, gunzipping ``.gz``, and refuses more than a limit of bytes,
  stopping the decompression there: a gzip bomb is refused before it fills the memory.  LEAF files are held
  to :data:`MAX_JSON_BYTES` (1 GiB; ``$QAFL_MAX_JSON_BYTES``).
* :func:`check_memory` — refuses a run whose models cannot fit the machine's memory (or
  ``$QAFL_MEMORY_LIMIT_GB``) before anything is allocated, with the estimate in the message.

The interval bounds (at most :data:`qafl_core.config.MAX_INTERVALS` evaluations or checkpoints) and the
64-bit bound on integer keys are part of the config's own validation.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from qafl_core import environment

if TYPE_CHECKING:
    from qafl_core.config import RunConfig

#: Largest LEAF file (after decompression) read, in bytes: 1 GiB, or ``$QAFL_MAX_JSON_BYTES``.  LEAF's own
#: files are far smaller (a FEMNIST ``all_data_<i>.json`` of 100 writers is about 200 MB); a larger one,
#: e.g. a gzip bomb, is refused before it fills the memory.
MAX_JSON_BYTES = 2 ** 30


def max_json_bytes() -> int:
    env = environment.get("QAFL_MAX_JSON_BYTES")
    if not env:
        return MAX_JSON_BYTES
    try:
        return int(env)
    except ValueError:
        raise ValueError(f"QAFL_MAX_JSON_BYTES: expected a number of bytes, got {env!r}") from None


def read_bytes_bounded(path: str | os.PathLike, limit: int | None = None,
                       hint: str = "a LEAF file is far smaller; set QAFL_MAX_JSON_BYTES to raise the limit") -> bytes:
    """The bytes of ``path`` (gunzipped when its name ends in ``.gz``), refusing more than ``limit`` bytes.

    Decompression stops as soon as the limit is passed, so a gzip bomb never fills the memory.

    Raises:
        ValueError: larger than the limit (the message names the file and the limit), or a corrupt gzip.
    """
    p = Path(path)
    limit = max_json_bytes() if limit is None else int(limit)
    opener = gzip.open if p.name.endswith(".gz") else open
    try:
        with opener(p, "rb") as fh:
            data = fh.read(limit + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"{p}: cannot read (corrupt or truncated gzip?): {exc}") from None
    if len(data) > limit:
        raise ValueError(f"{p}: more than {limit:,} bytes{' after decompression' if opener is gzip.open else ''}; "
                         f"refused ({hint})")
    return data


def memory_limit() -> int:
    """Bytes a run may use: ``$QAFL_MEMORY_LIMIT_GB`` if set, else the machine's (or its cgroup's) memory."""
    env = environment.get("QAFL_MEMORY_LIMIT_GB")
    if env:
        try:
            return int(float(env) * 1e9)
        except ValueError:
            raise ValueError(f"QAFL_MEMORY_LIMIT_GB: expected a number of gigabytes, got {env!r}") from None
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:  # a container's cgroup v2 limit, when it is lower than the machine's memory
        text = open("/sys/fs/cgroup/memory.max").read().strip()
        if text.isdigit():
            total = min(total, int(text))
    except OSError:
        pass
    return total


def memory_estimate(cfg: "RunConfig", num_clients: int, dim: int) -> tuple[int, str]:
    """Bytes a run of ``num_clients`` clients on a ``dim``-coordinate model allocates for its models, and how.

    Counts float32 vectors: the clients' models that QuAFL and FedBuff keep (and FedAvg when its quantizer
    decodes against the client's vector), QuAFL's decoding bases with ``client_decode_key=base``, the
    server, the round's work rows and one message's encode/decode buffers (16 bytes per coordinate); for
    the quadratic problem also its n centres (12 bytes per coordinate while they are built).  The data set
    itself is not counted (it is already loaded when this is checked).
    """
    n, d, s = int(num_clients), int(dim), int(cfg.clients_per_round)
    keeps_clients = cfg.algorithm in ("quafl", "fedbuff") or cfg.quantizer in ("lattice", "dithered_lattice")
    copies = (1 if keeps_clients else 0) + (1 if cfg.algorithm == "quafl" and cfg.client_decode_key == "base" else 0)
    vectors = copies * n + s + 4
    total = 4 * d * vectors + 16 * d
    how = f"{vectors:,} float32 vectors of {d:,} coordinates"
    if cfg.dataset == "quadratic":
        total += 12 * n * d
        how += f" + {n:,} quadratic centres"
    return total, how


def check_memory(cfg: "RunConfig", num_clients: int, dim: int) -> None:
    """ValueError, before anything is allocated, when :func:`memory_estimate` exceeds :func:`memory_limit`."""
    need, how = memory_estimate(cfg, num_clients, dim)
    have = memory_limit()
    if need > have:
        raise ValueError(f"num_clients, model size: this run needs about {need / 1e9:,.3g} GB ({how}; n = "
                         f"{num_clients:,}, d = {dim:,}) but {have / 1e9:,.3g} GB are available "
                         f"(QAFL_MEMORY_LIMIT_GB to change the limit); lower num_clients or the model size")
