"""Batched local SGD for any model: ``torch.func.vmap`` over the contacted clients' stacked parameters.

:mod:`qafl_core.batched` trains several clients at once. The MLP and logistic regression have hand-written
batched forwards there; every other model (the CNNs, ResNet-20, the LSTM; BatchNorm and dropout included) runs
here: each step calls ``vmap(functional_call(module, ...))`` over the ``(g, ...)`` slices of the clients' rows,
so client ``j``'s weights see only client ``j``'s mini-batch, and one backward pass of the sum of the clients'
mean losses gives every client its own gradient. The result equals the sequential
:meth:`qafl_core.local.NeuralTask.local_sgd` up to the float rounding of the batched kernels:

* **Mini-batches**: each client draws from its own stream (:class:`qafl_core.batches.ClientBatcher`), so its
  batches are those of the sequential run. Clients whose batches differ in size at a step (the short last batch
  of an epoch) are stepped as separate groups of equal size: a padded batch would change BatchNorm's batch
  statistics.
* **Dropout** (:class:`qafl_core.models.GenDropout`): the masks are drawn before the steps, from the modules'
  own generator, client by client in the order the sequential path trains them and step by step, with the
  shapes the sequential forward would use; so they are the sequential run's masks, bit for bit, and nothing is
  drawn inside ``vmap`` (it runs with ``randomness="error"``, which would refuse a hidden random draw).
* **BatchNorm** in train mode: each client's running statistics are its own slice of its row, passed to
  ``functional_call`` as batched buffers (contiguous copies, since BatchNorm updates them in place) and written
  back after the step; the statistics use the client's own batch only. The normalisation itself is written out
  with two-pass statistics (:func:`_batch_norm_forward`): vmap's own batched BatchNorm differentiates to
  float32 gradients 1e-3 off in relative terms on these CNNs.
* **LSTM**: ``torch.lstm`` has no batching rule, so :class:`qafl_core.models.ShakespeareLSTM` runs with an
  explicit LSTM recursion (PyTorch's gate equations, order i, f, g, o) in :func:`_lstm_model_forward`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from qafl_core.divergence import Diverged
from qafl_core.models import GenDropout, ShakespeareLSTM


def _lstm_model_forward(module: ShakespeareLSTM, state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:meth:`ShakespeareLSTM.forward` for one client (under ``vmap``) with the LSTM written out."""
    lstm = module.lstm
    h = F.embedding(x.long(), state["embedding.weight"])          # (B, L, E)
    length, hidden = h.shape[1], lstm.hidden_size
    for layer in range(lstm.num_layers):
        w_hh = state[f"lstm.weight_hh_l{layer}"].t()
        xs = F.linear(h, state[f"lstm.weight_ih_l{layer}"], state[f"lstm.bias_ih_l{layer}"])   # (B, L, 4H)
        ht = c = None
        outs = []
        for t in range(length):
            gates = xs[:, t] + state[f"lstm.bias_hh_l{layer}"]
            if ht is not None:
                gates = gates + ht @ w_hh
            i, f, g, o = gates.split(hidden, dim=-1)
            c = torch.sigmoid(i) * torch.tanh(g) if c is None else torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            ht = torch.sigmoid(o) * torch.tanh(c)
            outs.append(ht)
        h = torch.stack(outs, 1)
    return F.linear(h[:, -1], state["fc.weight"], state["fc.bias"])


def _batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Train-mode BatchNorm of one client (under vmap) with two-pass statistics.

    The same function as ``F.batch_norm(training=True)``; written out because the backward of vmap's batched
    BatchNorm loses precision in float32 when a channel's mean is large against its spread (seen: relative gradient
    errors of 1e-3 on the FEMNIST-sized CNNs, where the sequential kernel and float64 agree to 1e-7); here the
    centred values are formed first, so autograd differentiates the stable form."""
    dims = [0, *range(2, x.dim())]
    mean = x.mean(dims, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dims, keepdim=True)
    y = xc * torch.rsqrt(var + self.eps)
    shape = [1, -1] + [1] * (x.dim() - 2)
    if self.weight is not None:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    if self.running_mean is not None:                        # the module's running statistics: the client's slice
        n = x.numel() // x.shape[1]
        m = self.momentum
        with torch.no_grad():
            self.running_mean.mul_(1.0 - m).add_(mean.detach().flatten(), alpha=m)
            self.running_var.mul_(1.0 - m).add_(var.detach().flatten() * (n / max(n - 1, 1)), alpha=m)
    return y


def _plain_lstm(module: nn.Module) -> bool:
    lstm = getattr(module, "lstm", None)
    return (isinstance(lstm, nn.LSTM) and lstm.batch_first and not lstm.bidirectional and lstm.dropout == 0
            and lstm.proj_size == 0 and lstm.bias)


#: model class -> (per-client forward ``f(module, state, x)`` usable under vmap, whether it can run ``module``)
FUNC_FORWARDS: dict[type, tuple[Callable, Callable[[nn.Module], bool]]] = {
    ShakespeareLSTM: (_lstm_model_forward, _plain_lstm),
}


def supports(module: nn.Module) -> bool:
    """Whether :func:`train` can run ``module``: any model without recurrent layers (the LEAF LSTM excepted) and
    with momentum BatchNorm only (``momentum=None``, the cumulative average, is not written out here)."""
    special = FUNC_FORWARDS.get(type(module))
    if special is not None and not special[1](module):
        return False
    return not any((isinstance(m, nn.RNNBase) and special is None)
                   or (isinstance(m, nn.modules.batchnorm._BatchNorm) and m.momentum is None)
                   for m in module.modules())


def dropout_calls(task) -> list[tuple[GenDropout, torch.Size]]:
    """The :class:`GenDropout` calls of one training forward, in call order, with each input's per-sample shape.

    Found once per task by an eval-mode forward of one sample (eval mode: nothing is drawn and no BatchNorm
    statistic moves)."""
    calls = getattr(task, "_dropout_calls", None)
    if calls is not None:
        return calls
    calls = []
    mods = [m for m in task.module.modules() if isinstance(m, GenDropout) and m.p != 0.0]
    if mods:
        hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append((mod, args[0].shape[1:]))) for m in mods]
        was_training = task.module.training
        task.module.eval()
        try:
            with torch.no_grad():
                task.module(task.x_train[:1])
        finally:
            for h in hooks:
                h.remove()
            task.module.train(was_training)
        if len({id(m) for m, _ in calls}) != len(calls):
            raise ValueError(f"batched_clients: {type(task.module).__name__} calls a dropout module twice per "
                             "forward; batched local SGD draws one mask per module and step")
    task._dropout_calls = calls
    return calls


def _plan(task, clients, num_steps, order):
    """Every step's mini-batch (global sample indices) and dropout masks, drawn as the sequential path does."""
    calls = dropout_calls(task)
    batches, masks = {}, {}
    for j in order:                                       # the order the sequential path trains the clients
        c = clients[j]
        batches[j], masks[j] = [], []
        for _ in range(num_steps[j]):
            idx = task.batcher.next(c) + task.offsets[c]
            batches[j].append(idx)
            step = []
            for mod, shape in calls:                      # GenDropout.forward's draw, same shape and generator
                if mod.generator is None:
                    raise RuntimeError("GenDropout in training mode needs a generator: call "
                                       "qafl_core.models.set_dropout_generator(model, generator) first")
                step.append(torch.rand((len(idx), *shape), generator=mod.generator, device=task.device) >= mod.p)
            masks[j].append(step)
    return batches, masks, calls


def _step(task, w, idx, b, masks, calls, neg_lr, ids) -> None:
    """One SGD step of the ``g`` clients whose rows are ``w`` (g, d), each on its batch of ``b`` samples."""
    g, module = len(w), task.module
    forward = FUNC_FORWARDS.get(type(module), (None,))[0]
    params, leaves, bufs = {}, {}, {}
    for e in task.flat.entries:
        v = w[:, e.start:e.start + e.numel].view(g, *e.shape)
        if e.is_param:
            params[e.name] = v
            leaves[e.name] = v.detach().requires_grad_(True)
        else:
            bufs[e.name] = v.clone()                      # contiguous: BatchNorm updates it in place
    x = task.x_train.index_select(0, idx)
    x = x.view(g, b, *x.shape[1:])
    y = task.y_train.index_select(0, idx).view(g, b)

    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def loss(p, buf, xj, yj, mj):
        for (mod, _), keep in zip(calls, mj):
            mod.given_keep = keep
        for bn in bns:
            bn.forward = _batch_norm_forward.__get__(bn)
        try:
            state = {**p, **buf}
            out = forward(module, state, xj) if forward else functional_call(module, state, (xj,), strict=False)
        finally:
            for mod, _ in calls:
                mod.given_keep = None
            for bn in bns:
                del bn.forward
        return F.cross_entropy(out, yj)

    try:
        losses = vmap(loss, randomness="error")(leaves, bufs, x, y, masks)
    except RuntimeError as err:
        if "atching rule" not in str(err):
            raise
        raise ValueError(f"batched_clients: model {type(module).__name__} uses an operation torch.func.vmap "
                         f"cannot batch ({err})") from None
    total = losses.sum()
    if not math.isfinite(total.item()):
        j = int((~torch.isfinite(losses.detach())).nonzero()[0])
        raise Diverged(f"client {ids[j]}: training loss became {float(losses[j].detach())}")
    grads = torch.autograd.grad(total, list(leaves.values()))
    with torch.no_grad():
        for v, gr in zip(params.values(), grads):
            v.addcmul_(gr, neg_lr.view(g, *([1] * (v.dim() - 1))))
        for e in task.flat.entries:
            if not e.is_param:
                w[:, e.start:e.start + e.numel].copy_(bufs[e.name].reshape(g, -1))


def train(task, rows, clients, num_steps, lrs) -> None:
    """``num_steps[j]`` SGD steps of ``clients[j]`` on ``rows[j]`` (in place), every client of a step in one call.

    Args: as :func:`qafl_core.batched.local_sgd_many` (already validated there).
    """
    order = [j for j in range(len(rows)) if num_steps[j] > 0]
    if not order:
        return
    batches, masks, calls = _plan(task, clients, num_steps, order)
    live = sorted(order, key=lambda j: -num_steps[j])    # stable: most steps first, then the given order
    work = torch.stack([rows[j] for j in live])           # (m, d); the clients still stepping are a prefix
    neg_lr = torch.tensor([-lrs[j] for j in live], dtype=work.dtype).to(work.device)
    steps = [num_steps[j] for j in live]
    task.module.train()
    dev = task.device
    for t in range(steps[0]):
        m = sum(1 for k in steps if k > t)
        groups: dict[int, list[int]] = {}
        for p in range(m):
            groups.setdefault(len(batches[live[p]][t]), []).append(p)
        for b, pos in groups.items():
            idx = torch.cat([batches[live[p]][t] for p in pos]).to(dev)
            mk = [torch.stack([masks[live[p]][t][k] for p in pos]) for k in range(len(calls))]
            ids = [clients[live[p]] for p in pos]
            if len(pos) == m:                             # the usual case: the prefix itself, no copy
                _step(task, work[:m], idx, b, mk, calls, neg_lr[:m], ids)
            else:
                at = torch.tensor(pos, device=work.device)
                sub = work.index_select(0, at)
                _step(task, sub, idx, b, mk, calls, neg_lr.index_select(0, at), ids)
                work.index_copy_(0, at, sub)
    for j, r in zip(live, work):
        rows[j].copy_(r)
