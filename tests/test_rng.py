"""Identical reruns (issue 6, item 1): one root seed drives every random stream through named generators
(:mod:`qafl_core.rng`), so

* three runs of one config give identical results tables (QuAFL, FedAvg, FedBuff; qsgd and lattice;
  LEAF Synthetic restricted to a few clients, and the quadratic problem), also across processes with
  different hash seeds;
* different seeds give different tables;
* seeding or consuming the global torch / numpy / ``random`` generators changes nothing, and a run leaves
  their states untouched;
* no module of ``qafl_core`` calls a global RNG — checked statically on the syntax tree (aliases and
  ``from`` imports resolved), reporting ``file:line``.
"""
from __future__ import annotations

import ast
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from qafl_core.config import RunConfig
from qafl_core.runner import run

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "qafl_core"

SYNTH = dict(dataset="synthetic", dataset_options={"num_tasks": 30}, num_clients=6, clients_per_round=3, sit=1.0,
             time_limit=40.0, eval_every=10.0, batch_size=8, progress=False)
QUAD = dict(dataset="quadratic", num_clients=8, clients_per_round=3, sit=1.0, time_limit=40.0, eval_every=10.0,
            lr=0.05, progress=False)
QUANT = {"qsgd": dict(quantizer="qsgd", bits=4), "lattice": dict(quantizer="lattice", bits=10, lattice_eps=1e-3)}
CASES = [(task, alg, q) for task in ("synthetic", "quadratic") for alg in ("quafl", "fedavg", "fedbuff")
         for q in QUANT]


def _cfg(task: str, algorithm: str, quant: str, **kw) -> RunConfig:
    base = SYNTH if task == "synthetic" else QUAD
    return RunConfig(algorithm=algorithm, **{**base, **QUANT[quant], **kw})


@pytest.mark.parametrize("task,algorithm,quant", CASES)
def test_three_runs_identical_and_seeds_differ(task, algorithm, quant):
    cfg = _cfg(task, algorithm, quant)
    a, b, c = run(cfg), run(cfg), run(cfg)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pd.testing.assert_frame_equal(a, c, check_exact=True)
    assert a.server_steps.max() > 0 and a.local_steps.max() > 0 and a.bits_up.max() > 0
    other = run(cfg.replace(seed=1))
    test_a, test_o = a[a.split == "test"], other[other.split == "test"]
    assert not test_a.value.reset_index(drop=True).equals(test_o.value.reset_index(drop=True))


@pytest.mark.parametrize("task,algorithm", [("synthetic", "quafl"), ("synthetic", "fedbuff"), ("quadratic", "fedavg")])
def test_global_rngs_neither_matter_nor_move(task, algorithm):
    cfg = _cfg(task, algorithm, "qsgd")
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ref = run(cfg)
    for seed in (1, 12345):
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        torch.rand(7), np.random.rand(3), random.random()  # move the global streams too
        states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        got = run(cfg)
        pd.testing.assert_frame_equal(ref, got, check_exact=True)
        # a run draws nothing from the global generators
        assert torch.equal(states[0], torch.get_rng_state())
        after = np.random.get_state()
        assert states[1][0] == after[0] and np.array_equal(states[1][1], after[1]) and states[1][2:] == after[2:]
        assert states[2] == random.getstate()


_SCRIPT = """
import sys
from qafl_core.config import RunConfig
from qafl_core.runner import run
for k, d in enumerate({cfgs!r}):
    run(RunConfig.from_dict(d), out_dir=sys.argv[1] + f"/run{{k}}")
"""


@pytest.mark.slow
def test_identical_across_processes_and_hash_seeds(tmp_path):
    """A fresh interpreter (another PYTHONHASHSEED, so other set/dict-of-str orders) gives the same bytes."""
    cfgs = [_cfg("synthetic", "quafl", "lattice"), _cfg("quadratic", "fedbuff", "qsgd")]
    for k, c in enumerate(cfgs):
        run(c, out_dir=tmp_path / "here" / f"run{k}")
    script = _SCRIPT.format(cfgs=[c.to_dict() for c in cfgs])
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs, "PYTHONPATH": str(REPO)}
        done = subprocess.run([sys.executable, "-c", script, str(tmp_path / hs)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        for k in range(len(cfgs)):
            assert (tmp_path / hs / f"run{k}" / "results.csv").read_bytes() == \
                (tmp_path / "here" / f"run{k}" / "results.csv").read_bytes(), f"config {k}, PYTHONHASHSEED={hs}"


# ---------------------------------------------------------------------- static check: no global RNG calls
_NP_ALLOWED = {"default_rng", "RandomState", "Generator", "SeedSequence", "BitGenerator", "PCG64", "PCG64DXSM",
               "MT19937", "Philox", "SFC64"}
_STDLIB_ALLOWED = {"Random", "SystemRandom"}  # local instances; SystemRandom is not reproducible but not global
_TORCH_SAMPLERS = {"rand", "randn", "randint", "randperm", "rand_like", "randn_like", "randint_like", "normal",
                   "bernoulli", "multinomial", "poisson", "binomial"}
_TORCH_GLOBAL = {"manual_seed", "seed", "initial_seed", "set_rng_state", "get_rng_state", "fork_rng"}
_TENSOR_INPLACE = {"uniform_", "normal_", "exponential_", "bernoulli_", "random_", "geometric_", "cauchy_",
                   "log_normal_"}
_INIT_DETERMINISTIC = {"ones_", "zeros_", "constant_", "eye_", "dirac_", "calculate_gain"}
_DROPOUT = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "rrelu",
            "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "RReLU"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted module path for ``import x [as y]`` and ``from x import y [as z]``."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _has_generator(call: ast.Call) -> bool:
    for kw in call.keywords:
        if kw.arg == "generator":
            return not (isinstance(kw.value, ast.Constant) and kw.value.value is None)
        if kw.arg is None:  # **kwargs: cannot tell, assume the author passes one
            return True
    return False


def global_rng_calls(source: str, filename: str = "<string>") -> list[str]:
    """``file:line: call`` for every call of a global random generator in ``source``."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func, aliases)
        attr = node.func.attr if isinstance(node.func, ast.Attribute) else None
        why = None
        if name is not None:
            head, _, last = name.rpartition(".")
            if head == "random" and last not in _STDLIB_ALLOWED:
                why = "stdlib random module"
            elif head == "numpy.random":
                if last not in _NP_ALLOWED:
                    why = "numpy global RandomState"
                elif last in ("default_rng", "RandomState") and not node.args and not node.keywords:
                    why = "unseeded generator"
            elif head in ("torch", "torch.random", "torch.cuda") and (last in _TORCH_GLOBAL
                                                                      or last.startswith("manual_seed")):
                why = "torch global RNG state"
            elif head in ("torch", "torch.special") and last in _TORCH_SAMPLERS and not _has_generator(node):
                why = "torch sampler without generator="
            elif head == "torch.nn.init" and last not in _INIT_DETERMINISTIC and not _has_generator(node):
                why = "nn.init without generator="
            elif head in ("torch", "torch.nn", "torch.nn.functional") and last in _DROPOUT:
                why = "dropout/rrelu draw from the global RNG (use models.GenDropout)"
        if why is None and name is None and attr in _TENSOR_INPLACE and not _has_generator(node):
            why = f"Tensor.{attr} without generator="
        if why:
            found.append(f"{filename}:{node.lineno}: {ast.unparse(node.func)}(...) — {why}")
    return found


def test_checker_catches_what_it_should():
    bad = """
import random, torch
import numpy as np
import numpy.random as npr
from numpy import random as nr
from random import shuffle
from torch import randn
import torch.nn as nn
import torch.nn.functional as F
random.seed(1); random.random(); shuffle([1])
np.random.seed(0); np.random.rand(3); npr.normal(); nr.permutation(3); np.random.default_rng()
torch.manual_seed(0); torch.rand(3); randn(2); torch.randperm(4, generator=None); torch.cuda.manual_seed_all(1)
x = torch.empty(3).uniform_(); nn.init.kaiming_uniform_(x); nn.Dropout(0.5); F.dropout(x)
"""
    hits = global_rng_calls(bad, "bad.py")
    lines = sorted(int(h.split(":")[1]) for h in hits)
    assert lines == [10] * 3 + [11] * 5 + [12] * 5 + [13] * 4, "\n".join(hits)
    good = """
import random, torch
import numpy as np
g = torch.Generator(); g.manual_seed(3)
rs = np.random.RandomState(5); rs.normal(); rng = np.random.default_rng(7); rng.normal()
r = random.Random(4); r.shuffle([1]); r.random()
torch.rand(3, generator=g); torch.randperm(4, generator=g); torch.empty(2).exponential_(1.0, generator=g)
torch.nn.init.zeros_(torch.empty(2)); torch.nn.init.normal_(torch.empty(2), generator=g)
torch.randn(2, **{"generator": g})
"""
    assert global_rng_calls(good, "good.py") == []


def test_no_global_rng_calls_in_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10
    hits = [h for f in files for h in global_rng_calls(f.read_text(), str(f.relative_to(REPO)))]
    assert not hits, "global RNG calls in qafl_core (use qafl_core.rng named generators):\n" + "\n".join(hits)
