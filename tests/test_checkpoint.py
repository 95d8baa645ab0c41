"""checkpoint.pt (qafl_core/checkpoint.py): the run identity, the simulation state and the results so far, as plain
data; refused when it belongs to another run or holds another algorithm's state."""
from __future__ import annotations

import pytest
import torch

from qafl_core import checkpoint
from qafl_core.algorithms import ALGORITHMS
from qafl_core.config import RunConfig
from qafl_core.fingerprint import run_identity
from qafl_core.runner import build_simulation, run

CFG = RunConfig(dataset="quadratic", num_clients=6, clients_per_round=2, sit=0.5, lr=0.05, progress=False,
                time_limit=20.0, eval_every=5.0)


@pytest.fixture
def written(tmp_path):
    run(CFG, out_dir=tmp_path, checkpoint_every=4.0)
    return tmp_path / checkpoint.FILE


def test_layout_is_the_dataclasses_fields(written):
    plain = torch.load(written, weights_only=True)
    ident = run_identity(CFG)
    assert plain["version"] == checkpoint.VERSION and plain["algorithm"] == "quafl"
    assert {k: plain[k] for k in ident.to_dict()} == ident.to_dict()
    assert list(plain["sim"]) == list(build_simulation(CFG).state_dict())
    assert 0 < plain["sim"]["time"] < CFG.time_limit and plain["next_ckpt"] > plain["sim"]["time"]
    ckpt = checkpoint.load(written, ident, ALGORITHMS["quafl"].State)
    assert isinstance(ckpt.sim, ALGORITHMS["quafl"].State) and ckpt.rows == plain["rows"]
    assert ckpt.to_plain()["sim"].keys() == plain["sim"].keys()


def test_another_algorithms_state_is_refused(written):
    with pytest.raises(ValueError, match=rf"{written}: not a checkpoint of this version of the suite \(simulation "
                                         r"state: does not match AsyncState \(missing jobs; unknown base"):
        checkpoint.load(written, run_identity(CFG), ALGORITHMS["fedbuff"].State)


def test_an_older_layout_is_refused(written):
    plain = torch.load(written, weights_only=True)
    torch.save({**plain, "version": 2}, written)
    with pytest.raises(ValueError, match="not a checkpoint of this version"):
        checkpoint.load(written, run_identity(CFG), ALGORITHMS["quafl"].State)
