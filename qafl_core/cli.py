"""The ``qafl`` command line.

Sub-commands live next to the code they drive; each module exposes ``register(subparsers)``:

* ``qafl data describe|prepare``  -> :mod:`qafl_core.data.cli`
* ``qafl run``                    -> :mod:`qafl_core.runner_cli`
* ``qafl reproduce``              -> :mod:`qafl_core.reproduce`
* ``qafl sweep``                  -> :mod:`qafl_core.sweep`
* ``qafl bench``                  -> :mod:`qafl_core.bench`

Every user error (bad file, unknown name, impossible value) is printed as one line
``qafl: error: ...`` without a traceback and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

_COMMAND_MODULES = [
    "qafl_core.data.cli",
    "qafl_core.runner_cli",
    "qafl_core.reproduce",
    "qafl_core.sweep",
    "qafl_core.bench",
]


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qafl", description="QuAFL reproduction suite (asynchronous, quantized FL on LEAF).")
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
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, KeyError, json.JSONDecodeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"qafl: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qafl: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
