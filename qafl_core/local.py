"""The local SGD every algorithm shares, and server-model evaluation.

A :class:`Task` is what the algorithms see of a learning problem: a vector dimension, an initial
vector, ``local_sgd(row, client, steps, lr)`` that trains a client's flat vector *in place*, and
``evaluate(vector)``.  :class:`NeuralTask` implements it for a model + :class:`FederatedDataset`;
``qafl_core.theory.QuadraticTask`` implements it for the heterogeneous quadratics of docs/algorithm.md#what-the-suite-checks-numerically.

The algorithms train several clients with one call, :meth:`NeuralTask.train_many` (per-client callbacks before
and after each client's steps); the task trains them one by one, or together (``batched_clients``:
:mod:`qafl_core.batched`), and the algorithms cannot tell which. Mini-batches come from per-client streams
(:class:`qafl_core.batches.ClientBatcher`), so a client's batches do not depend on when or how often other
clients train, nor on whether it trains alone or batched.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call

from qafl_core.batched import local_sgd_many, supports_batched
from qafl_core.batches import ClientBatcher
from qafl_core.data.federated import FederatedDataset
from qafl_core.divergence import Diverged
from qafl_core.params import FlatModel
from qafl_core.rng import torch_generator

__all__ = ["ClientBatcher", "Diverged", "NeuralTask", "Task", "train_one_by_one"]


class Task(Protocol):
    dim: int
    # optional: ``num_params``, the number of leading coordinates that are parameters (the rest are BatchNorm
    # statistics, which the server averages instead of stepping); without it every coordinate is a parameter
    segments: list[int]
    num_clients: int

    def init_vector(self) -> torch.Tensor: ...
    def local_sgd(self, row: torch.Tensor, client: int, num_steps: int, lr: float) -> None: ...
    # optional: ``train_many(clients, prepare, finish)`` (NeuralTask.train_many); without it the simulation
    # trains one by one (train_one_by_one)
    def evaluate(self, vec: torch.Tensor) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


#: ``prepare(j) -> (row, num_steps, lr)`` and ``finish(j)`` of :meth:`NeuralTask.train_many`
Prepare = Callable[[int], "tuple[torch.Tensor, int, float]"]
Finish = Callable[[int], None]


def train_one_by_one(task, clients: Sequence[int], prepare: Prepare, finish: Finish | None = None) -> None:
    """:meth:`NeuralTask.train_many` one client at a time, with ``task.local_sgd`` (any :class:`Task`; a client
    with no step to take is not trained at all)."""
    for j, c in enumerate(clients):
        row, k, lr = prepare(j)
        if k:
            task.local_sgd(row, c, k, lr)
        if finish is not None:
            finish(j)


class NeuralTask:
    """A neural network on a federated dataset, trained with plain SGD on flat vectors.

    Args:
        dataset: the clients' data (held in memory).
        model_name: a name from :data:`qafl_core.models.MODELS`.
        seed: root seed (model init, batches, evaluation subset).
        batch_size: local mini-batch size.
        eval_max_samples: evaluate on a fixed seeded subset of the pooled test set (None: all of it).
        eval_batch_size: evaluation batch size (no effect on results).
        optimizer: the clients' optimizer, ``sgd`` or ``adam`` (:mod:`qafl_core.optim`).
        momentum: SGD momentum.
        weight_decay: L2 penalty of either optimizer.
        device: where the data, the model and the training and evaluation run (:mod:`qafl_core.device`); the
            model is initialised on the CPU and moved, so it starts from the same weights on every device, and
            mini-batch indices are drawn on the CPU, so a client trains on the same batches on every device.
    """

    def __init__(self, dataset: FederatedDataset, model_name: str, seed: int, batch_size: int,
                 eval_max_samples: int | None = None, eval_batch_size: int = 1024, optimizer: str = "sgd",
                 momentum: float = 0.0, weight_decay: float = 0.0, device: torch.device | str = "cpu"):
        from qafl_core.models import build_model, set_dropout_generator
        from qafl_core.optim import ClientOptimizers, is_plain_sgd

        self.dataset = dataset
        self.num_clients = dataset.num_clients
        self.device = torch.device(device)
        self.module = build_model(model_name, dataset.input_shape, dataset.num_classes,
                                  generator=torch_generator(seed, "model_init")).to(self.device)
        self.flat = FlatModel(self.module)
        self.dim = self.flat.dim
        self.num_params = self.flat.num_params      # the vector's first num_params coordinates; then BN statistics
        self.segments = self.flat.segments
        self.batcher = ClientBatcher(dataset.train_counts(), batch_size, seed)
        self.offsets = [int(o) for o in dataset.train_offsets]
        # the training data where the model is (on the CPU: the dataset's own tensors, no copy)
        self.x_train, self.y_train = dataset.x_train.to(self.device), dataset.y_train.to(self.device)
        self._dropout_gen = torch_generator(seed, "dropout", device=self.device)
        set_dropout_generator(self.module, self._dropout_gen)
        n_test = len(dataset.y_test)
        if n_test == 0:
            raise ValueError(f"{dataset.name}: the dataset has no test samples to evaluate on")
        if eval_max_samples is not None and eval_max_samples < n_test:
            idx = torch.randperm(n_test, generator=torch_generator(seed, "eval_subset"))[:eval_max_samples]
            self.eval_x, self.eval_y = dataset.x_test[idx].to(self.device), dataset.y_test[idx].to(self.device)
            self._eval_client = self._eval_counts = None          # no per-client metrics on a subset
        else:
            self.eval_x, self.eval_y = dataset.x_test.to(self.device), dataset.y_test.to(self.device)
            counts = dataset.test_counts()
            self._eval_client = torch.repeat_interleave(torch.arange(len(counts)), counts)   # (n_test,) owner
            self._eval_counts = counts.double()
        self.eval_batch_size = eval_batch_size
        #: train the clients of :meth:`train_many` together with :meth:`local_sgd_many` (``batched_clients``)
        self.batched = False
        #: each client's persistent optimizer state; None for plain SGD (stateless: the fused update below)
        self.optimizers = (None if is_plain_sgd(optimizer, momentum, weight_decay)
                           else ClientOptimizers(optimizer, momentum, weight_decay))

    def init_vector(self) -> torch.Tensor:
        return self.flat.vector_from_module().to(self.device)

    def local_sgd(self, row: torch.Tensor, client: int, num_steps: int, lr: float) -> None:
        """``num_steps`` optimizer steps of ``client`` on its flat vector ``row``, updated in place.

        Plain SGD by default; with :attr:`optimizers` the client's own ``torch.optim`` state (momentum, Adam
        moments) carries over from its previous contacts."""
        if num_steps <= 0:
            return
        params, state = self.flat.leaf_views(row)
        self.module.train()
        base = self.offsets[client]
        opt = self.optimizers.bind(client, params, lr) if self.optimizers is not None else None
        with self.flat.bind(state) as module:   # the module computes on row's views for all the steps
            for _ in range(num_steps):
                idx = (self.batcher.next(client) + base).to(self.device)   # drawn on the CPU (class docstring)
                # index_select: a third of the time of x[idx]
                loss = F.cross_entropy(module(self.x_train.index_select(0, idx)), self.y_train.index_select(0, idx))
                value = loss.item()
                if not math.isfinite(value):
                    raise Diverged(f"client {client}: training loss became {value}")
                grads = torch.autograd.grad(loss, params)
                if opt is not None:
                    for p, g in zip(params, grads):
                        p.grad = g
                    opt.step()
                    continue
                with torch.no_grad():
                    torch._foreach_add_(params, grads, alpha=-lr)

    def train_many(self, clients: Sequence[int], prepare: Prepare, finish: Finish | None = None) -> None:
        """Local SGD of several clients, one by one or batched (:attr:`batched`); the caller cannot tell.

        Args:
            clients: the clients to train, in order.
            prepare: ``prepare(j) -> (row, num_steps, lr)``, called before ``clients[j]`` trains: its flat vector
                (trained in place), its step count and its step size.
            finish: ``finish(j)``, called once ``clients[j]``'s row is trained.

        One by one, ``prepare(j)``, the steps and ``finish(j)`` run client after client (:func:`train_one_by_one`);
        batched, every ``prepare`` runs first, then one :meth:`local_sgd_many` call, then every ``finish``. Both
        give the same results up to the batched kernels' float rounding, provided that a client's callbacks
        touch only that client's own data (its row, its messages), which is what the algorithms do.
        """
        if not self.batched:
            return train_one_by_one(self, clients, prepare, finish)
        jobs = [prepare(j) for j in range(len(clients))]
        self.local_sgd_many([r for r, _, _ in jobs], list(clients), [k for _, k, _ in jobs], [lr for _, _, lr in jobs])
        if finish is not None:
            for j in range(len(clients)):
                finish(j)

    def local_sgd_many(self, rows: list[torch.Tensor], clients: list[int], num_steps: list[int],
                       lrs: list[float]) -> None:
        """:meth:`local_sgd` of several clients at once, batched (:mod:`qafl_core.batched`); results equal the
        sequential ones up to float rounding (same mini-batches, same dropout masks)."""
        local_sgd_many(self, rows, clients, num_steps, lrs)

    @property
    def supports_batched(self) -> bool:
        """Whether :meth:`local_sgd_many` supports this model (every model of :data:`qafl_core.models.MODELS`)
        and optimizer (plain SGD only)."""
        return self.optimizers is None and supports_batched(self.module)

    @torch.no_grad()
    def evaluate(self, vec: torch.Tensor) -> dict[str, float]:
        """Accuracy and mean cross-entropy of the model ``vec`` on the pooled test set."""
        return self.evaluate_with_clients(vec)[0]

    @torch.no_grad()
    def evaluate_with_clients(self, vec: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
        """Pooled test metrics of ``vec`` and, from the same forward pass, LEAF's per-client summary.

        Returns:
            ``(pooled, clients)``: ``pooled`` = accuracy and mean cross-entropy over the pooled test set
            (sample-weighted, as LEAF's headline accuracy); ``clients`` = the 10th, 50th and 90th percentiles
            over clients (with at least one test sample) of each client's own accuracy and loss
            (``accuracy_p10`` ... ``loss_p90``, numpy's linear interpolation, as LEAF reports them).
            ``clients`` is empty when the evaluation uses a subset of the test set (``eval_max_samples``).
        """
        self.module.eval()
        state = self.flat.views(vec)
        n = len(self.eval_y)
        # per-sample results are gathered on the CPU (exact float64 sums there, on every device)
        correct = torch.empty(n, dtype=torch.float64)
        losses = torch.empty(n, dtype=torch.float64)
        for a in range(0, n, self.eval_batch_size):
            x, y = self.eval_x[a:a + self.eval_batch_size], self.eval_y[a:a + self.eval_batch_size]
            out = functional_call(self.module, state, (x,), strict=False)
            losses[a:a + len(y)] = F.cross_entropy(out, y, reduction="none")
            correct[a:a + len(y)] = (out.argmax(1) == y)
        pooled = {"accuracy": float(correct.sum()) / n, "loss": float(losses.sum()) / n}
        if self._eval_client is None:
            return pooled, {}
        counts = self._eval_counts
        acc = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, self._eval_client, correct)
        loss = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, self._eval_client, losses)
        has = counts > 0
        acc, loss = (acc[has] / counts[has]).numpy(), (loss[has] / counts[has]).numpy()
        clients = {}
        for name, values in (("accuracy", acc), ("loss", loss)):
            for q in (10, 50, 90):
                clients[f"{name}_p{q}"] = float(np.percentile(values, q))
        return pooled, clients

    def state_dict(self) -> dict[str, Any]:
        state = {"batcher": self.batcher.state_dict(), "dropout": self._dropout_gen.get_state()}
        if self.optimizers is not None:
            state["optimizers"] = self.optimizers.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batcher.load_state_dict(state["batcher"])
        self._dropout_gen.set_state(state["dropout"])
        if self.optimizers is not None:
            if "optimizers" not in state:
                raise ValueError("optimizer: the checkpoint holds no optimizer state for this run")
            self.optimizers.load_state_dict(state["optimizers"], self.device)
