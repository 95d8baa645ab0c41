"""Backends for many runs (issue 6, item 4): the local backend, a local Ray instance giving results
identical to it, ``qafl sweep`` on both, failure collection, and the missing-Ray message.

Ray starts once for the module (a few seconds); the runs are tiny quadratic / Synthetic problems.
"""
from __future__ import annotations

import sys

import pandas as pd
import pytest

from qafl_core.backend import failures, run_many, run_status
from qafl_core.cache import cache_entry
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.fingerprint import run_identity
from qafl_core.runner import run

QUAD = dict(dataset="quadratic", num_clients=8, clients_per_round=3, sit=1.0, time_limit=40.0, eval_every=10.0,
            lr=0.05, quantizer="qsgd", bits=6, progress=False)
SYNTH = dict(algorithm="fedbuff", dataset="synthetic", dataset_options={"num_tasks": 30}, clients_per_round=3,
             quantizer="lattice", bits=10, lattice_eps=1e-3, sit=1.0, time_limit=40.0, eval_every=10.0,
             batch_size=8, progress=False)
SWEEP_YAML = """\
dataset: quadratic
num_clients: 8
clients_per_round: 3
sit: 1
time_limit: 40
eval_every: 10
quantizer: lattice
bits: 10
lattice_eps: 0.001
grid:
  algorithm: [quafl, fedavg]
"""


def _seeds(base: dict, n: int = 3) -> list[dict]:
    return [{**base, "seed": s} for s in range(n)]


def _same(a: list[pd.DataFrame], b: list[pd.DataFrame]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True), check_exact=True)


# ---------------------------------------------------------------------- local backend
def test_local_backend_order_cache_and_equality_with_run(tmp_path):
    configs = _seeds(QUAD) + _seeds(SYNTH, 2)
    first = run_many(configs, cache_dir=tmp_path)
    _same(first, [run(c) for c in configs])
    assert [int(f.seed.iloc[0]) for f in first] == [0, 1, 2, 0, 1]
    assert len(list(tmp_path.glob("*/results.csv"))) == 5
    again = run_many(configs, cache_dir=tmp_path)  # served from the cache (read back from results.csv)
    _same(first, again)
    assert failures(first) == []


def test_unknown_backend_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="backend: unknown value 'dask'"):
        run_many([QUAD], backend="dask", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="max_parallel"):
        run_many([QUAD], max_parallel=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="config #1: unknown config key"):
        run_many([QUAD, {**QUAD, "lrr": 1}], cache_dir=tmp_path)


def test_missing_ray_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "qafl\[ray\]"'):
        run_many([QUAD], backend="ray", cache_dir=tmp_path)


def test_sweep_with_checkpoints_gives_the_same_tables(tmp_path, capsys, monkeypatch):
    from qafl_core import checkpoint

    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP_YAML)
    common = ["sweep", "--config", str(cfg), "--seeds", "2"]
    saved, real_save = [], checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, *a: saved.append(path) or real_save(path, *a))
    assert main(common + ["--out", str(tmp_path / "plain")]) == 0
    assert not saved
    assert main(common + ["--checkpoint-every", "10", "--out", str(tmp_path / "ckpt")]) == 0
    capsys.readouterr()
    # the QuAFL runs checkpoint; the FedAvg ones finish in their first (long) round, before any checkpoint
    assert len(set(saved)) == 2 and len(saved) > 2
    # finished runs are served from results.csv: their checkpoints are gone
    assert not list((tmp_path / "ckpt" / "runs").glob("*/checkpoint.pt"))
    for name in ("results.csv", "summary.csv"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes()


# ---------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_local():
    """A local Ray with 2 CPUs, started like the product starts it (retries on a loaded machine).  A Ray that
    cannot start at all after every attempt skips these tests, saying why; anything after start-up fails them."""
    from qafl_core.backend import RayStartError, init_ray

    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'qafl[ray]' or the test extra)")
    if _RAY_START_FAILURE:  # a module fixture that skips is set up again for every test: try once, not 3 x 3 times
        pytest.skip(_RAY_START_FAILURE[0])
    try:
        init_ray(num_cpus=2)
    except RayStartError as exc:
        _RAY_START_FAILURE.append(f"Ray could not start on this machine: {exc}")
        pytest.skip(_RAY_START_FAILURE[0])
    yield ray
    ray.shutdown()


_RAY_START_FAILURE: list[str] = []


class _FakeRay:
    """``ray`` stand-in whose ``init`` fails ``failures`` times (as a loaded machine's start-up timeout does)."""

    def __init__(self, failures: int):
        self.failures, self.calls, self.shutdowns, self.kwargs = failures, 0, 0, None

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls += 1
        self.kwargs = kwargs
        if self.calls <= self.failures:
            raise Exception("The current node timed out during startup. This could happen because ...")

    def shutdown(self):
        self.shutdowns += 1


def test_ray_start_is_retried_then_refused_in_one_line(monkeypatch, tmp_path, capsys):
    import qafl_core.backend as backend

    monkeypatch.setattr(backend, "RAY_START_PAUSE", 0.0)
    fake = _FakeRay(failures=2)
    monkeypatch.setitem(sys.modules, "ray", fake)
    assert backend.init_ray(num_cpus=2) is True and fake.calls == 3 and fake.shutdowns == 2
    assert fake.kwargs["num_cpus"] == 2 and fake.kwargs["include_dashboard"] is False
    assert fake.kwargs["address"] == "local"
    fake = _FakeRay(failures=99)
    monkeypatch.setitem(sys.modules, "ray", fake)
    with pytest.raises(backend.RayStartError, match=r"could not start a local Ray instance in 3 attempts .*timed out"):
        backend.init_ray()
    assert fake.calls == 3
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP_YAML)
    rc = main(["sweep", "--config", str(cfg), "--seeds", "1", "--backend", "ray", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("qafl: error: --backend ray: could not start") and "Traceback" not in "".join(err)


@pytest.mark.ray
def test_ray_runs_equal_local_runs(ray_local, tmp_path):
    configs = _seeds(QUAD) + _seeds({**QUAD, "algorithm": "fedbuff"}) + _seeds(SYNTH)
    local = run_many(configs, backend="local", cache_dir=tmp_path / "local")
    remote = run_many(configs, backend="ray", cache_dir=tmp_path / "ray")  # separate caches: really recomputed
    _same(local, remote)
    assert len(list((tmp_path / "ray").glob("*/results.csv"))) == len(configs)
    for cfg, a, b in zip(configs, local, remote):
        ident = run_identity(RunConfig.from_dict(cfg))
        assert a.attrs["provenance"] == b.attrs["provenance"]      # survives the trip back from the Ray worker
        assert a.attrs["provenance"]["identity"] == ident.identity and not a.attrs["provenance"]["cached"]
        assert (cache_entry(ident, tmp_path / "local") / "results.csv").read_bytes() == \
            (cache_entry(ident, tmp_path / "ray") / "results.csv").read_bytes()
    throttled = run_many(configs[:3], backend="ray", cache_dir=tmp_path / "ray1", max_parallel=1)
    _same(local[:3], throttled)


@pytest.mark.ray
def test_ray_batch_collects_failures_and_divergence(ray_local, tmp_path):
    configs = [QUAD, {**QUAD, "dataset_options": {"dimm": 3}}, {**QUAD, "lr": 1e10}, {**QUAD, "seed": 1}]
    frames = run_many(configs, backend="ray", cache_dir=tmp_path)
    assert [run_status(f) for f in frames] == ["ok", "failed", "diverged", "ok"]
    (k, err), = failures(frames)
    assert k == 1 and "dataset_options.dimm" in err
    _same([frames[0], frames[3]], run_many([configs[0], configs[3]], cache_dir=tmp_path / "local"))


@pytest.mark.ray
def test_qafl_sweep_on_ray_equals_local(ray_local, tmp_path, capsys):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(SWEEP_YAML)
    outs = {}
    for backend in ("local", "ray"):
        rc = main(["sweep", "--config", str(cfg), "--seeds", "3", "--backend", backend, "--out",
                   str(tmp_path / backend)])
        outs[backend] = capsys.readouterr().out
        assert rc == 0
    for name in ("results.csv", "summary.csv"):
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes(), name
    summary = pd.read_csv(tmp_path / "ray" / "summary.csv")
    assert list(summary.algorithm) == ["quafl"] * 3 + ["fedavg"] * 3 and list(summary.seed) == [0, 1, 2] * 2
    assert (summary.status == "ok").all() and summary.final_loss.notna().all()
    assert summary.final_loss.iloc[0] != summary.final_loss.iloc[1]  # seeds differ
    table = {b: o.split("\nresults: ")[0] for b, o in outs.items()}  # the last line names the output dir
    assert table["local"] == table["ray"] and "over seeds:" in table["ray"]
    print(outs["ray"])
