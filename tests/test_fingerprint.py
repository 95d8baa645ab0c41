"""Run identity (qafl_core.fingerprint, RunConfig.config_hash): the code fingerprint, the data fingerprint of
the dataset as a run uses it (and its process / disk cache, which must never serve a stale value), the
config hash over non-default keys, and the identity built from the three."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import qafl_core
from qafl_core import fingerprint
from qafl_core.config import RunConfig
from qafl_core.data.federated import FederatedDataset
from qafl_core.data.leaf import write_leaf_file


def leaf_sample(root: Path, relabel: int = 0) -> Path:
    """A tiny FEMNIST-layout LEAF sample (3 writers, 28x28 inputs); ``relabel`` shifts every label."""
    g = torch.Generator().manual_seed(0)
    for side, n in (("train", 6), ("test", 2)):
        users = ["w0", "w1", "w2"]
        data = {u: {"x": torch.rand(n, 784, generator=g).tolist(),
                    "y": [(int(v) + relabel) % 62 for v in torch.randint(0, 62, (n,), generator=g)]} for u in users}
        write_leaf_file({"users": users, "num_samples": [n] * 3, "user_data": data},
                        root / side / f"all_data_0_niid_05_keep_0_{side}_9.json")
    return root


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QAFL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_MEMO", {})


# ---------------------------------------------------------------------- the two definitions
def test_code_fingerprint_is_sha256_over_the_package_sources():
    pkg = Path(qafl_core.__file__).resolve().parent
    h = hashlib.sha256()
    files = sorted(pkg.rglob("*.py"))
    for p in files:
        h.update(p.relative_to(pkg.parent).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    assert fingerprint.code_fingerprint() == h.hexdigest()
    assert "qafl_core/config.py" in {p.relative_to(pkg.parent).as_posix() for p in files}


def test_data_fingerprint_hand_computed_and_content_only():
    ds = FederatedDataset.from_clients("toy", ["a", "b"], [(torch.ones(2, 3), torch.tensor([0, 1])),
                                                           (torch.zeros(1, 3), torch.tensor([2]))],
                                       [(torch.ones(1, 3), torch.tensor([1])), (torch.zeros(1, 3), torch.tensor([0]))], 3)
    h = hashlib.sha256(b'{"name": "toy", "num_classes": 3, "clients": ["a", "b"]}')
    for t in (ds.x_train, ds.y_train, ds.train_offsets, ds.x_test, ds.y_test, ds.test_offsets):
        h.update(str((str(t.dtype), tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    assert fingerprint.data_fingerprint(ds) == h.hexdigest()
    copy = FederatedDataset(**{**ds.__dict__, "info": {"anything": 1}})        # provenance text is not content
    assert fingerprint.data_fingerprint(copy) == h.hexdigest()
    relabelled = FederatedDataset(**{**ds.__dict__, "y_test": torch.tensor([2, 0])})
    assert fingerprint.data_fingerprint(relabelled) != h.hexdigest()


# ---------------------------------------------------------------------- config hash
def test_config_hash_covers_only_non_default_keys():
    assert RunConfig().config_hash() == hashlib.sha256(b"{}").hexdigest()[:16]
    want = hashlib.sha256(json.dumps({"lr": 0.02, "seed": 3}, sort_keys=True, separators=(",", ":")).encode())
    assert RunConfig(lr=0.02, seed=3).config_hash() == want.hexdigest()[:16]
    # setting a key to its default, ints for floats, and keys that cannot change results: same hash
    assert RunConfig(lr=0.02, seed=3, sit=10, progress=False, num_threads=2, checkpoint_every=5.0,
                     data_root="/elsewhere").config_hash() == want.hexdigest()[:16]
    assert RunConfig(lr=1).config_hash() == RunConfig(lr=1.0).config_hash() != RunConfig().config_hash()
    assert RunConfig(dataset_options={"num_tasks": 30}).config_hash() != RunConfig().config_hash()


# ---------------------------------------------------------------------- the dataset as a run uses it
def test_same_bytes_share_a_fingerprint_relabelled_data_does_not(tmp_path):
    a = leaf_sample(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    c = leaf_sample(tmp_path / "c", relabel=1)
    base = dict(dataset="femnist", model="logreg")
    fa, fb, fc = (fingerprint.dataset_fingerprint(RunConfig(**base, data_root=str(r))) for r in (a, b, c))
    assert fa == fb != fc
    ia, ib, ic = (fingerprint.run_identity(RunConfig(**base, data_root=str(r))) for r in (a, b, c))
    assert ia.identity == ib.identity != ic.identity and ia.config_hash == ic.config_hash
    # the dataset as used: a client subset is other data
    sub = fingerprint.dataset_fingerprint(RunConfig(**base, data_root=str(a), num_clients=2, clients_per_round=1))
    assert sub != fa


def test_disk_cache_is_used_and_never_stale(tmp_path, monkeypatch):
    from qafl_core.data import build

    root = leaf_sample(tmp_path / "a")
    cfg = RunConfig(dataset="femnist", model="logreg", data_root=str(root))
    first = fingerprint.dataset_fingerprint(cfg)
    assert len(list((tmp_path / "cache" / "fingerprints").glob("*.json"))) == 1
    loads = []
    real = build.build_dataset
    monkeypatch.setattr(build, "build_dataset", lambda c: loads.append(c) or real(c))
    monkeypatch.setattr(fingerprint, "_MEMO", {})                 # a new process: only the disk cache
    assert fingerprint.dataset_fingerprint(cfg) == first and loads == []
    # rewrite one file with other labels: the key changes, the fingerprint is computed again from the data
    f = root / "train" / "all_data_0_niid_05_keep_0_train_9.json"
    data = json.loads(f.read_text())
    data["user_data"]["w0"]["y"][0] = (data["user_data"]["w0"]["y"][0] + 1) % 62
    f.write_text(json.dumps(data))
    again = fingerprint.dataset_fingerprint(cfg)
    assert len(loads) == 1 and again != first
    # a new file under the root is a new key too
    (root / "train" / "README").write_text("x")
    fingerprint.dataset_fingerprint(cfg)
    assert len(loads) == 2
    # a disk entry whose recorded source differs is not served (a hash collision or a hand-edited file)
    entry = next(iter(sorted((tmp_path / "cache" / "fingerprints").glob("*.json"), key=os.path.getmtime)[-1:]))
    doc = json.loads(entry.read_text())
    doc["source"]["files"] = []
    entry.write_text(json.dumps(doc))
    monkeypatch.setattr(fingerprint, "_MEMO", {})
    fingerprint.dataset_fingerprint(cfg)
    assert len(loads) == 3


def test_identity_changes_with_code_and_config(monkeypatch):
    cfg = RunConfig(dataset="quadratic", num_clients=6)
    base = fingerprint.run_identity(cfg)
    assert base.identity == hashlib.sha256(json.dumps([base.config_hash, base.data_fingerprint,
                                                        base.code_fingerprint]).encode()).hexdigest()
    assert fingerprint.run_identity(cfg.replace(lr=0.02)).identity != base.identity
    monkeypatch.setattr(fingerprint, "_CODE_FP", "0" * 64)
    assert fingerprint.run_identity(cfg).identity != base.identity


def test_editing_the_timing_trace_file_changes_the_identity(tmp_path):
    trace = tmp_path / "trace.csv"
    cfg = RunConfig(dataset="quadratic", num_clients=2, clients_per_round=1, timing="trace", timing_trace=str(trace))
    trace.write_text("client,mean_step_time\n0,1.0\n1,2.0\n")
    first = fingerprint.run_identity(cfg)
    trace.write_text("client,mean_step_time\n0,1.0\n1,9.0\n")
    second = fingerprint.run_identity(cfg)
    assert first.config_hash == second.config_hash           # the path did not change ...
    assert first.identity != second.identity                   # ... its content did
    plain = RunConfig(dataset="quadratic", num_clients=2, clients_per_round=1)
    ident = fingerprint.run_identity(plain)                    # no input file: identity of three parts
    assert ident.identity == hashlib.sha256(json.dumps(
        [ident.config_hash, ident.data_fingerprint, ident.code_fingerprint]).encode()).hexdigest()
