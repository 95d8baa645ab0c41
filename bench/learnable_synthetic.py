"""Is an embedded Synthetic configuration learnable?  The numbers behind data/README.md "Synthetic: which one".

For the dataset options given as JSON (default: ``{"preset": "learnable"}``) and the 20 clients a run with
``num_clients = 20`` selects, it prints: the majority-class rate of the pooled test set; the test accuracy of a
logistic regression trained centrally on the pooled train set (full-batch L-BFGS, 500 iterations, the
suite's ``logreg`` model without bias regularisation); and, in Fig. 4's smoke setting (n = 20, s = 5, K = 5,
25 % slow clients, sit 10, horizon 2000, lr 0.02), the final test accuracy (mean of the last 3 evaluations,
mean ± std over seeds) and the CPU seconds per run of QuAFL (32-bit and lattice:12), FedAvg and the single
slow node.

    PYTHONPATH=. python bench/learnable_synthetic.py '{"preset": "learnable"}' --seeds 0,1,2
    PYTHONPATH=. python bench/learnable_synthetic.py '{}'              # LEAF's default Synthetic
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from qafl_core.config import RunConfig
from qafl_core.runner import build_dataset, run

FIG4 = dict(dataset="synthetic", num_clients=20, clients_per_round=5, local_steps=5, slow_fraction=0.25, sit=10.0,
            time_limit=2000.0, eval_every=100.0, progress=False)
VARIANTS = {"QuAFL 32-bit": dict(algorithm="quafl"),
            "QuAFL lattice:12": dict(algorithm="quafl", quantizer="lattice", bits=12),
            "FedAvg 32-bit": dict(algorithm="fedavg"),
            "single slow node": dict(algorithm="fedavg", clients_per_round=1, local_steps=1, sit=0.0,
                                     slow_fraction=1.0)}


def central_logreg(ds) -> tuple[float, float]:
    """(train, test) accuracy of a multinomial logistic regression fitted on the pooled train set."""
    x, y = ds.x_train.double(), ds.y_train
    w = torch.zeros(x.shape[1], ds.num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(ds.num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = lambda xx, yy: float(((xx.double() @ w + b).argmax(1) == yy).double().mean())  # noqa: E731
        return acc(ds.x_train, ds.y_train), acc(ds.x_test, ds.y_test)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("options", nargs="?", default='{"preset": "learnable"}', help="dataset_options as JSON")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lr", type=float, default=0.02)
    args = p.parse_args()
    opts, seeds = json.loads(args.options), [int(s) for s in args.seeds.split(",")]
    ds = build_dataset(RunConfig(**{**FIG4, "dataset_options": opts}))
    majority = float(torch.bincount(ds.y_test).max()) / len(ds.y_test)
    tr, te = central_logreg(ds)
    print(f"dataset_options={opts}: {ds.num_clients} clients, {len(ds.y_train)} train / {len(ds.y_test)} test, "
          f"{ds.num_classes} classes")
    print(f"majority class (test) {majority:.3f}; central logistic regression train {tr:.3f} test {te:.3f}")
    for name, over in VARIANTS.items():
        finals, cpu = [], []
        for seed in seeds:
            o = {**opts, "pool": True} if name == "single slow node" else opts
            cfg = RunConfig(**{**FIG4, **over, "lr": args.lr, "seed": seed, "dataset_options": o})
            t = time.process_time()
            df = run(cfg)
            cpu.append(time.process_time() - t)
            acc = df[(df.split == "test") & (df.metric == "accuracy")].value.to_numpy()
            finals.append(float(acc[-3:].mean()))
        print(f"{name:17s} final accuracy {np.mean(finals):.3f} ± {np.std(finals):.3f} "
              f"(seeds {', '.join(f'{f:.3f}' for f in finals)}), CPU {np.median(cpu):.1f} s per run")


if __name__ == "__main__":
    main()
