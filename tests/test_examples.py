"""The worked extension examples (``examples/``): each registers with one line and runs through
:func:`qafl_core.runner.run` on tiny data, with hand-computed checks of what it adds."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from qafl_core.algorithms import ALGORITHMS, LABELS
from qafl_core.config import RunConfig
from qafl_core.data.registry import DATASETS, data_available, label, load_dataset
from qafl_core.models import MODELS, build_model, default_model
from qafl_core.quantize import BUILDERS, make_quantizer
from qafl_core.rng import torch_generator
from qafl_core.runner import build_simulation, run

from examples import register_all

TINY = dict(dataset="two_gaussians", algorithm="fedavg_momentum", quantizer="sign", bits=1, model="tanh_mlp",
            clients_per_round=3, local_steps=2, batch_size=8, lr=0.1, time_limit=60.0, eval_every=20.0, progress=False)


@pytest.fixture
def registered():
    """Register the four examples for one test, then remove them (the registries are process-wide)."""
    tables = (ALGORITHMS, LABELS, BUILDERS, DATASETS, MODELS)
    before = [set(t) for t in tables]
    register_all()
    yield
    for table, keys in zip(tables, before):
        for name in set(table) - keys:
            del table[name]


def test_names_are_unknown_until_registered():
    for key, value in (("algorithm", "fedavg_momentum"), ("quantizer", "sign"), ("dataset", "two_gaussians")):
        with pytest.raises(ValueError, match=f"{key}: unknown value '{value}'"):
            RunConfig(**{key: value})


def test_sign_quantizer_by_hand(registered):
    q = make_quantizer("sign", bits=1)
    msg = q.encode(torch.tensor([0.5, -1.5, 0.0, 2.0]))
    assert msg.bits == 4 + 32  # one bit per coordinate + the float32 scale mean|x| = 1.0
    dec = q.decode(msg, None)
    assert dec.value.tolist() == [1.0, -1.0, 1.0, 1.0] and dec.failures == 0


def test_server_momentum_by_hand(registered):
    sim = build_simulation(RunConfig(**{**TINY, "quantizer": "identity", "bits": 32}))
    x0 = sim.server.clone()
    d = torch.linspace(-1, 1, sim.server.numel())
    sim.apply_server_delta(d, 0.5)   # m = d
    sim.apply_server_delta(d, 0.5)   # m = 0.9 d + d = 1.9 d
    torch.testing.assert_close(sim.server, x0 - 0.5 * d - 0.5 * 1.9 * d)
    assert "momentum" in sim.state_dict()


def test_two_gaussians_and_tanh_mlp(registered):
    ds = load_dataset("two_gaussians", num_clients=4, samples=8, dim=3)
    assert ds.num_clients == 4 and ds.input_shape == (3,) and len(ds.y_train) == 32 and len(ds.y_test) == 8
    assert torch.equal(ds.x_train, load_dataset("two_gaussians", num_clients=4, samples=8, dim=3).x_train)
    assert default_model("two_gaussians") == "logreg" and label("two_gaussians") == "Two Gaussians"
    assert data_available("two_gaussians") == (True, "")
    model = build_model("tanh_mlp", (3,), 2, torch_generator(0, "model_init"))
    assert sum(p.numel() for p in model.parameters()) == 3 * 16 + 16 + 16 * 2 + 2


def test_all_four_run_through_the_runner(registered):
    df = run(RunConfig(**TINY))
    test = df[(df.split == "test") & (df.metric == "accuracy")]
    assert len(test) >= 3 and test.value.between(0, 1).all()
    last = df[df.time == df.time.max()].iloc[0]
    dim = 2 * 16 + 16 + 16 * 2 + 2  # tanh_mlp on 2-dim inputs
    # FedAvg: every round, each of the 3 sampled clients uploads dim sign bits + a 32-bit scale
    assert last.bits_up == last.server_steps * 3 * (dim + 32) and last.server_steps > 0
    assert df.equals(run(RunConfig(**TINY)))  # same seed, same table


NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "extend.ipynb"


def test_notebook_is_thin_clean_and_registers_each_example():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)  # committed without outputs
    assert "parameters" in code[0].metadata.get("tags", [])
    assert sum(len(c.source.splitlines()) for c in code) <= 50  # thin: the logic lives in examples/ and qafl_core
    text = "\n".join(c.source for c in code)
    for line in ('register_algorithm("fedavg_momentum", FedAvgMomentum)', 'register_quantizer("sign", ',
                 'register_dataset("two_gaussians", load_two_gaussians', 'register_model("tanh_mlp", tanh_mlp)'):
        assert line in text


@pytest.mark.slow
def test_notebook_runs(tmp_path, registered, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.delenv("MPLBACKEND", raising=False)   # CI sets Agg; the kernel's inline backend shows the figure
    out = tmp_path / "extend.out.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"time_limit": 40.0, "seeds": 1},
                               cwd=str(NOTEBOOK.parent), progress_bar=False, kernel_name="python3")
    nb = nbformat.read(out, as_version=4)
    assert any(o.get("output_type") == "display_data" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
