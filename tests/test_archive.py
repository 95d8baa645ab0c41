"""Tests of :mod:`qafl_core.archive`: committed results are verified, matched on config and data, and
carry the code that produced them."""
from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest

from qafl_core import archive, fingerprint
from qafl_core.cache import load_or_run
from qafl_core.config import RunConfig
from qafl_core.runner import run

CFG = dict(dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=10, clients_per_round=3,
           time_limit=30.0, eval_every=15.0, progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = RunConfig(**CFG)
    df = run(cfg, out_dir=out)
    return cfg, df, out


def test_import_then_lookup_serves_the_same_table_with_its_provenance(finished, tmp_path):
    cfg, df, out = finished
    rec_path = archive.import_run_dir(out, tmp_path / "paper" / "exp", extra={"label": "QuAFL"})
    assert rec_path.name == f"{cfg.config_hash()}.json"
    got = archive.lookup(cfg, roots=[tmp_path])
    pd.testing.assert_frame_equal(got, pd.read_csv(out / "results.csv"))
    prov = got.attrs["provenance"]
    assert prov["source"] == "archive" and prov["same_code"] is True
    assert prov["code_fingerprint"] == fingerprint.code_fingerprint()
    assert prov["data_fingerprint"] == fingerprint.dataset_fingerprint(cfg)
    rec = json.loads(rec_path.read_text())
    assert rec["label"] == "QuAFL" and rec["status"] == "ok" and rec["config"]["num_clients"] == 10
    assert archive.verify([tmp_path]) == []
    # another config, same data: not found
    assert archive.lookup(cfg.replace(lr=0.02), roots=[tmp_path]) is None


def test_same_table_same_bytes(finished, tmp_path):
    cfg, df, _ = finished
    kw = dict(data_fingerprint="d" * 64, code_fingerprint="c" * 64, git_commit=None)
    a = archive.add(df, cfg, tmp_path / "a", **kw)
    b = archive.add(df, cfg, tmp_path / "b", **kw)
    assert a.with_suffix("").with_suffix(".csv.gz").name == f"{cfg.config_hash()}.csv.gz"
    assert (tmp_path / "a" / f"{cfg.config_hash()}.csv.gz").read_bytes() == \
        (tmp_path / "b" / f"{cfg.config_hash()}.csv.gz").read_bytes()


def _numeric_looking_hash(cfg: RunConfig, pattern: str) -> RunConfig:
    """The first seed whose config hash a CSV reader would take for a number (about 1 in 600 seeds)."""
    import re

    for seed in range(100_000):
        c = cfg.replace(seed=seed)
        if re.fullmatch(pattern, c.config_hash()):
            return c
    raise AssertionError(f"no seed below 100,000 gives a config hash matching {pattern}")


@pytest.mark.parametrize("pattern", [r"\d+e\d+", r"\d+"], ids=["exponent", "digits"])
def test_config_hashes_that_look_like_numbers_read_back_as_written(finished, tmp_path, pattern):
    """A config hash such as ``882945488675e891`` (a float to a CSV reader: inf) or ``0080379868007115`` (an integer,
    leading zeros dropped) and text columns named like numbers or NaN read back as the same text, from the archive
    and from a run directory (the run cache): one such hash in 600 would otherwise be lost, and two runs whose
    hashes both read as inf would be taken for one."""
    from qafl_core import store

    cfg, df, _ = finished
    odd_cfg = _numeric_looking_hash(cfg, pattern)
    h = odd_cfg.config_hash()
    odd = df.assign(config_hash=h, seed=odd_cfg.seed, model="nan", quantizer="1e3")
    got, _ = archive.read(archive.add(odd, odd_cfg, tmp_path / "arch", data_fingerprint="d" * 64,
                                      code_fingerprint="c" * 64, git_commit=None))
    store.write_entry(tmp_path / "run", odd, {"identity": "i", "status": "ok"})
    cached, _ = store.read_entry(tmp_path / "run", "i")
    for table in (got, cached):
        assert table.config_hash.tolist() == [h] * len(df)
        assert table.model.tolist() == ["nan"] * len(df) and table.quantizer.tolist() == ["1e3"] * len(df)
        assert table.value.tolist() == pytest.approx(df.value.tolist(), nan_ok=True)


def test_other_data_is_not_served(finished, tmp_path, capsys):
    cfg, df, _ = finished
    archive.add(df, cfg, tmp_path, data_fingerprint="0" * 64, code_fingerprint="c" * 64, git_commit=None)
    assert archive.lookup(cfg, roots=[tmp_path]) is None
    assert "archived for other data" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "record"])
def test_damaged_entries_are_errors_naming_the_file(finished, tmp_path, damage):
    cfg, df, _ = finished
    rec = archive.add(df, cfg, tmp_path, data_fingerprint=fingerprint.dataset_fingerprint(cfg),
                      code_fingerprint="c" * 64, git_commit=None)
    table = tmp_path / f"{cfg.config_hash()}.csv.gz"
    if damage == "flip":
        data = bytearray(gzip.decompress(table.read_bytes()))
        data[-3] = ord("7") if data[-3] != ord("7") else ord("8")
        table.write_bytes(gzip.compress(bytes(data)))
    elif damage == "truncate":
        table.write_bytes(table.read_bytes()[:40])
    elif damage == "swap":
        other = df.assign(value=df.value * 0)
        table.write_bytes(gzip.compress(other.to_csv(index=False).encode()))
    else:
        rec.write_text("{not json")
    with pytest.raises(archive.ArchiveError, match=str(tmp_path)):
        archive.lookup(cfg, roots=[tmp_path])
    assert len(archive.verify([tmp_path])) == 1


def test_only_finished_runs_are_archived(finished, tmp_path):
    cfg, df, _ = finished
    with pytest.raises(ValueError, match="status"):
        archive.add(df, cfg, tmp_path, data_fingerprint="d", code_fingerprint="c", git_commit=None,
                    status="interrupted")
    with pytest.raises(ValueError, match="config_hash"):
        archive.add(df, cfg.replace(lr=0.5), tmp_path, data_fingerprint="d", code_fingerprint="c", git_commit=None)


def test_load_or_run_uses_the_archive_only_when_asked(finished, tmp_path):
    cfg, df, out = finished
    archive.import_run_dir(out, tmp_path / "results")
    served = load_or_run(cfg, cache_dir=tmp_path / "cache", archive=[tmp_path / "results"])
    assert served.attrs["provenance"]["source"] == "archive"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    computed = load_or_run(cfg, cache_dir=tmp_path / "cache")
    assert computed.attrs["provenance"].get("source") != "archive"
    pd.testing.assert_frame_equal(served, computed, check_like=False)


def test_committed_archive_verifies():
    """Every committed entry under results/ matches its record (a damaged commit fails here)."""
    assert archive.verify() == []
