"""Files a run writes and reads back: atomic writes, verified entries, plain-data checkpoints, locks.

* **Atomic writes.**  Every file (results, completion records, checkpoints, ``config.json``, manifests,
  caches) is written to a temporary file in its own directory, flushed to disk (``fsync``), renamed over the
  target (``os.replace``) and the directory entry is flushed too: a reader sees the old file or the new one,
  never a part of one, even after a crash or a full disk.
* **Verified entries.**  A run directory (``qafl run --out OUT`` or a run-cache entry) counts as finished
  only with its completion record ``done.json``, written last: run identity, status, row count, columns and
  the sha256 of ``results.csv``.  :func:`read_entry` checks all of them on every read; a truncated, partial,
  interrupted or swapped entry is reported (:class:`EntryProblem`), never served.  Files stay readable:
  CSV and JSON.
* **No code from data files.**  Checkpoints and caches hold only tensors and plain containers
  (:func:`check_plain`) and are loaded with ``torch.load(weights_only=True)`` (:func:`load_tensors`): a
  file that would import anything on loading is refused in one line and nothing in it runs.
* **Locks.**  :class:`DirLock` is an exclusive ``flock`` on ``DIR/.qafl.lock``, which holds the holder's pid
  and host so that a refusal can name it; the kernel drops the lock when its process dies.

The module is longer than most (~300 lines) on purpose: every file the suite writes or reads back goes
through these few functions, so the guarantees above are kept in one place.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import re
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

RESULTS, RECORD, LOCK = "results.csv", "done.json", ".qafl.lock"
RECORD_VERSION = 1
#: statuses of a completion record; only these two mean "finished"
FINISHED = ("ok", "diverged")
_UMASK = os.umask(0)
os.umask(_UMASK)


class EntryProblem(Exception):
    """Why a run directory cannot be served (one line)."""


class Locked(ValueError):
    """A directory is in use by another process (the message names the directory and the holder)."""


def notice(message: str) -> None:
    """One line on stderr, prefixed like the CLI's messages."""
    print(f"qafl: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- atomic writes
def fsync_dir(directory: str | os.PathLike) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_beside(path: Path):
    """A temporary path next to ``path``; renamed over it (and the directory flushed) if the block succeeds,
    deleted if it raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide a shared cache from its other users
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module docstring)."""
    with _temp_beside(Path(path)) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, obj: Any, **dumps: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2, **dumps) + "\n").encode())


def atomic_save_tensors(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of plain data (checked first, :func:`check_plain`) to ``path``, atomically."""
    import torch

    check_plain(obj)
    with _temp_beside(Path(path)) as tmp:
        torch.save(obj, tmp)


def check_plain(obj: Any, where: str = "state") -> None:
    """Raise TypeError unless ``obj`` is tensors, dict/list/tuple, str, int, float, bool and None only.

    These are what ``torch.load(weights_only=True)`` reads back without running code."""
    import torch

    if obj is None or type(obj) in (str, bool, int, float, torch.Tensor):
        return
    if type(obj) in (list, tuple):
        for k, v in enumerate(obj):
            check_plain(v, f"{where}[{k}]")
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if not (k is None or type(k) in (str, int, float, bool)):
                raise TypeError(f"{where}: key {k!r} ({type(k).__name__}) is not plain data")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__name__} is not plain data "
                    f"(checkpoints hold tensors, dict/list/tuple, str, int, float, bool, None)")


def load_tensors(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming ``path``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: ``refused`` for a file that would import code or objects on loading (nothing runs),
            ``corrupt`` for anything else that is not a readable file of tensors and plain containers.
    """
    import torch

    try:
        with warnings.catch_warnings():  # torch warns on foreign pickle protocols, over several lines
            warnings.simplefilter("ignore")
            # mmap: the loaded tensors are private copy-on-write mappings of the file, so resuming a paper-scale
            # checkpoint (300 CNN clients: ~8 GB) does not hold a second in-memory copy while the state is restored
            return torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure to read plain data is reported, never retried unsafely
        msg = str(exc)
        glob = re.search(r"GLOBAL (\S+)|[Uu]nsupported global:? (?:GLOBAL )?(\S+)", msg)
        if glob:
            name = (glob.group(1) or glob.group(2)).rstrip(".,")
            raise ValueError(f"{path}: refused: loading this {what} would import {name} (only tensors and plain "
                             f"containers are accepted, nothing in the file was run); delete it") from None
        first = next((ln.strip() for ln in msg.splitlines() if ln.strip() and "WeightsUnpickler" not in ln
                      and not ln.startswith("Weights only load failed")), type(exc).__name__)
        raise ValueError(f"{path}: corrupt {what} ({type(exc).__name__}: {first[:160]}); delete it to start "
                         f"over") from None


#: the only globals a numpy-array pickle (e.g. CIFAR-10's python batches) may import: array and scalar
#: reconstruction, dtypes, and the bytes codec of protocol-2 pickles
_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to import {module}.{name} (only numpy arrays and plain containers "
                                     f"are accepted; nothing in the file was run)")


def load_array_pickle(fh, encoding: str = "bytes") -> Any:
    """``pickle.load`` for third-party data files that are pickles of numpy arrays and plain containers
    (CIFAR-10): any other import is refused (``pickle.UnpicklingError``) before anything runs."""
    return _ArrayUnpickler(fh, encoding=encoding).load()


# ---------------------------------------------------------------------- locks
class DirLock:
    """Exclusive lock of a directory (``flock`` on ``DIR/.qafl.lock``); a context manager once acquired."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        self._fd: int | None = None

    def holder(self) -> str:
        """``pid N on HOST`` of the process that last took the lock (``pid unknown`` when not recorded)."""
        try:
            pid, host = (self.path.read_text().split() + ["?", "?"])[:2]
        except OSError:
            return "pid unknown"
        return f"pid {pid} on {host}" if pid.isdigit() else "pid unknown"

    def acquire(self, wait: float | None = 0.0, on_wait: Callable[[str], None] | None = None) -> "DirLock":
        """Take the lock; ``wait`` = 0 refuses at once, None waits as long as it takes, else up to ``wait`` s.

        Raises:
            Locked: another process holds it (and ``wait`` ran out).
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if wait is not None and time.monotonic() - start >= wait:
                os.close(fd)
                raise Locked(f"{self.directory}: in use by another qafl process ({self.holder()})"
                             + (f" for more than {wait:g} s" if wait else "")
                             + "; wait for it to finish or use another directory")
            if not told and on_wait is not None:
                on_wait(self.holder())
                told = True
            time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "DirLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------- entries
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_entry(directory: str | os.PathLike, df, record: dict[str, Any]) -> dict[str, Any]:
    """Write ``results.csv`` and then, last, its completion record ``done.json``; returns the record.

    ``record`` holds the identity fields and ``status``; rows, columns, sha256 and created are added here."""
    d = Path(directory)
    data = df.to_csv(index=False).encode()
    atomic_write(d / RESULTS, data)
    full = {"version": RECORD_VERSION, **record, "rows": int(len(df)), "columns": [str(c) for c in df.columns],
            "sha256": hashlib.sha256(data).hexdigest(), "created": now()}
    atomic_write_json(d / RECORD, full)
    return full


def unfinish(directory: str | os.PathLike) -> None:
    """Remove the completion record: the directory's results are about to be replaced."""
    path = Path(directory) / RECORD
    if path.exists():
        path.unlink()
        fsync_dir(path.parent)


#: the text columns of a results table; read as text, so that a config hash such as ``1234567890e12345`` (a number to
#: a CSV reader's eye: 1.2e12354, i.e. inf) or ``0123456789012345`` (leading zero dropped) keeps its 16 characters
RESULT_TEXT_COLUMNS = ("algorithm", "dataset", "model", "quantizer", "split", "metric", "config_hash")


def read_results_csv(source: bytes | str | os.PathLike):
    """A results table (``results.csv``) from its bytes or its path, with :data:`RESULT_TEXT_COLUMNS` as text.

    Only an empty field is missing (what ``DataFrame.to_csv`` writes for NaN and None): the words pandas would
    otherwise read as missing (``nan``, ``None``, ``NA``, ...) stay text."""
    import pandas as pd

    data = io.BytesIO(source) if isinstance(source, bytes) else source
    return pd.read_csv(data, dtype={c: str for c in RESULT_TEXT_COLUMNS}, keep_default_na=False, na_values=[""])


def read_entry(directory: str | os.PathLike, identity: str, finished_only: bool = True):
    """``(results table, completion record)`` of a verified run directory; None when it holds no run.

    Raises:
        EntryProblem: the entry exists but cannot be served: no or unreadable completion record, another
            run's identity, not finished (``interrupted``), results missing or not matching the record.
    """
    import pandas as pd

    d = Path(directory)
    rec_path, res_path = d / RECORD, d / RESULTS
    if not rec_path.exists():
        if res_path.exists():
            raise EntryProblem(f"{res_path} has no completion record (partial or interrupted write)")
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError) as exc:
        raise EntryProblem(f"{rec_path}: unreadable completion record ({type(exc).__name__})") from None
    if not isinstance(rec, dict) or rec.get("version") != RECORD_VERSION:
        raise EntryProblem(f"{rec_path}: not a completion record of this version")
    if rec.get("identity") != identity:
        raise EntryProblem(f"{d} holds another run's results (identity {str(rec.get('identity'))[:16]}, "
                           f"expected {identity[:16]})")
    if finished_only and rec.get("status") not in FINISHED:
        raise EntryProblem(f"{d}: the run was {rec.get('status')} at t={rec.get('time', '?')}, not finished")
    try:
        data = res_path.read_bytes()
    except OSError:
        raise EntryProblem(f"{res_path} is missing") from None
    if hashlib.sha256(data).hexdigest() != rec.get("sha256"):
        raise EntryProblem(f"{res_path} does not match its completion record (truncated or changed)")
    df = read_results_csv(data)
    if len(df) != rec.get("rows") or [str(c) for c in df.columns] != rec.get("columns"):
        raise EntryProblem(f"{res_path}: rows or columns differ from its completion record")
    return df, rec


__all__ = ["DirLock", "EntryProblem", "FINISHED", "Locked", "RESULT_TEXT_COLUMNS", "atomic_save_tensors", "atomic_write",
           "atomic_write_json", "check_plain", "fsync_dir", "load_array_pickle", "load_tensors", "notice", "read_entry",
           "read_results_csv", "unfinish", "write_entry"]
