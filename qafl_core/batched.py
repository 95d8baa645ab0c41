"""Batched local SGD: the contacted clients' steps as one batched computation per step.

A simulator's unavoidable cost is the clients' gradient steps (docs/design.md#local-sgd-without-copies). For
small models (logistic regression, the paper code's MLP 784-32-10) a single client's step is a few tiny
matrix products, so per-step framework overhead is a large part of it.  Here the contacted clients'
models are stacked into one ``(m, d)`` work matrix and each step runs every client at once with
``torch.baddbmm``: client ``j``'s weights multiply only client ``j``'s mini-batch.

Results equal the sequential :meth:`qafl_core.local.NeuralTask.local_sgd` up to float rounding (a sum of
per-client mean losses has the per-client gradients; only the summation order inside the kernels
differs): every client draws its mini-batches from its own stream (:class:`qafl_core.batches.ClientBatcher`),
in its own order, so its batches are exactly those of the sequential run; clients with fewer steps
simply stop earlier (they are kept as a prefix of the work matrix, sorted by step count); a short last
batch of an epoch is padded and masked out of the mean.

Models: those in :data:`BATCHED_FORWARDS` (``mlp``, ``logreg``) run the hand-written forwards here; every other
model (CNNs, ResNet-20, the LEAF LSTM; BatchNorm and dropout included) runs through ``torch.func.vmap``
(:mod:`qafl_core.batched_func`, which states how dropout masks and BatchNorm statistics stay those of the
sequential run).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from qafl_core import batched_func
from qafl_core.divergence import Diverged


def _as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.float()


def _linear(p: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """Per-client affine map: ``x`` (m, B, in) with weights (m, out, in) and biases (m, out) -> (m, B, out)."""
    bias = p.get(f"{name}.bias")
    w = p[f"{name}.weight"].transpose(1, 2)
    return torch.bmm(x, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), x, w)


def _mlp_forward(module: nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return _linear(p, "fc2", torch.relu(_linear(p, "fc1", x)))


def _logreg_forward(module: nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    out = _linear(p, "fc", x)
    return torch.sigmoid(out) if module.leaf_sigmoid else out


def _forwards() -> dict[type, Callable]:
    from qafl_core.models import MLP, LogReg

    return {MLP: _mlp_forward, LogReg: _logreg_forward}


#: model class -> batched forward ``f(module, per-client parameter views, x (m, B, features)) -> (m, B, classes)``
BATCHED_FORWARDS: dict[type, Callable] = _forwards()


def supports_batched(module: nn.Module) -> bool:
    """Whether :func:`local_sgd_many` can train ``module`` (every model of :data:`qafl_core.models.MODELS`)."""
    return type(module) in BATCHED_FORWARDS or batched_func.supports(module)


def _batch_indices(task, clients: list[int]) -> tuple[torch.Tensor, int, torch.Tensor | None, torch.Tensor]:
    """Every client's next mini-batch (global sample indices), padded to a common size ``B``.

    Returns ``(index (m*B,), B, mask (m, B) or None when no batch is short, sizes (m,))``.
    """
    idx = [task.batcher.next(c) + task.offsets[c] for c in clients]   # drawn on the CPU, then moved
    dev = task.device
    sizes = [len(i) for i in idx]
    b = max(sizes)
    if min(sizes) == b:
        return torch.cat(idx).to(dev), b, None, torch.tensor(sizes, dtype=torch.float32).to(dev)
    mask = torch.zeros(len(idx), b)
    padded = []
    for j, i in enumerate(idx):
        mask[j, :len(i)] = 1.0
        padded.append(torch.cat([i, i[:1].expand(b - len(i))]))   # any valid sample; masked out of the loss
    return torch.cat(padded).to(dev), b, mask.to(dev), torch.tensor(sizes, dtype=torch.float32).to(dev)


def local_sgd_many(task, rows: list[torch.Tensor], clients: list[int], num_steps: list[int],
                   lrs: list[float]) -> None:
    """``num_steps[j]`` SGD steps of ``clients[j]`` on its flat vector ``rows[j]`` (updated in place), batched.

    Args:
        task: a :class:`qafl_core.local.NeuralTask` whose model :func:`supports_batched`.
        rows: the clients' flat vectors (e.g. rows of the ``(n, d)`` client matrix).
        clients: client indices (their data and mini-batch streams).
        num_steps: steps per client (0: untouched).
        lrs: step size per client.

    Raises:
        ValueError: the model or the optimizer has no batched local SGD, or the lists differ in length.
        qafl_core.divergence.Diverged: a client's training loss became NaN or infinite.
    """
    if not supports_batched(task.module):
        raise ValueError(f"batched_clients: model {type(task.module).__name__} has no batched local SGD "
                         "(recurrent layers other than the LEAF LSTM's, or BatchNorm with momentum=None)")
    if getattr(task, "optimizers", None) is not None:
        raise ValueError(f"batched_clients: batched local steps are plain SGD only (optimizer: "
                         f"{task.optimizers.name}, momentum {task.optimizers.momentum}, weight_decay "
                         f"{task.optimizers.weight_decay})")
    if not len(rows) == len(clients) == len(num_steps) == len(lrs):
        raise ValueError(f"local_sgd_many: rows, clients, num_steps and lrs differ in length "
                         f"({len(rows)}, {len(clients)}, {len(num_steps)}, {len(lrs)})")
    forward = BATCHED_FORWARDS.get(type(task.module))
    if forward is None:
        return batched_func.train(task, rows, clients, num_steps, lrs)
    live = sorted((j for j in range(len(rows)) if num_steps[j] > 0), key=lambda j: -num_steps[j])
    if not live:
        return
    work = torch.stack([rows[j] for j in live])                  # (m, d): clients with most steps first
    neg_lr = torch.tensor([-lrs[j] for j in live], dtype=work.dtype).unsqueeze(1).to(work.device)
    steps = [num_steps[j] for j in live]
    ids = [clients[j] for j in live]
    entries = task.flat.entries
    task.module.train()
    for t in range(steps[0]):
        m = sum(1 for k in steps if k > t)                       # the active clients are a prefix
        index, b, mask, sizes = _batch_indices(task, ids[:m])
        x = _as_float(task.x_train.index_select(0, index)).reshape(m, b, -1)   # index_select: 3x faster than [index]
        y = task.y_train.index_select(0, index)
        views = [work[:m, e.start:e.start + e.numel].view(m, *e.shape) for e in entries]   # (m, *shape) each
        leaves = [v.detach().requires_grad_(True) for v in views]
        out = forward(task.module, {e.name: t for e, t in zip(entries, leaves)}, x)
        ce = F.cross_entropy(out.reshape(m * b, -1), y, reduction="none").view(m, b)
        losses = ce.mean(1) if mask is None else (ce * mask).sum(1) / sizes
        total = losses.sum()
        if not math.isfinite(total.item()):
            j = int((~torch.isfinite(losses.detach())).nonzero()[0])
            raise Diverged(f"client {ids[j]}: training loss became {float(losses[j])}")
        grads = torch.autograd.grad(total, leaves)
        with torch.no_grad():
            for v, g in zip(views, grads):
                v.addcmul_(g, neg_lr[:m].view(m, *([1] * (v.dim() - 1))))
    for j, r in zip(live, work):
        rows[j].copy_(r)
