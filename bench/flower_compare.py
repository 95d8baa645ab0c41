"""Flower's ``run_simulation`` FedAvg round vs this engine's FedAvg round, interleaved in one process.

Workload (issue "Speed"): the paper code's MLP 784-32-10, n = 20 clients, s = 5 sampled per round,
K = 5 local SGD steps of batch 128 (lr 0.05), identity (float32) messages.  Both sides train on the
same MNIST-shaped random data (3000 samples per client, generated from a seed in every process, so
Flower's Ray actors need no data files).

Flower side (Flower >= 1.21 Message API, checked against 1.42): a ``ClientApp`` whose ``train`` loads
the received ``ArrayRecord`` into the model, runs K steps with ``torch.optim.SGD`` and replies with its
weights and ``num-examples``; a ``ServerApp`` running ``flwr.serverapp.strategy.FedAvg`` with
``fraction_train = s/n`` and no federated evaluation; ``run_simulation`` with the Ray backend, one CPU
per client actor.

Interleaving: ``FedAvg.start`` calls ``evaluate_fn`` before the first round and after every round, in
this process; each call times one engine FedAvg round (``qafl_core`` FedAvg, ``sim.step()``).  A Flower
round is the time between two ``evaluate_fn`` calls minus the engine round inside.  The first two
rounds (actor start-up) are not counted.

Run: ``python bench/flower_compare.py [--rounds 12]``; prints one line ``FLOWER_BENCH_JSON {...}``.
Needs ``pip install "flwr[simulation]"`` (the ``bench`` extra of this project).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time

import torch
import torch.nn.functional as F

N, S, K, BATCH, LR, PER_CLIENT, SEED = 20, 5, 5, 128, 0.05, 3000, 0
_DATA: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}


def client_data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client i's MNIST-shaped random samples (the same in every process)."""
    if i not in _DATA:
        from qafl_core.rng import torch_generator

        g = torch_generator(SEED, "flower_bench", i)
        _DATA[i] = (torch.rand(PER_CLIENT, 1, 28, 28, generator=g), torch.randint(0, 10, (PER_CLIENT,), generator=g))
    return _DATA[i]


def new_model() -> torch.nn.Module:
    from qafl_core.models import build_model
    from qafl_core.rng import torch_generator

    return build_model("mlp", (1, 28, 28), 10, generator=torch_generator(SEED, "model_init"))


def engine_simulation():
    """This suite's FedAvg on the same workload (identity messages, no evaluation in the timed part)."""
    from qafl_core.config import RunConfig
    from qafl_core.data.federated import FederatedDataset
    from qafl_core.local import NeuralTask
    from qafl_core.runner import build_simulation

    parts = [client_data(i) for i in range(N)]
    ds = FederatedDataset.from_clients("mnist", [str(i) for i in range(N)], parts, [(x[:10], y[:10]) for x, y in parts], 10)
    cfg = RunConfig(dataset="mnist", algorithm="fedavg", clients_per_round=S, local_steps=K, batch_size=BATCH, lr=LR,
                    time_limit=1e12, progress=False)
    return build_simulation(cfg, NeuralTask(ds, "mlp", SEED, BATCH))


def build_apps(rounds: int, record: dict):
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        x, y = client_data(int(context.node_config["partition-id"]))
        net = new_model()
        net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = torch.optim.SGD(net.parameters(), lr=LR)
        net.train()
        g = torch.Generator().manual_seed(int(context.node_config["partition-id"]))
        for _ in range(K):
            idx = torch.randint(0, len(y), (BATCH,), generator=g)
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
        content = RecordDict({"arrays": ArrayRecord(net.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})})
        return Message(content=content, reply_to=msg)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        sim = engine_simulation()
        marks, engine = record["marks"], record["engine"]

        def evaluate_fn(server_round: int, arrays: ArrayRecord):
            t0 = time.perf_counter()
            threads = torch.get_num_threads()
            torch.set_num_threads(1)                  # what qafl_core.runner uses for models < 200k coordinates
            sim.step()
            torch.set_num_threads(threads)
            t1 = time.perf_counter()
            marks.append((t0, t1))
            engine.append(t1 - t0)
            return None

        strategy = FedAvg(fraction_train=S / N, fraction_evaluate=0.0, min_train_nodes=S, min_available_nodes=N)
        record["start_called"] = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=ArrayRecord(new_model().state_dict()), num_rounds=rounds,
                       evaluate_fn=evaluate_fn)

    return client_app, server_app


def measure(rounds: int = 12, skip: int = 2) -> dict:
    """Run Flower for ``rounds`` rounds with an engine round between each; per-round medians and their ratio."""
    from flwr.simulation import run_simulation

    record: dict = {"marks": [], "engine": []}
    client_app, server_app = build_apps(rounds, record)
    t0 = time.perf_counter()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=N,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                                                 "logging_level": logging.ERROR, "log_to_driver": False}})
    t_end = time.perf_counter()
    total = t_end - t0
    marks = record["marks"]
    flower = [marks[r][0] - marks[r - 1][1] for r in range(1, len(marks))]          # round r: between two calls
    pairs = list(zip(flower, record["engine"][1:]))[skip:]
    if not pairs:
        raise RuntimeError(f"Flower ran {len(marks) - 1} rounds; need more than {skip}")
    return {"flower_round_s": statistics.median(f for f, _ in pairs),
            "engine_round_s": statistics.median(e for _, e in pairs),
            "ratio": statistics.median(f / e for f, e in pairs),
            "rounds_counted": len(pairs), "flower_rounds_s": [round(f, 4) for f in flower],
            "startup_s": marks[0][0] - t0, "shutdown_s": t_end - marks[-1][1], "total_s": total,
            "flower_version": __import__("flwr").__version__,
            "workload": f"MLP 784-32-10, n={N}, s={S}, K={K}, batch {BATCH}, MNIST-shaped random data"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12, help="Flower rounds (the first 2 are not counted)")
    args = ap.parse_args(argv)
    print("FLOWER_BENCH_JSON " + json.dumps(measure(args.rounds)), flush=True)


if __name__ == "__main__":
    main()
