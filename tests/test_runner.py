"""Kill-and-resume: ``qafl run --checkpoint-every T`` killed with SIGKILL mid-way and continued with
``--resume`` must give a ``results.csv`` byte-identical to an uninterrupted run's (issue 6, item 2).

The interrupted run is a real ``python -m qafl_core.cli run`` process; it is killed after it has
replaced its checkpoint at least twice (so it is well into the run, between two checkpoints) and
before it has written ``results.csv``.  Corrupt, truncated, foreign and mismatched checkpoints are
clear errors (exit status 2, the message names the file, no traceback); the checkpoint write is atomic.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from qafl_core.cache import cache_entry
from qafl_core.cli import main
from qafl_core.fingerprint import run_identity
from qafl_core.cache import load_or_run
from qafl_core.runner import run
from qafl_core.config import config_from_args

REPO = Path(__file__).resolve().parents[1]

# Each case takes ~1-2 s uninterrupted here: large enough vectors that a step is not instantaneous,
# small enough (< 200k coordinates) that the run stays on one intra-op thread.
KILL_CASES = {
    "quafl-qsgd": ["algorithm=quafl", "dataset=quadratic", "num_clients=10", "clients_per_round=3",
                   "quantizer=qsgd", "bits=8", "sit=1", "time_limit=100", "eval_every=10",
                   "dataset_options={dim: 100000}"],
    "fedavg-lattice": ["algorithm=fedavg", "dataset=quadratic", "num_clients=10", "clients_per_round=4",
                       "quantizer=lattice", "bits=10", "lattice_eps=0.001", "local_steps=2", "fast_mean=0.5",
                       "slow_mean=1", "sit=1", "time_limit=250", "eval_every=20", "dataset_options={dim: 100000}"],
    "fedbuff": ["algorithm=fedbuff", "dataset=quadratic", "num_clients=10", "clients_per_round=3",
                "sit=1", "time_limit=300", "eval_every=25", "staleness=sqrt", "dataset_options={dim: 100000}"],
}
# Small in-process cases, resumed from *every* checkpoint they wrote (no timing involved).
EVERY_CASES = {
    "quafl-qsgd-quadratic": KILL_CASES["quafl-qsgd"][:-1] + ["dataset_options={dim: 500}"],
    "quafl-lattice-base-key": KILL_CASES["quafl-qsgd"][:4] + [
        "quantizer=lattice", "bits=12", "lattice_eps=0.001", "client_decode_key=base", "sit=1", "time_limit=60",
        "eval_every=7", "dataset_options={dim: 500}"],
    "fedavg-lattice-quadratic": KILL_CASES["fedavg-lattice"][:-1] + ["dataset_options={dim: 500}"],
    "fedbuff-qsgd-quadratic": KILL_CASES["fedbuff"][:-1] + ["quantizer=qsgd", "bits=4", "dataset_options={dim: 500}"],
    # neural tasks: per-client batch permutations and the dropout stream are checkpointed too
    "quafl-synthetic": ["algorithm=quafl", "dataset=synthetic", "clients_per_round=4", "quantizer=qsgd", "bits=6",
                        "sit=1", "time_limit=150", "eval_every=20", "batch_size=4", "dataset_options={num_tasks: 30}"],
    "fedbuff-synthetic": ["algorithm=fedbuff", "dataset=synthetic", "clients_per_round=4", "sit=1",
                          "time_limit=150", "eval_every=20", "batch_size=4", "dataset_options={num_tasks: 30}"],
    # per-client optimizer state (Adam moments and step counts, SGD momentum buffers) is checkpointed too
    "quafl-synthetic-adam": ["algorithm=quafl", "dataset=synthetic", "clients_per_round=4", "optimizer=adam",
                             "weight_decay=0.01", "lr=0.001", "sit=1", "time_limit=150", "eval_every=20",
                             "batch_size=4", "dataset_options={num_tasks: 30}"],
    "fedavg-synthetic-momentum": ["algorithm=fedavg", "dataset=synthetic", "clients_per_round=4", "optimizer=sgd",
                                  "momentum=0.9", "fast_mean=0.5", "slow_mean=1", "sit=1", "time_limit=150",
                                  "eval_every=20", "batch_size=4",
                                  "dataset_options={num_tasks: 30}"],
}


def _cmd(sets: list[str], out: Path, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "qafl_core.cli", "run", "--quiet", "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _kill_mid_way(sets: list[str], out: Path, every: float) -> int:
    """Start the CLI run; once checkpoint.pt has been replaced twice, freeze it (SIGSTOP, so that nothing
    moves while we look) and SIGKILL it.  Returns how many checkpoint versions were seen."""
    proc = subprocess.Popen(_cmd(sets, out, "--checkpoint-every", str(every)), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt, seen, deadline = out / "checkpoint.pt", set(), time.monotonic() + 120
    try:
        while proc.poll() is None and len(seen) < 2 and time.monotonic() < deadline:
            try:
                st = ckpt.stat()
                seen.add((st.st_ino, st.st_mtime_ns))  # every os.replace installs a newly written file
            except FileNotFoundError:
                pass
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
        alive = proc.poll() is None
        finished = (out / "results.csv").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert alive and not finished, (f"the run ended before it could be killed (rc={proc.returncode}, "
                                    f"{len(seen)} checkpoint versions seen); make it longer.\n{err}")
    assert proc.returncode == -signal.SIGKILL, err
    return len(seen)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(KILL_CASES))
def test_sigkill_then_resume_is_bit_identical(case, tmp_path):
    sets = KILL_CASES[case]
    cfg = config_from_args(None, sets).replace(progress=False)
    time_limit = cfg.time_limit
    ref = run(cfg, out_dir=tmp_path / "ref")                       # uninterrupted, no checkpoints at all

    out = tmp_path / "killed"
    every = time_limit / 12
    assert _kill_mid_way(sets, out, every) >= 2
    assert not (out / "results.csv").exists(), "killed before the end: no results yet"
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # never a partial file (atomic rename)
    t_ckpt = state["sim"]["time"]
    assert 0 < t_ckpt < time_limit

    done = subprocess.run(_cmd(sets, out, "--checkpoint-every", str(every), "--resume"), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = (out / "results.csv").read_bytes()
    want = (tmp_path / "ref" / "results.csv").read_bytes()
    assert got == want, f"{case}: resumed results differ from the uninterrupted run (checkpoint at t={t_ckpt:.1f})"
    assert len(ref) > 10 and ref.time.max() >= time_limit * 0.9
    assert not (ref.split == "status").any()


@pytest.mark.slow
@pytest.mark.parametrize("case", list(EVERY_CASES))
def test_resume_from_every_checkpoint_is_bit_identical(case, tmp_path, monkeypatch):
    """Resume from each checkpoint a run wrote (a copy is taken at every save) and compare the final
    tables byte for byte with an uninterrupted run, and with the checkpointing run itself."""
    cfg = config_from_args(None, EVERY_CASES[case]).replace(progress=False)
    run(cfg, out_dir=tmp_path / "ref")
    want = (tmp_path / "ref" / "results.csv").read_bytes()
    real_save, copies = torch.save, []

    def copying_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        copies.append(tmp_path / f"ck{len(copies)}.pt")
        shutil.copyfile(f, copies[-1])

    monkeypatch.setattr(torch, "save", copying_save)
    every = cfg.time_limit / 9
    run(cfg, out_dir=tmp_path / "full", checkpoint_every=every)
    monkeypatch.setattr(torch, "save", real_save)
    assert (tmp_path / "full" / "results.csv").read_bytes() == want, "checkpointing changed the results"
    assert len(copies) >= 6
    differ = []
    for k, ck in enumerate(copies):
        d = tmp_path / f"resume{k}"
        d.mkdir()
        shutil.copyfile(ck, d / "checkpoint.pt")
        run(cfg, out_dir=d, resume=True, checkpoint_every=every)
        if (d / "results.csv").read_bytes() != want:
            differ.append(k)
    assert not differ, f"{case}: resuming from checkpoint(s) {differ} of {len(copies)} changed the results"


# ---------------------------------------------------------------------- in-process: atomicity and errors
SMALL = ["algorithm=quafl", "dataset=quadratic", "num_clients=6", "clients_per_round=2", "quantizer=lattice",
         "bits=12", "lattice_eps=0.001", "sit=1", "time_limit=60", "eval_every=5"]


def _cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    return rc, capsys.readouterr().err


def _small_run(tmp_path: Path, capsys, *extra: str, sets=SMALL) -> tuple[int, str]:
    argv = ["run", "--quiet", "--out", str(tmp_path / "run")]
    for s in sets:
        argv += ["--set", s]
    return _cli(capsys, *argv, *extra)


def test_crash_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    """An interruption inside torch.save leaves checkpoint.pt as it was (the partial temporary file is
    removed); it stays loadable and resumes."""
    cfg = config_from_args(None, SMALL).replace(progress=False)
    run(cfg, out_dir=tmp_path / "ref")
    real_save, calls = torch.save, []

    def dying_save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 3:                      # third checkpoint: write half of it, then "die"
            real_save(obj, f, *a, **kw)
            data = Path(f).read_bytes()
            Path(f).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt("simulated kill during the checkpoint write")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    rc, _ = _small_run(tmp_path, capsys, "--checkpoint-every", "5")
    assert rc == 130
    monkeypatch.setattr(torch, "save", real_save)
    out = tmp_path / "run"
    tmp = Path(calls[-1])
    assert tmp.parent == out and tmp.name.startswith(".checkpoint.pt.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and not (out / "results.csv").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["sim"]["time"] == pytest.approx(10.0, abs=1.0)  # the second checkpoint, intact
    rc, err = _small_run(tmp_path, capsys, "--checkpoint-every", "5", "--resume")
    assert rc == 0, err
    assert (out / "results.csv").read_bytes() == (tmp_path / "ref" / "results.csv").read_bytes()


@pytest.fixture()
def checkpointed(tmp_path, capsys):
    rc, err = _small_run(tmp_path, capsys, "--checkpoint-every", "10")
    assert rc == 0, err
    return tmp_path / "run" / "checkpoint.pt"


def _assert_clean_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qafl: error: "), err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def test_truncated_checkpoint_is_a_clear_error(tmp_path, capsys, checkpointed):
    data = checkpointed.read_bytes()
    checkpointed.write_bytes(data[: len(data) // 3])
    rc, err = _small_run(tmp_path, capsys, "--resume")
    _assert_clean_error(rc, err, str(checkpointed), "corrupt checkpoint")


def test_garbage_checkpoint_is_a_clear_error(tmp_path, capsys, checkpointed):
    checkpointed.write_bytes(b"this is not a checkpoint\n")
    rc, err = _small_run(tmp_path, capsys, "--resume")
    _assert_clean_error(rc, err, str(checkpointed), "corrupt checkpoint")


def test_foreign_pickle_is_a_clear_error(tmp_path, capsys, checkpointed):
    torch.save({"something": "else"}, checkpointed)
    rc, err = _small_run(tmp_path, capsys, "--resume")
    _assert_clean_error(rc, err, str(checkpointed), "not a checkpoint")


def test_checkpoint_of_another_config_is_refused(tmp_path, capsys, checkpointed):
    before = checkpointed.read_bytes()
    rc, err = _small_run(tmp_path, capsys, "--resume", sets=SMALL + ["lr=0.02"])
    _assert_clean_error(rc, err, str(checkpointed), "written for config")
    assert checkpointed.read_bytes() == before  # never silently reused nor overwritten


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    rc, err = _small_run(tmp_path, capsys, "--resume")
    _assert_clean_error(rc, err, str(tmp_path / "run" / "checkpoint.pt"), "no checkpoint")


def test_cli_process_exit_status_and_no_traceback(tmp_path, capsys, checkpointed):
    """The real process (not just main()) exits 2 with one line on stderr."""
    checkpointed.write_bytes(checkpointed.read_bytes()[:100])
    done = subprocess.run(_cmd(SMALL, tmp_path / "run", "--resume"), cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    _assert_clean_error(done.returncode, done.stderr, str(checkpointed))


def test_load_or_run_continues_an_interrupted_cached_run(tmp_path, monkeypatch):
    """Batches (run_many, qafl sweep) go through load_or_run: with checkpoint_every set, a run interrupted
    in the cache continues from its checkpoint instead of starting over."""
    from qafl_core import checkpoint

    cfg = config_from_args(None, SMALL).replace(progress=False, checkpoint_every=5.0)
    ref = run(cfg.replace(checkpoint_every=None))
    real_save, calls = torch.save, []

    def dying_save(obj, f, *a, **kw):
        calls.append(f)
        if len(calls) == 4:
            raise KeyboardInterrupt("simulated kill")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        load_or_run(cfg, cache_dir=tmp_path)
    monkeypatch.setattr(torch, "save", real_save)
    loaded, real_load = [], checkpoint.load
    monkeypatch.setattr(checkpoint, "load", lambda path, *a: loaded.append(path) or real_load(path, *a))
    got = load_or_run(cfg, cache_dir=tmp_path)
    entry = cache_entry(run_identity(cfg), tmp_path)
    assert loaded == [entry / "checkpoint.pt"]
    pd.testing.assert_frame_equal(got, ref, check_exact=True)
    assert not (entry / "checkpoint.pt").exists()   # finished: the checkpoint is gone
    assert load_or_run(cfg, cache_dir=tmp_path).equals(got)  # finished: now served from results.csv


# ---------------------------------------------------------------------- resume only the same run (issue 11)
def _tiny_femnist_run(tmp_path: Path, capsys, root: Path, *extra: str) -> tuple[int, str]:
    sets = ["dataset=femnist", "model=logreg", "clients_per_round=2", "sit=1", "time_limit=30", "eval_every=5",
            "batch_size=4", f"data_root={root}"]
    return _small_run(tmp_path, capsys, *extra, sets=sets)


def test_resume_on_other_data_is_refused_and_changes_nothing(tmp_path, capsys, monkeypatch):
    from test_fingerprint import leaf_sample

    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "qcache"))
    a, b = leaf_sample(tmp_path / "a"), leaf_sample(tmp_path / "b", relabel=3)
    rc, err = _tiny_femnist_run(tmp_path, capsys, a, "--checkpoint-every", "10")
    assert rc == 0, err
    out = tmp_path / "run"
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    rc, err = _tiny_femnist_run(tmp_path, capsys, b, "--checkpoint-every", "10", "--resume")
    _assert_clean_error(rc, err, str(out / "checkpoint.pt"), "other data")
    assert "config" not in err.split("written for", 1)[1].split("other data")[0]   # the config is the same
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
    rc, err = _tiny_femnist_run(tmp_path, capsys, a, "--checkpoint-every", "10", "--resume")
    assert rc == 0, err                                                  # the same data resumes


def test_resume_with_another_config_or_code_changes_nothing(tmp_path, capsys, checkpointed, monkeypatch):
    from qafl_core import fingerprint

    out = checkpointed.parent
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    assert {"config.json", "results.csv", "done.json", "checkpoint.pt"} <= set(before)
    rc, err = _small_run(tmp_path, capsys, "--resume", sets=SMALL + ["lr=0.02"])
    _assert_clean_error(rc, err, str(checkpointed), "written for config")
    monkeypatch.setattr(fingerprint, "_CODE_FP", "f" * 64)
    rc, err = _small_run(tmp_path, capsys, "--resume")
    _assert_clean_error(rc, err, str(checkpointed), "other code", "ffffffffffffffff")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before
