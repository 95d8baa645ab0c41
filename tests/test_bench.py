"""``qafl bench`` runs and prints well-formed lines (toy sizes; timings are never asserted), and the
performance changes behind it keep results: batched local SGD equals the sequential one, the zero-copy
identity and the one-thread vector ops change nothing, ``FlatModel.bind`` equals ``functional_call``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from qafl_bench import suite as bench
from qafl_core.algorithms import FedAvg, FedBuff, QuAFL
from qafl_bench.workloads import random_dataset
from qafl_core.cli import main
from qafl_core.config import RunConfig
from qafl_core.local import NeuralTask
from qafl_core.quantize import IdentityQuantizer, make_quantizer
from qafl_core.runner import build_simulation

sys.path.insert(0, str(Path(__file__).parent))
from engine_fakes import FakeTask, ScriptedClocks  # noqa: E402


def _ragged_dataset(n=6):
    # client sizes 13, 22, ... are not multiples of the batch size: epochs end with short batches
    ds = random_dataset("mnist", n, 40, (1, 28, 28), 10)
    keep = [slice(int(ds.train_offsets[i]), int(ds.train_offsets[i]) + 13 + 9 * i) for i in range(n)]
    parts = [(ds.x_train[k], ds.y_train[k]) for k in keep]
    return type(ds).from_clients("mnist", ds.client_ids, parts, [(x[:3], y[:3]) for x, y in parts], 10)


def _run(alg, model, batched, quantizer="identity", bits=32, steps=6):
    cfg = RunConfig(dataset="mnist", algorithm=alg, clients_per_round=3, local_steps=4, batch_size=8, lr=0.1, sit=5.0,
                    quantizer=quantizer, bits=bits, lattice_eps=1e-3, progress=False, time_limit=1e9)
    task = NeuralTask(_ragged_dataset(), model, 0, 8)
    task.batched = batched
    sim = build_simulation(cfg, task)
    for _ in range(steps):
        sim.step()
    return sim


@pytest.mark.parametrize("alg", ["quafl", "fedavg"])
@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_batched_local_sgd_matches_sequential(alg, model):
    seq, bat = _run(alg, model, False), _run(alg, model, True)
    assert bat.task.batched and not seq.task.batched
    assert seq.local_steps == bat.local_steps > 0
    assert torch.allclose(seq.server, bat.server, atol=1e-5, rtol=0)
    assert not torch.equal(seq.server, seq.task.init_vector())     # it trained
    if alg == "quafl":                                               # per-client step counts differ (0..K)
        assert torch.allclose(seq.clients, bat.clients, atol=1e-5, rtol=0)


def test_batched_with_lattice_messages_matches_sequential():
    seq, bat = _run("quafl", "mlp", False, "lattice", 16), _run("quafl", "mlp", True, "lattice", 16)
    assert torch.allclose(seq.server, bat.server, atol=2e-3)          # at most one lattice step apart
    assert seq.bits_up == bat.bits_up and seq.decode_failures == bat.decode_failures


def test_batched_rejects_tasks_without_batched_local_sgd():
    task = NeuralTask(random_dataset("mnist", 2, 8, (1, 28, 28), 10), "fmnist_cnn", 0, 4, momentum=0.5)
    assert not task.supports_batched                            # stateful optimizers train one by one only
    task.batched = True
    with pytest.raises(ValueError, match="batched_clients: FmnistCNN"):
        build_simulation(RunConfig(dataset="mnist", clients_per_round=1, progress=False), task)
    with pytest.raises(ValueError, match="batched_clients: FakeTask"):
        build_simulation(RunConfig(dataset="synthetic", clients_per_round=1, progress=False, batched_clients=True),
                         FakeTask(2))
    for model in ("mlp", "fmnist_cnn"):                         # every model of the suite has a batched path
        assert NeuralTask(random_dataset("mnist", 2, 8, (1, 28, 28), 10), model, 0, 4).supports_batched


@pytest.mark.parametrize("cls", [QuAFL, FedAvg, FedBuff])
def test_zero_copy_identity_changes_no_result(cls, monkeypatch):
    def sim(copying):
        if copying:   # force the copying identity (the old behaviour) through the whole run
            monkeypatch.setattr(IdentityQuantizer, "borrowing", lambda self: self)
        else:
            monkeypatch.undo()
        cfg = RunConfig(dataset="synthetic", algorithm=cls.name, clients_per_round=2, local_steps=2, lr=0.5, sit=1.0,
                        progress=False)
        task = FakeTask(3)
        s = cls(cfg, task, make_quantizer("identity"), ScriptedClocks({0: [1.0], 1: [0.7, 2.0], 2: [1.5]}))
        for _ in range(5):
            s.step()
        return s
    a, b = sim(True), sim(False)
    assert a.quantizer.copy and not b.quantizer.copy
    assert torch.equal(a.server, b.server) and a.counters() == b.counters()
    if cls is not FedAvg:
        assert torch.equal(a.clients, b.clients)


def test_step_runs_vector_ops_on_one_thread_and_sgd_on_the_callers():
    seen = []

    class ThreadTask(FakeTask):
        def local_sgd(self, row, client, num_steps, lr):
            seen.append(torch.get_num_threads())
            super().local_sgd(row, client, num_steps, lr)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        cfg = RunConfig(dataset="synthetic", algorithm="fedavg", clients_per_round=2, local_steps=1, progress=False)
        sim = FedAvg(cfg, ThreadTask(2), make_quantizer("identity"), ScriptedClocks({0: [1.0], 1: [1.0]}))
        sim.step()
        assert seen == [2, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_flat_model_bind_equals_functional_call_and_restores():
    task = NeuralTask(random_dataset("mnist", 2, 8, (1, 28, 28), 10), "mlp", 0, 4)
    vec = torch.randn(task.dim)
    params, state = task.flat.leaf_views(vec)
    x = torch.rand(5, 1, 28, 28)
    original = dict(task.module.named_parameters())
    with task.flat.bind(state) as m:
        out = m(x)
    assert torch.equal(out, functional_call(task.module, state, (x,)))
    assert all(p is original[n] for n, p in task.module.named_parameters())
    with pytest.raises(RuntimeError):
        with task.flat.bind(state):
            raise RuntimeError("boom")
    assert all(p is original[n] for n, p in task.module.named_parameters())


# ---------------------------------------------------------------------- the command
_FAST = ("engine_vs_bare_cnn,engine_vs_bare_mlp,batched_vs_bare_mlp,quantizer_gbps,lattice_vs_copy,"
         "quafl_lattice_round_vs_sgd,peak_rss_300_clients_gb")


@pytest.mark.slow
def test_bench_json_has_every_requested_line(capsys):
    rc = main(["bench", "--tiny", "--json", "--only", _FAST])
    obj = json.loads(capsys.readouterr().out)
    assert rc in (0, 1)                                   # toy sizes: pass/fail means nothing here
    for name in _FAST.split(","):
        line = obj[name]
        assert set(line) >= {"value", "target", "passed", "note"}
        assert line["value"] is not None and isinstance(line["passed"], bool)
    assert set(obj["quantizer_gbps"]["value"]) == {"copy", "lattice", "qsgd"}
    assert obj["peak_rss_300_clients_gb"]["value"] > 0
    assert 0 < obj["engine_vs_bare_mlp"]["value"] < 1000
    assert obj["size"] == "tiny" and obj["machine"]["cpus"] >= 1
    # the new ratios are finite; a round costs at least its own local SGD
    assert 0 < obj["lattice_vs_copy"]["value"] < 1e6 and obj["lattice_vs_copy"]["target"] == ">= 0.50"
    assert 1.0 <= obj["quafl_lattice_round_vs_sgd"]["value"] < 1e6
    assert obj["quafl_lattice_round_vs_sgd"]["detail"]["local_steps"] > 0
    send, both = (obj["lattice_vs_copy"]["detail"]["ms"][k] for k in ("send", "encode_decode"))
    assert send > 0 and both > 0 and "encode then decode" in obj["lattice_vs_copy"]["note"]
    assert {"lattice_send", "qsgd_send"} <= set(obj["quantizer_gbps"]["detail"]["ms"])


def test_bench_table_lines_are_well_formed(capsys):
    main(["bench", "--tiny", "--only", "engine_vs_bare_mlp,quantizer_gbps"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("qafl bench (tiny)") and out[1].split()[:4] == ["name", "value", "target", "result"]
    rows = {ln.split()[0]: ln for ln in out[2:]}
    assert set(rows) == {"engine_vs_bare_mlp", "quantizer_gbps"}
    assert rows["engine_vs_bare_mlp"].split()[2:4] == ["<=", "1.50"]
    assert any(w in rows["engine_vs_bare_mlp"].split() for w in ("pass", "FAIL"))


def test_bench_rejects_unknown_names(capsys):
    assert main(["bench", "--only", "nope"]) == 2
    assert "--only: unknown benchmark(s) nope" in capsys.readouterr().err


def test_flower_line_is_skipped_without_flower(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flwr" else real(name, *a))
    line = bench.bench_flower("tiny")
    assert line.value is None and line.passed is None and "Flower is not installed" in line.note
    assert "skip" in bench.format_table([line]).splitlines()[1].split()


def test_batched_clients_config_key_turns_batching_on_and_is_validated():
    cfg = RunConfig(dataset="mnist", clients_per_round=3, local_steps=4, batch_size=8, lr=0.1, progress=False,
                    batched_clients=True)
    assert cfg.config_hash() != cfg.replace(batched_clients=False).config_hash()   # a different run
    assert build_simulation(cfg, NeuralTask(_ragged_dataset(), "mlp", 0, 8)).task.batched
    assert build_simulation(cfg, NeuralTask(_ragged_dataset(), "fmnist_cnn", 0, 8)).task.batched
    assert not build_simulation(cfg.replace(batched_clients=False),
                                NeuralTask(_ragged_dataset(), "mlp", 0, 8)).task.batched
    with pytest.raises(ValueError, match="batched_clients: expected true/false"):
        RunConfig(batched_clients="yes")


def test_batched_vs_sequential_and_gpu_lines_run(capsys, monkeypatch):
    """The CPU batched line measures every model the batched path supports; the GPU lines say plainly that they
    were skipped without CUDA (as here), never a number."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = main(["bench", "--tiny", "--json", "--only",
               "batched_vs_sequential,engine_vs_bare_cuda,batched_vs_sequential_cuda"])
    obj = json.loads(capsys.readouterr().out)
    assert rc == 0                                          # reported or skipped lines never fail the command
    cpu = obj["batched_vs_sequential"]
    assert set(cpu["value"]) == {"mlp", "logreg", "femnist_cnn"} and all(v > 0 for v in cpu["value"].values())
    assert cpu["passed"] is None and cpu["target"] == "reported"
    for model in ("mlp", "logreg", "femnist_cnn"):                         # both sides made the same contacts and steps
        steps = cpu["detail"][model]["local_steps"]
        assert steps[0] == steps[1] > 0
    for name, target in (("engine_vs_bare_cuda", "<= 1.10"), ("batched_vs_sequential_cuda", ">= 5")):
        line = obj[name]
        assert line["value"] is None and line["passed"] is None and line["note"] == "skipped: no GPU"
        assert line["target"] == target


def test_engine_pair_and_bare_loop_accept_a_device():
    from qafl_bench.workloads import BareLoop, engine_pair

    ds = random_dataset("mnist", 4, 20, (1, 28, 28), 10)
    res = engine_pair(ds, "mlp", 2, 2, 8, 1, 1, device="cpu")
    assert res["ratio"] > 0 and res["clock"] == "cpu" and res["steps"] > 0
    assert BareLoop(ds, "mlp", 8, device="cpu").x.device == torch.device("cpu")


def test_quafl_round_line_is_skipped_when_femnist_is_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("QAFL_DATA_DIR", str(tmp_path))           # set, but holds no FEMNIST
    line = bench.bench_quafl_round("quick")
    assert line.value is None and line.passed is None
    assert line.note.startswith("skipped: FEMNIST data not found") and str(tmp_path) in line.note
    assert bench.format_table([line]).splitlines()[1].split()[:4] == ["quafl_lattice_round_vs_sgd", "-", "<=", "1.10"]


def test_lattice_vs_copy_times_what_replaced_the_fused_send_without_one():
    """The workload runs against quantizers without ``send`` (the implementation before the fused kernels),
    timing decode(encode(x)) instead: the same harness measures before and after."""
    from qafl_bench import quantize as bench_quantize
    from qafl_core.quantize import make_quantizer

    class Plain:
        def __init__(self):
            self.q = make_quantizer("lattice", 12, 1e-4)

        def encode(self, x, generator=None):
            return self.q.encode(x, generator)

        def decode(self, msg, key):
            return self.q.decode(msg, key)

    x = torch.randn(1000) * 0.05
    a, b = bench_quantize._send(Plain(), x, x), make_quantizer("lattice", 12, 1e-4).send(x, x)
    assert torch.equal(a.value, b.value) and a.failures == b.failures == 0
