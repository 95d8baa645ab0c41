"""Per-client optimizers: each client keeps its own optimizer state across contacts, as the paper's code does.

The released code of Zakerinia et al. (AISTATS 2024, arXiv:2206.10032) gives every client its own
``torch.optim`` instance (SGD; Adam for Fashion-MNIST), created once and never reset: averaging with the
server changes the client's weights, not its momentum or Adam moments (docs/choices.md#optimizer).

Here a client's model is a row of the client matrix, trained through fresh parameter views on every call
(:meth:`qafl_core.params.FlatModel.leaf_views`), so a ``torch.optim`` object cannot hold on to its
parameters between contacts.  :class:`ClientOptimizers` keeps each client's *state* instead -- per parameter
tensor, the very dict ``torch.optim`` keeps (``step``, ``exp_avg``, ``exp_avg_sq`` for Adam;
``momentum_buffer`` for SGD with momentum) -- and binds it to a ``torch.optim.SGD``/``Adam`` over the current
views for the duration of one call.  The arithmetic is torch's own; the state is allocated lazily by torch on a
client's first step and saved in checkpoints as plain tensors.

Plain SGD (no momentum, no weight decay) has no state and is not routed through here: the task keeps its
fused ``p -= lr * g`` path, so results of the default configuration do not change.
"""
from __future__ import annotations

from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam")


def is_plain_sgd(name: str, momentum: float, weight_decay: float) -> bool:
    """Whether the optimizer is stateless plain SGD (the suite's default, the task's own fast path)."""
    return name == "sgd" and momentum == 0 and weight_decay == 0


class ClientOptimizers:
    """Every client's optimizer state, bound to ``torch.optim`` on demand.

    Args:
        name: ``sgd`` or ``adam`` (Adam with torch's default betas (0.9, 0.999) and eps 1e-8).
        momentum: SGD momentum (torch's convention: ``buf = momentum * buf + g``, no dampening, not Nesterov).
        weight_decay: L2 penalty added to the gradient (both optimizers, torch's convention).
    """

    def __init__(self, name: str, momentum: float = 0.0, weight_decay: float = 0.0):
        if name not in OPTIMIZERS:
            raise ValueError(f"optimizer: unknown value {name!r}; expected one of {', '.join(OPTIMIZERS)}")
        if name == "adam" and momentum != 0:
            raise ValueError("momentum: only used with optimizer: sgd (Adam uses torch's default betas)")
        self.name, self.momentum, self.weight_decay = name, float(momentum), float(weight_decay)
        #: client -> one state dict per parameter tensor (the dicts torch.optim fills in place)
        self.states: dict[int, list[dict[str, torch.Tensor]]] = {}

    def bind(self, client: int, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
        """A ``torch.optim`` optimizer over ``params`` (the client's current views) holding the client's state.

        The state dicts are shared with this object, so every ``step()`` of the returned optimizer updates the
        client's saved state in place; set each parameter's ``.grad`` before calling ``step()``.
        """
        if self.name == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay)
        states = self.states.get(client)
        if states is None:
            states = self.states[client] = [{} for _ in params]
        if len(states) != len(params):
            raise ValueError(f"optimizer: client {client} has state for {len(states)} tensors, the model has "
                             f"{len(params)}")
        for p, s in zip(params, states):
            opt.state[p] = s    # torch.optim creates the entries on the first step and updates them in place
        return opt

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors in plain containers (loadable with ``torch.load(weights_only=True)``)."""
        return {"name": self.name, "states": {i: [dict(s) for s in per] for i, per in self.states.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        """Restore :meth:`state_dict` output; buffers go to ``device`` (the parameters' device), Adam's ``step``
        counters stay on the CPU, where ``torch.optim.Adam`` keeps them."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer: checkpoint holds {state.get('name')!r} state, the run uses {self.name!r}")
        self.states = {int(i): [{k: v if k == "step" else v.to(device) for k, v in s.items()} for s in per]
                       for i, per in state["states"].items()}
