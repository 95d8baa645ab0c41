"""The ``device`` key (:mod:`qafl_core.device`), tested on a machine without a GPU: parsing, resolution (with
``torch.cuda`` monkeypatched to pretend GPUs exist), one clear error for CUDA without a GPU, the CUDA
determinism settings, and the run identity (``cpu`` and ``auto`` without a GPU keep today's hashes and results;
any CUDA device is one other identity).  CUDA itself is not run here."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from qafl_core import device as qdevice
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.rng import torch_generator
from qafl_core.runner import run

sys.path.insert(0, str(Path(__file__).parent))
from test_golden import GOLDEN, table_hash  # noqa: E402


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:a", "cpu:0", "", 0, None])
def test_malformed_device_is_refused_naming_the_field(value):
    with pytest.raises(ValueError, match="^device: unknown value"):
        RunConfig(device=value)


def test_resolution_without_a_gpu(no_gpu):
    assert qdevice.resolve_device("cpu") == torch.device("cpu")
    assert qdevice.resolve_device("auto") == torch.device("cpu")
    for value in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(ValueError, match=f"^device: {value} requested but CUDA is not available"):
            qdevice.resolve_device(value)


def test_resolution_with_gpus(two_gpus):
    assert qdevice.resolve_device("auto") == torch.device("cuda")
    assert qdevice.resolve_device("cuda") == torch.device("cuda")
    assert qdevice.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert qdevice.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^device: cuda:2 requested but only 2 GPU\(s\) are visible"):
        qdevice.resolve_device("cuda:2")


def test_config_hash_records_the_kind_of_device(no_gpu, monkeypatch):
    base = RunConfig().config_hash()
    assert RunConfig(device="cpu").config_hash() == base
    assert RunConfig(device="auto").config_hash() == base           # auto without a GPU is the CPU
    cuda = RunConfig(device="cuda").config_hash()
    assert cuda != base
    assert RunConfig(device="cuda:0").config_hash() == RunConfig(device="cuda:1").config_hash() == cuda
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert RunConfig(device="auto").config_hash() == cuda           # auto with a GPU is CUDA
    assert RunConfig(device="cpu").config_hash() == base


def test_cuda_without_gpu_is_one_clear_error_before_anything_is_written(no_gpu, tmp_path, capsys):
    cfg = dict(algorithm="quafl", dataset="quadratic", num_clients=4, clients_per_round=2, sit=1.0,
               time_limit=5.0, progress=False, device="cuda")
    with pytest.raises(ValueError, match="^device: cuda requested but CUDA is not available"):
        run(cfg, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match="^device: cuda:1 requested"):
        run({**cfg, "dataset": "synthetic", "num_clients": None, "device": "cuda:1"})
    rc = main(["run", "--quiet", "--out", str(tmp_path / "cli"), "--set", "dataset=quadratic", "--set", "num_clients=4", "--set",
               "clients_per_round=2", "--set", "device=cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("qafl: error: device: cuda requested") and "Traceback" not in err
    assert not (tmp_path / "cli" / "results.csv").exists()


def test_cuda_determinism_settings(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda flag, **kw: calls.append(flag))
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    qdevice.configure(torch.device("cpu"))                           # nothing on the CPU
    assert calls == [] and torch.backends.cudnn.benchmark
    qdevice.configure(torch.device("cuda", 0))
    assert calls == [True]
    assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")           # the user's own (also valid) setting stays
    qdevice.configure(torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_cpu_generators_are_unchanged():
    a, b = torch_generator(5, "quant", 3), torch_generator(5, "quant", 3, device="cpu")
    assert torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert torch_generator(5, "x", device=torch.device("cpu")).device == torch.device("cpu")


@pytest.mark.parametrize("value", ["cpu", "auto"])
def test_cpu_and_auto_without_gpu_give_the_recorded_results(no_gpu, value):
    case = "quafl-lattice-synthetic-batched"
    assert table_hash(case, device=value) == GOLDEN[case]
