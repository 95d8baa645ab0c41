"""The run store (qafl_core.store, qafl_core.cache, the runner's output directory): results that cannot be
served wrong, files that cannot run code, directories that cannot be written by two processes at once.

Every test plants the fault a crash, a full disk, a careless copy or a hostile file would leave, and checks
that the suite recomputes, refuses or waits, in one line, instead of serving a wrong number.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import qafl_core.runner as runner
from qafl_core import checkpoint, fingerprint, store
from qafl_core.experiments import common as figures
from qafl_core.cache import cache_entry, load_or_run
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.fingerprint import run_identity
from qafl_core.runner import run

from test_fingerprint import leaf_sample

REPO = Path(__file__).resolve().parents[1]
QUAD = RunConfig(dataset="quadratic", num_clients=6, clients_per_round=2, quantizer="lattice", bits=12,
                 lattice_eps=1e-3, sit=1.0, time_limit=40.0, eval_every=5.0, progress=False)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "qcache"))
    monkeypatch.setattr(fingerprint, "_MEMO", {})


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _one_line_error(rc: int, err: str, *needles: str) -> str:
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qafl: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


def _snapshot(d: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


class Payload:
    """Pickles into a call of os.system: loading it with pickle enabled creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"version": checkpoint.VERSION, "payload": Payload(marker)}, path)


def test_the_planted_payload_is_live(tmp_path):
    """The payload the other tests plant really runs when unpickled (so their checks can fail)."""
    _plant(tmp_path / "p.pt", tmp_path / "live")
    torch.load(tmp_path / "p.pt", weights_only=False)
    assert (tmp_path / "live").exists()


# ---------------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "results.csv"
    store.atomic_write(target, b"old\n")
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~store._UMASK)  # not mkstemp's private 0600

    def full_disk(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.atomic_write(target, b"new, cut short")
    assert target.read_bytes() == b"old\n" and [p.name for p in tmp_path.iterdir()] == ["results.csv"]


# ---------------------------------------------------------------------- verified cache entries
def test_truncated_results_in_the_cache_are_recomputed_not_served(tmp_path, capsys):
    fresh = run(QUAD)
    first = load_or_run(QUAD, cache_dir=tmp_path / "c")
    entry = cache_entry(run_identity(QUAD), tmp_path / "c")
    data = (entry / "results.csv").read_bytes()
    (entry / "results.csv").write_bytes(data[: len(data) // 2])       # a full disk / SIGKILL mid-write
    capsys.readouterr()
    got = load_or_run(QUAD, cache_dir=tmp_path / "c")
    err = capsys.readouterr().err
    assert "does not match its completion record" in err and len(err.strip().splitlines()) == 1
    pd.testing.assert_frame_equal(got, fresh, check_exact=True)
    assert got.attrs["provenance"]["cached"] is False and first.attrs["provenance"]["cached"] is False
    assert (entry / "results.csv").read_bytes() == data
    assert load_or_run(QUAD, cache_dir=tmp_path / "c").attrs["provenance"]["cached"] is True
    # results without a completion record (killed between the two writes) are not served either
    (entry / "done.json").unlink()
    (entry / "results.csv").write_bytes(data[:200])
    pd.testing.assert_frame_equal(load_or_run(QUAD, cache_dir=tmp_path / "c"), fresh, check_exact=True)
    assert "no completion record" in capsys.readouterr().err


def test_a_swapped_entry_is_detected(tmp_path, capsys):
    other = QUAD.replace(lr=0.02)
    load_or_run(QUAD, cache_dir=tmp_path)
    load_or_run(other, cache_dir=tmp_path)
    mine, theirs = cache_entry(run_identity(QUAD), tmp_path), cache_entry(run_identity(other), tmp_path)
    for name in ("results.csv", "done.json"):                         # another run's files copied in
        shutil.copyfile(theirs / name, mine / name)
    capsys.readouterr()
    got = load_or_run(QUAD, cache_dir=tmp_path)
    assert "holds another run's results" in capsys.readouterr().err
    pd.testing.assert_frame_equal(got, run(QUAD), check_exact=True)
    shutil.copyfile(theirs / "results.csv", mine / "results.csv")     # only the table swapped
    pd.testing.assert_frame_equal(load_or_run(QUAD, cache_dir=tmp_path), run(QUAD), check_exact=True)
    assert "does not match its completion record" in capsys.readouterr().err


def test_relabelled_data_in_another_root_does_not_share_entries(tmp_path):
    a = leaf_sample(tmp_path / "a")
    same = tmp_path / "copy"
    shutil.copytree(a, same)
    relabelled = leaf_sample(tmp_path / "relabelled", relabel=7)
    cfg = RunConfig(dataset="femnist", model="logreg", clients_per_round=2, sit=1.0, time_limit=20.0,
                    eval_every=5.0, batch_size=4, progress=False, data_root=str(a))
    first = load_or_run(cfg, cache_dir=tmp_path / "c")
    copy = load_or_run(cfg.replace(data_root=str(same)), cache_dir=tmp_path / "c")
    other = load_or_run(cfg.replace(data_root=str(relabelled)), cache_dir=tmp_path / "c")
    assert copy.attrs["provenance"]["cached"] is True                # same bytes: one entry
    assert other.attrs["provenance"]["cached"] is False
    assert other.attrs["provenance"]["config_hash"] == first.attrs["provenance"]["config_hash"]
    assert other.attrs["provenance"]["data_fingerprint"] != first.attrs["provenance"]["data_fingerprint"]
    pd.testing.assert_frame_equal(other, run(cfg.replace(data_root=str(relabelled))), check_exact=True)
    assert not other.equals(first)
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_a_changed_code_fingerprint_misses_the_cache(tmp_path, monkeypatch):
    first = load_or_run(QUAD, cache_dir=tmp_path)
    assert load_or_run(QUAD, cache_dir=tmp_path).attrs["provenance"]["cached"] is True
    monkeypatch.setattr(fingerprint, "_CODE_FP", "0" * 64)
    again = load_or_run(QUAD, cache_dir=tmp_path)
    assert again.attrs["provenance"]["cached"] is False and again.attrs["provenance"]["code_fingerprint"] == "0" * 64
    assert again.attrs["provenance"]["identity"] != first.attrs["provenance"]["identity"]
    assert len(list(tmp_path.iterdir())) == 2


def test_old_config_hash_layout_is_not_found(tmp_path):
    """Entries of the config-hash-keyed layout (``<cache>/<config_hash>/results.csv``) are never served."""
    old = tmp_path / QUAD.config_hash()
    old.mkdir()
    pd.DataFrame({"x": [1]}).to_csv(old / "results.csv", index=False)
    assert load_or_run(QUAD, cache_dir=tmp_path).attrs["provenance"]["cached"] is False


def test_same_identity_gives_byte_identical_results(tmp_path):
    run(QUAD, out_dir=tmp_path / "one")
    run(QUAD, out_dir=tmp_path / "two")
    load_or_run(QUAD, cache_dir=tmp_path / "c")
    entry = cache_entry(run_identity(QUAD), tmp_path / "c")
    one = (tmp_path / "one" / "results.csv").read_bytes()
    assert one == (tmp_path / "two" / "results.csv").read_bytes() == (entry / "results.csv").read_bytes()
    recs = [json.loads((d / "done.json").read_text()) for d in (tmp_path / "one", tmp_path / "two", entry)]
    assert len({r["identity"] for r in recs}) == 1 and len({r["sha256"] for r in recs}) == 1
    assert recs[0]["status"] == "ok" and recs[0]["rows"] == len(run(QUAD))


# ---------------------------------------------------------------------- no code from data files
def test_planted_checkpoint_is_refused_on_resume_and_never_runs(tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "marker"
    _plant(out / "checkpoint.pt", marker)
    argv = ["run", "--quiet", "--out", str(out), "--resume", "--checkpoint-every", "5"]
    for k, v in (("dataset", "quadratic"), ("num_clients", 6), ("clients_per_round", 2), ("time_limit", 40)):
        argv += ["--set", f"{k}={v}"]
    rc = main(argv)
    _one_line_error(rc, capsys.readouterr().err, str(out / "checkpoint.pt"), "refused", "posix.system")
    assert not marker.exists() and sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]


def test_planted_checkpoint_in_a_shared_cache_is_refused(tmp_path):
    cfg, marker = QUAD.replace(checkpoint_every=5.0), tmp_path / "marker"
    _plant(cache_entry(run_identity(cfg), tmp_path / "c") / "checkpoint.pt", marker)
    with pytest.raises(ValueError, match="refused"):
        load_or_run(cfg, cache_dir=tmp_path / "c")
    assert not marker.exists()


def test_planted_synthetic_cache_file_is_refused(tmp_path, capsys):
    from qafl_core.data.synthetic import load_synthetic

    cache = tmp_path / "syn"
    ds = load_synthetic(num_tasks=10, cache_dir=cache)
    (cached,) = cache.glob("*.pt")
    assert fingerprint.data_fingerprint(load_synthetic(num_tasks=10, cache_dir=cache)) == fingerprint.data_fingerprint(ds)
    marker = tmp_path / "marker"
    _plant(cached, marker)
    rc = main(["run", "--quiet", "--out", str(tmp_path / "out"), "--set", "dataset=synthetic",
               "--set", f"dataset_options={{num_tasks: 10, cache_dir: {cache}}}"])
    _one_line_error(rc, capsys.readouterr().err, str(cached), "refused")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # a cut-short file is not an attack: it is generated again
    cached.write_bytes(b"PK\x03\x04 cut")
    assert fingerprint.data_fingerprint(load_synthetic(num_tasks=10, cache_dir=cache)) == fingerprint.data_fingerprint(ds)


def test_array_pickles_admit_numpy_arrays_only(tmp_path):
    """CIFAR-10's python batches are pickles: read by an unpickler that admits numpy arrays and nothing else."""
    import io
    import pickle

    import numpy as np

    batch = {b"data": np.arange(6, dtype=np.uint8).reshape(2, 3), b"labels": [1, np.int64(2)]}
    got = store.load_array_pickle(io.BytesIO(pickle.dumps(batch, protocol=2)))
    assert np.array_equal(got[b"data"], batch[b"data"]) and got[b"labels"] == [1, 2]
    marker = tmp_path / "marker"
    with pytest.raises(pickle.UnpicklingError, match="refused to import posix.system"):
        store.load_array_pickle(io.BytesIO(pickle.dumps({b"data": Payload(marker)})))
    assert not marker.exists()


@pytest.mark.parametrize("algorithm", ["quafl", "fedavg", "fedbuff", "fedasync", "qafel"])
@pytest.mark.parametrize("dataset", ["quadratic", "synthetic"])
def test_simulation_state_is_plain_data(algorithm, dataset):
    cfg = QUAD.replace(algorithm=algorithm, dataset=dataset, num_clients=None if dataset == "synthetic" else 6,
                       dataset_options={"num_tasks": 20} if dataset == "synthetic" else {},
                       client_decode_key="base" if algorithm == "quafl" else "current")
    sim = runner.build_simulation(cfg)
    for _ in range(3):
        sim.step()
    store.check_plain(sim.state_dict())
    with pytest.raises(TypeError, match=r"state\['x'\]: builtins.set"):
        store.check_plain({"x": {1}})


# ---------------------------------------------------------------------- locks
def _hold_lock(directory: Path) -> subprocess.Popen:
    code = "import sys, time; from qafl_core.store import DirLock; DirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], env=_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_two_runs_on_one_out_the_second_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    holder = _hold_lock(out)
    try:
        rc = main(["run", "--quiet", "--out", str(out), "--set", "dataset=quadratic", "--set", "num_clients=6"])
        _one_line_error(rc, capsys.readouterr().err, str(out), f"pid {holder.pid}")
        assert sorted(p.name for p in out.iterdir()) == [".qafl.lock"]   # nothing written
        with pytest.raises(store.Locked, match=f"pid {holder.pid}"):
            from qafl_core.sweep import sweep

            sweep({"dataset": "quadratic", "num_clients": 6}, {}, 1, out, echo=False)
    finally:
        holder.kill()
        holder.wait()
    assert main(["run", "--quiet", "--out", str(out), "--set", "dataset=quadratic", "--set", "num_clients=6"]) == 0


def test_a_second_sweep_waits_for_the_entry_and_reads_it(tmp_path, capsys, monkeypatch):
    want = run(QUAD)
    entry = cache_entry(run_identity(QUAD), tmp_path)
    code = ("import sys, time; import qafl_core.runner as r; from qafl_core.store import DirLock\n"
            "from qafl_core.config import RunConfig; from qafl_core.fingerprint import run_identity\n"
            "cfg = RunConfig.from_dict(__import__('json').loads(sys.argv[2])); ident = run_identity(cfg)\n"
            "with DirLock(sys.argv[1]).acquire():\n"
            "    print('held', flush=True); time.sleep(1.5)\n"
            "    r._execute(cfg, r.build_simulation(cfg), __import__('pathlib').Path(sys.argv[1]), ident, None, None)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(entry), json.dumps(QUAD.to_dict())], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        monkeypatch.setattr(runner, "_execute", lambda *a: pytest.fail("computed twice"))
        capsys.readouterr()
        got = load_or_run(QUAD, cache_dir=tmp_path)
    finally:
        proc.wait(60)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and f"pid {proc.pid}" in err[0] and "waiting" in err[0] and "finished by" in err[1]
    assert got.attrs["provenance"]["cached"] is True
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_a_cache_entry_that_cannot_wait_is_refused(tmp_path, monkeypatch):
    holder = _hold_lock(cache_entry(run_identity(QUAD), tmp_path))
    monkeypatch.setenv("QAFL_CACHE_WAIT", "0.5")
    try:
        with pytest.raises(store.Locked, match=f"pid {holder.pid}.*more than 0.5 s"):
            load_or_run(QUAD, cache_dir=tmp_path)
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------------- runner semantics
def _interrupt_after(monkeypatch, steps: int) -> None:
    real = runner.build_simulation

    def build(cfg, task=None):
        sim, count = real(cfg, task), [0]
        step = sim.step

        def interrupted():
            count[0] += 1
            if count[0] > steps:
                raise KeyboardInterrupt
            step()

        sim.step = interrupted
        return sim

    monkeypatch.setattr(runner, "build_simulation", build)


def test_interrupted_run_keeps_its_evaluations(tmp_path, monkeypatch):
    full = run(QUAD)
    _interrupt_after(monkeypatch, 40)                      # 40 rounds of 0.375 time units: t = 15
    with pytest.raises(KeyboardInterrupt):
        run(QUAD, out_dir=tmp_path / "run")
    got = pd.read_csv(tmp_path / "run" / "results.csv")
    last = got.iloc[-1]
    assert (last.split, last.metric, last.value) == ("status", "interrupted", 1.0) and last.server_steps == 40
    kept = got.iloc[:-1]
    assert 0 < kept.time.max() <= last.time < QUAD.time_limit
    pd.testing.assert_frame_equal(kept.reset_index(drop=True), full[full.time <= kept.time.max()].reset_index(drop=True),
                                  check_exact=True, check_dtype=False)
    rec = json.loads((tmp_path / "run" / "done.json").read_text())
    assert rec["status"] == "interrupted" and rec["rows"] == len(got)
    # in the cache an interrupted entry is not finished: the next call computes it
    with pytest.raises(KeyboardInterrupt):
        load_or_run(QUAD, cache_dir=tmp_path / "c")
    monkeypatch.undo()
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "qcache"))
    again = load_or_run(QUAD, cache_dir=tmp_path / "c")
    assert again.attrs["provenance"]["cached"] is False
    pd.testing.assert_frame_equal(again, full, check_exact=True)


def test_config_json_is_written_only_after_validation(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError):
        run(RunConfig(dataset="femnist", data_root=str(tmp_path / "nowhere"), progress=False), out_dir=out)
    assert not out.exists()
    with pytest.raises(ValueError, match="clients_per_round"):
        run(QUAD.replace(dataset="synthetic", num_clients=None, clients_per_round=50,
                         dataset_options={"num_tasks": 10}), out_dir=out)
    assert not out.exists()
    run(QUAD, out_dir=out)
    doc = json.loads((out / "config.json").read_text())
    assert doc["identity"] == run_identity(QUAD).identity and doc["lr"] == QUAD.lr


# ---------------------------------------------------------------------- provenance
def test_manifest_records_each_runs_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "PROVENANCE", {})
    runs = figures.variants(QUAD.to_dict(), {"a": {}, "b": {"lr": 0.02}}, seeds=[0])
    figures.run_variants(runs, cache_dir=tmp_path / "c")
    choice = figures.DatasetChoice("quadratic", "quadratic")
    figures.write_metrics(tmp_path / "figs", "figX", {"x": 1.0}, [choice], runs, {})
    entry = json.loads((tmp_path / "figs" / "MANIFEST.json").read_text())["figures"]["figX"]
    assert [r["config_hash"] for r in entry["runs"]] == entry["config_hashes"]
    assert all(r["cached"] is False and r["code_fingerprint"] == fingerprint.code_fingerprint()
               and r["identity"] for r in entry["runs"])
    assert all(r["git_commit"] == runner._git_commit() for r in entry["runs"])
    figures.run_variants(runs, cache_dir=tmp_path / "c")
    figures.write_metrics(tmp_path / "figs", "figX", {"x": 1.0}, [choice], runs, {})
    metrics = json.loads((tmp_path / "figs" / "figX.metrics.json").read_text())
    assert [r["cached"] for r in metrics["runs"]] == [True, True]
