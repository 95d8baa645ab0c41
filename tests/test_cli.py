"""Faults of the machine through the ``qafl`` command line (issue 11, item 4): one line, exit 2, nothing half-written.

Read-only and full disks are real where the tests may mount a small ``tmpfs`` (root on Linux: a read-only
one, and one of 64 kB that fills up); elsewhere those tests skip, and the same errors are raised by a
stand-in so the message and the exit status are still checked everywhere.  Memory exhaustion is simulated
(``MemoryError`` and torch's allocator error); sizes that cannot fit are refused before anything is
allocated (see ``tests/test_bad_input.py``).
"""
from __future__ import annotations

import errno
import subprocess
import uuid
from pathlib import Path

import pytest

from qafl_core.cli import describe_os_error, main
from test_bad_input import QUAD, _check
from test_prepare import make_sd19


def _run_argv(out: Path, *sets: str) -> list[str]:
    argv = ["run", "--quiet", "--out", str(out)]
    for s in (*QUAD, *sets):
        argv += ["--set", s]
    return argv


@pytest.fixture
def mount(tmp_path):
    """``mount(options)`` -> a fresh tmpfs mounted with ``options`` (unmounted afterwards); skips where not allowed."""
    mounted = []

    def make(options: str) -> Path:
        where = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        where.mkdir()
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                                  text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot mount a tmpfs here ({exc})")
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield make
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30)


def test_read_only_disk(mount, tmp_path, capsys):
    ro = mount("ro,size=64k")
    rc = main(_run_argv(ro / "out"))
    _check(rc, capsys.readouterr().err, (f"{ro}/out: Read-only file system (choose a writable folder)",), tmp_path)
    raw = tmp_path / "raw"
    make_sd19(raw)
    rc = main(["data", "prepare", "femnist", "--raw", str(raw), "--out", str(ro / "prepared")])
    _check(rc, capsys.readouterr().err, (f"{ro}/prepared: Read-only file system",), tmp_path)
    sw = tmp_path / "sweep.yaml"
    sw.write_text("dataset: quadratic\nnum_clients: 6\nclients_per_round: 2\nsit: 1\ntime_limit: 20\n")
    rc = main(["sweep", "--config", str(sw), "--seeds", "1", "--out", str(ro / "sweep")])
    _check(rc, capsys.readouterr().err, (f"{ro}/sweep: Read-only file system",), tmp_path)
    rc = main(["reproduce", "--only", "theory_quadratic", "--output-dir", str(ro / "figures")])
    _check(rc, capsys.readouterr().err, (f"{ro}/figures: Read-only file system",), tmp_path)
    assert list(ro.iterdir()) == []


def test_full_disk(mount, tmp_path, capsys):
    full = mount("size=64k")
    # a run whose results.csv (about 250 kB) does not fit
    rc = main(_run_argv(full / "out", "time_limit=300", "eval_every=0.5"))
    _check(rc, capsys.readouterr().err, ("No space left on device (disk full)", f"{full}/out"), tmp_path)
    # a prepare that does not fit leaves nothing behind: no output folder, no staging folder
    raw = tmp_path / "raw"
    make_sd19(raw)
    rc = main(["data", "prepare", "femnist", "--raw", str(raw), "--out", str(full / "prepared")])
    _check(rc, capsys.readouterr().err, ("No space left on device (disk full)",), tmp_path)
    assert not (full / "prepared").exists() and not [p for p in full.iterdir() if p.name.endswith(".staging")]


@pytest.mark.parametrize("exc,needles", [
    (OSError(errno.ENOSPC, "No space left on device"), ("{out}: No space left on device (disk full)",)),
    (PermissionError(errno.EACCES, "Permission denied", "/x/results.csv"),
     ("/x/results.csv: Permission denied (choose a writable folder)",)),
    (OSError(errno.EROFS, "Read-only file system", "/ro/a", None, "/ro/b"), ("/ro/a -> /ro/b: Read-only file system",)),
    (MemoryError(), ("out of memory (MemoryError)",)),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 800000000000 bytes. Error code 12 (Cannot allocate memory)"),
     ("out of memory: can't allocate memory: you tried to allocate 800000000000 bytes",)),
    (OverflowError("Python int too large to convert to C long"), ("Python int too large",)),
])
def test_machine_faults_are_one_line(exc, needles, monkeypatch, tmp_path, capsys):
    import qafl_core.runner as runner

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(runner, "run", fail)
    out = tmp_path / "out"
    rc = main(_run_argv(out))
    _check(rc, capsys.readouterr().err, tuple(n.replace("{out}", str(out)) for n in needles), tmp_path)


def test_other_runtime_errors_are_not_hidden(monkeypatch, tmp_path):
    """A bug is not a user error: it keeps its traceback."""
    import qafl_core.runner as runner

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch in the engine")

    monkeypatch.setattr(runner, "run", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(_run_argv(tmp_path / "out"))


def test_describe_os_error_names_the_file_or_the_output():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device"), None) == \
        "No space left on device (disk full)"
    assert describe_os_error(OSError(errno.EIO, "Input/output error", "/d/f")) == "/d/f: Input/output error"
    assert describe_os_error(OSError(errno.EIO, "Input/output error"), "runs/x") == "runs/x: Input/output error"


# ---------------------------------------------------------------------- the command package
def _subcommands(parser) -> dict:
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "sweep", "data", "reproduce", "bench"):
        assert f"\n    {command} " in out or f"\n    {command}\n" in out, command


def test_one_option_convention():
    """--config FILE, --set KEY=VALUE and --out DIR wherever a command takes a config, overrides or an output."""
    from qafl_core.cli import build_parser

    commands = _subcommands(build_parser())
    for name, wanted in (("run", {"--config", "--set", "--out"}), ("sweep", {"--config", "--set", "--out"})):
        assert wanted <= set(commands[name]._option_string_actions), name
    campaign = _subcommands(commands["campaign"])
    for name in ("run", "status"):
        assert {"--config", "--set", "--out"} <= set(campaign[name]._option_string_actions), name
    describe = _subcommands(commands["data"])["describe"]
    assert "--set" in describe._option_string_actions  # loader options (--option is kept as its old spelling)


def test_bench_outside_a_checkout_is_one_line(monkeypatch, tmp_path, capsys):
    from qafl_core.cli import bench

    monkeypatch.setattr(bench, "BENCH_DIR", tmp_path / "bench")
    assert main(["bench", "--only", "quantizer_gbps"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"qafl: error: {tmp_path / 'bench'}: no benchmarks here; qafl bench needs a source checkout "
        f"(git clone, then pip install -e .)"]


@pytest.mark.parametrize("argv", [["data", "prepare", "femnist", "-tf", "0.8"], ["run", "--set", "lr=0.1"], ["nosuch"]])
def test_usage_errors_are_one_line(argv, capsys):
    """argparse's usage errors follow the suite's policy: one line naming the command, exit status 2."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qafl: error: qafl") and "--help" in err[0], err
