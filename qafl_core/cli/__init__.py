"""The ``qafl`` command line: the parser, :func:`main` and the one error-to-exit-status policy.

Each sub-command is a module of this package exposing ``register(subparsers)``:

* ``qafl run``                    -> :mod:`qafl_core.cli.run`
* ``qafl sweep``                  -> :mod:`qafl_core.cli.sweep`
* ``qafl campaign run|status|table`` -> :mod:`qafl_core.cli.campaign` (the paper profile's campaign files)
* ``qafl data describe|prepare``  -> :mod:`qafl_core.cli.data`
* ``qafl bench``                  -> :mod:`qafl_core.cli.bench` (the benchmarks live in the checkout's ``bench/``)
* ``qafl reproduce``              -> :mod:`qafl_core.reproduce` (its arguments stay beside the notebook runner)

One convention for every sub-command: ``--config FILE`` (YAML of config keys), ``--set KEY=VALUE`` (repeatable
override) and ``--out DIR`` (where it writes), wherever the command has a config, overrides or an output.

Every user error (bad file, unknown name, impossible value) is printed as one line
``qafl: error: ...`` without a traceback and exits with status 2.  So are the faults of the machine a
command cannot fix by itself: a read-only or full disk, a missing permission (``OSError``, named by the
file when the system names it, else by the command's output folder) and running out of memory
(``MemoryError``, or torch's allocator refusing).  The README's "Fault and bad-input catalogue" lists
every case tried.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

_COMMAND_MODULES = [
    "qafl_core.cli.run",
    "qafl_core.cli.sweep",
    "qafl_core.cli.campaign",
    "qafl_core.cli.data",
    "qafl_core.reproduce",
    "qafl_core.cli.bench",
]


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


class _Parser(argparse.ArgumentParser):
    """argparse with the suite's error policy: a usage error is one line ``qafl: error: <command>: ...``, exit 2
    (argparse would print the whole usage first); ``--help`` still shows it.  Subcommand parsers inherit it."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        print(f"qafl: error: {self.prog}: {_first_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qafl", description="QuAFL reproduction suite (asynchronous, quantized FL on LEAF).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command whose module is not there yet stays out of --help
            if exc.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except OSError as exc:  # ours (FileNotFoundError("<file>: ...")) carry no errno; the system's do
        return _error(exc if exc.errno is None else describe_os_error(exc, _output_of(args)))
    except (UserError, ValueError, KeyError, OverflowError) as exc:  # json.JSONDecodeError is a ValueError
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        return _error(msg)
    except MemoryError:
        return _error("out of memory (MemoryError); lower num_clients, the model size or eval_batch_size")
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc):  # torch's allocator; any other RuntimeError is a bug: traceback
            raise
        return _error(f"out of memory: {_first_line(str(exc).split('DefaultCPUAllocator: ')[-1])}")
    except KeyboardInterrupt:
        print("qafl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


def _error(msg: object) -> int:
    print(f"qafl: error: {_first_line(str(msg))}", file=sys.stderr)
    return 2


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " ".join(lines) if len(lines) <= 3 else lines[0] + " ..."


def _output_of(args: argparse.Namespace) -> str | None:
    """The folder a command writes to (``--out`` / ``--output-dir``), to name it when the system does not."""
    for name in ("out", "output_dir"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


def describe_os_error(exc: OSError, output: str | None = None) -> str:
    """``<file>: <reason>`` for an OSError: the file the system names, else ``output``, else the error alone."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason += " (disk full)"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason += " (choose a writable folder)"
    where = exc.filename if exc.filename is not None else output
    if where is None:
        return reason
    where = os.fsdecode(where)
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {reason}"
