"""Flat parameter vectors: an ``nn.Module`` <-> one 1-D float32 tensor.

Every model state that the algorithms touch (server model, each client model, deltas, messages)
is a flat vector of length ``dim`` laid out as ``[parameters | floating buffers]``.  BatchNorm
running statistics are part of the vector, so averaging a vector averages them too (the paper's
code averages whole state dicts, docs/algorithm.md).  Integer buffers (``num_batches_tracked``) are
left out: they only matter for ``momentum=None`` BatchNorm, which no model here uses.

Training happens *on* a vector without copying it: :meth:`FlatModel.leaf_views` returns, for
each parameter, a leaf tensor that shares storage with the vector, so an in-place SGD update of
those leaves updates the vector (a client's row of the ``(n, dim)`` client matrix) directly.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call


@dataclass(frozen=True)
class _Entry:
    name: str
    shape: torch.Size
    start: int
    numel: int
    is_param: bool


class FlatModel:
    """Maps a module's parameters and floating buffers to slices of a flat vector.

    Args:
        module: the network; its own tensors are only used for the initial vector.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        entries, pos = [], 0
        for name, p in module.named_parameters():
            entries.append(_Entry(name, p.shape, pos, p.numel(), True))
            pos += p.numel()
        self.num_params = pos
        for name, b in module.named_buffers():
            if b.is_floating_point():
                entries.append(_Entry(name, b.shape, pos, b.numel(), False))
                pos += b.numel()
        self.entries: list[_Entry] = entries
        self.dim = pos
        # every (submodule, attribute) that holds one of the entries, tied aliases included, for bind()
        own = {**dict(module.named_buffers()), **dict(module.named_parameters())}
        index = {id(own[e.name]): k for k, e in enumerate(entries)}
        self._slots: list[tuple[nn.Module, str, str, int]] = []
        for kind, named in (("_parameters", module.named_parameters(remove_duplicate=False)),
                            ("_buffers", module.named_buffers(remove_duplicate=False))):
            for name, t in named:
                if id(t) in index:
                    owner, _, attr = name.rpartition(".")
                    self._slots.append((module.get_submodule(owner), kind, attr, index[id(t)]))

    @property
    def segments(self) -> list[int]:
        """Sizes of the tensors that make up the vector (per-tensor quantizers need them)."""
        return [e.numel for e in self.entries]

    def vector_from_module(self) -> torch.Tensor:
        state = dict(self.module.named_parameters())
        state.update(dict(self.module.named_buffers()))
        out = torch.empty(self.dim, dtype=torch.float32)
        for e in self.entries:
            out[e.start:e.start + e.numel] = state[e.name].detach().reshape(-1)
        return out

    def views(self, vec: torch.Tensor) -> dict[str, torch.Tensor]:
        """Shaped views of ``vec`` by state name (share storage; no copies)."""
        return {e.name: vec[e.start:e.start + e.numel].view(e.shape) for e in self.entries}

    def leaf_views(self, vec: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        """Parameter leaves that require grad and share storage with ``vec``, plus the full state dict.

        Returns:
            ``(params, state)``: ``params`` are the trainable leaves in entry order (update them in place
            under ``torch.no_grad()`` to train ``vec``); ``state`` maps every name to its tensor for
            :func:`torch.func.functional_call` (buffers are plain views, updated in place by BatchNorm).
        """
        params, state = [], {}
        for e in self.entries:
            v = vec[e.start:e.start + e.numel].view(e.shape).detach()
            if e.is_param:
                v.requires_grad_(True)
                params.append(v)
            state[e.name] = v
        return params, state

    @contextlib.contextmanager
    def bind(self, state: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
        """Run the module itself on ``state`` (e.g. from :meth:`leaf_views`) for a whole block of steps.

        The same as :func:`torch.func.functional_call` on every call, but the module's tensors are swapped
        once per block instead of once per forward (functional_call's per-call dict handling was ~15 % of
        an MLP step); the originals are restored on exit, also on errors.
        """
        tensors = [state[e.name] for e in self.entries]
        saved = [(getattr(m, kind), attr, getattr(m, kind)[attr]) for m, kind, attr, _ in self._slots]
        try:
            for m, kind, attr, k in self._slots:
                getattr(m, kind)[attr] = tensors[k]
            yield self.module
        finally:
            for table, attr, t in saved:
                table[attr] = t

    def forward(self, vec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The module's output with the state taken from ``vec``."""
        return functional_call(self.module, self.views(vec), (x,), strict=False)
