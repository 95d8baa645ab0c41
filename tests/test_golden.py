"""Golden results: the sha256 of the results table (CSV bytes) of short fixed-seed runs.

Each case is a small run of :func:`qafl_core.runner.run` covering one algorithm x quantizer x task corner:
QuAFL, FedAvg, FedBuff, FedAsync and QAFeL; identity, lattice and QSGD messages; logistic regression on the
embedded Synthetic data, the heterogeneous quadratics, and the paper code's Fashion-MNIST CNN (BatchNorm and
dropout) on tiny random 28x28 data; batched local SGD on and off.  Any change that moves a single bit of a
single number fails here, by name.

The hashes are recorded, not derived: when a change is *meant* to move results, regenerate them with
``PYTHONPATH=$PWD python3 tests/test_golden.py`` (it prints the ``GOLDEN`` table to paste below) and say in
the commit message why the numbers moved.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from qafl_core import runner
from qafl_core.local import NeuralTask

sys.path.insert(0, str(Path(__file__).parent))

_SYN = {"dataset": "synthetic", "dataset_options": {"num_tasks": 12}, "batch_size": 4, "sit": 1.0,
        "time_limit": 30.0, "eval_every": 10.0, "clients_per_round": 3, "local_steps": 3, "progress": False}
_QUAD = {"dataset": "quadratic", "num_clients": 8, "dataset_options": {"dim": 50}, "sit": 1.0, "time_limit": 40.0,
         "eval_every": 10.0, "clients_per_round": 3, "local_steps": 3, "progress": False}
_CNN = {"dataset": "fmnist", "model": "fmnist_cnn", "num_clients": 4, "batch_size": 4, "sit": 4.0, "time_limit": 6.0,
        "eval_every": 3.0, "clients_per_round": 2, "local_steps": 2, "lr": 0.05, "fast_mean": 0.5,
        "slow_mean": 1.0, "progress": False}

CASES = {
    "quafl-identity-synthetic": {**_SYN, "algorithm": "quafl"},
    "quafl-lattice-synthetic-batched": {**_SYN, "algorithm": "quafl", "quantizer": "lattice", "bits": 10,
                                        "lattice_eps": 1e-3, "batched_clients": True},
    "fedavg-qsgd-synthetic-batched": {**_SYN, "algorithm": "fedavg", "quantizer": "qsgd", "bits": 6,
                                      "batched_clients": True},
    "fedbuff-lattice-quadratic": {**_QUAD, "algorithm": "fedbuff", "quantizer": "lattice", "bits": 10,
                                  "lattice_eps": 1e-3, "staleness": "sqrt"},
    "fedasync-qsgd-synthetic": {**_SYN, "algorithm": "fedasync", "quantizer": "qsgd", "bits": 8,
                                "fedasync_rho": 0.1, "fedasync_staleness": "poly", "concurrency": 6},
    "qafel-qsgd-quadratic": {**_QUAD, "algorithm": "qafel", "quantizer": "qsgd", "bits": 4,
                             "server_quantizer": "topk", "server_bits": 8},
    "quafl-lattice-cnn-bn-dropout": {**_CNN, "algorithm": "quafl", "quantizer": "lattice", "bits": 12,
                                     "lattice_eps": 1e-3},
    "fedavg-identity-cnn-bn-dropout": {**_CNN, "algorithm": "fedavg"},
}

#: case -> sha256 of ``run(config).to_csv(index=False)``; regenerate as the module docstring says
GOLDEN = {
    "fedasync-qsgd-synthetic": "a68b40a1235fedded1c81b7e570f64cd3ef4f25ad09969c7a25e70043d7b3da0",
    "fedavg-identity-cnn-bn-dropout": "7f6be3ee48a1e7119148933abd05945eb5e0a2a7a5f9d3a87a9a51f8e00644d3",
    "fedavg-qsgd-synthetic-batched": "f5366f08d65e01284e60e76a9e7baf66cda72a0a5953f84e5683778582787e38",
    "fedbuff-lattice-quadratic": "870c939cb634d8e9cfd6f60f5b38b56dc4b540f27887736e97ff15bccf88e8ba",
    "qafel-qsgd-quadratic": "720e6dabeda0fddae2e8b15f8efce20c79ee637e19f63860ba9e457a85e4d7be",
    "quafl-identity-synthetic": "a6800cf0f251575128dadd8fd2973f75e9786b06a54b4e86ce01048aa76bb528",
    "quafl-lattice-cnn-bn-dropout": "79e82047121b6cc9aa0ee9bb657c9c06228f2605a175a98271d4e48646202813",
    "quafl-lattice-synthetic-batched": "555fe1d99ac93072c36e937a2f8a3475ae91d8fed10e3c21c7fa0fbb368afb79",
}


def _tiny_images(cfg):
    """4 clients of random 28x28 'images' (FEMNIST-shaped random data of the benchmarks, 10 classes)."""
    from qafl_bench.workloads import random_dataset

    ds = random_dataset("fmnist", cfg.num_clients, 12, (1, 28, 28), 10, seed=1)
    return NeuralTask(ds, "fmnist_cnn", cfg.seed, cfg.batch_size, cfg.eval_max_samples, cfg.eval_batch_size)


def table_hash(case: str, **changes) -> str:
    """sha256 of the results table of ``CASES[case]`` (with ``changes`` to its config)."""
    config = {**CASES[case], **changes}
    build = runner.build_task
    if config["dataset"] == "fmnist":       # no Fashion-MNIST files needed: the task is built on random images
        runner.build_task = _tiny_images
    try:
        df = runner.run(config)
    finally:
        runner.build_task = build
    return hashlib.sha256(df.to_csv(index=False).encode()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_results_table_is_bit_identical(case):
    assert case in GOLDEN, f"{case}: no recorded hash (regenerate: see the module docstring)"
    assert table_hash(case) == GOLDEN[case], (
        f"{case}: the results table changed; if that is intended, regenerate GOLDEN (module docstring)")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["quafl-lattice-synthetic-batched", "quafl-lattice-cnn-bn-dropout",
                                  "fedbuff-lattice-quadratic"])
def test_compiled_quantizer_kernels_give_the_golden_results(case, monkeypatch):
    """The same runs with every quantizer kernel compiled (QAFL_QUANT_COMPILE=on; by default only vectors of
    2**20 coordinates or more compile): the fused send that adds into the server's sum and the client's
    decode-and-average in one pass must not move a bit (and must have run)."""
    from qafl_core.quantize import kernels

    ran = []
    real = kernels.run_compiled
    monkeypatch.setattr(kernels, "run_compiled", lambda fn, *a: ran.append(fn.__name__) or real(fn, *a))
    with kernels.compiling("on"):
        assert table_hash(case) == GOLDEN[case]
    assert kernels.compile_status()["failed"] is None
    fused = {"_send_math", "_decode_mix_math"} if case.startswith("quafl") else {"_send_math"}
    assert fused <= set(ran), sorted(set(ran))


if __name__ == "__main__":
    print("GOLDEN = {")
    for name in sorted(CASES):
        print(f'    "{name}": "{table_hash(name)}",')
    print("}")
