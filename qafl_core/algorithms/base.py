"""What every simulated algorithm shares: the server clock, counters, messages and its state (a checkpoint).

An algorithm is a :class:`Simulation` whose :meth:`step` performs one *server step* (a QuAFL round,
a FedAvg round, a FedBuff buffer flush) and advances the simulated clock.  The runner owns the loop,
evaluation cadence and checkpoints; algorithms own the protocol.  All randomness comes from named
streams of the root seed (:mod:`qafl_core.rng`): client sampling, per-client step durations,
per-client mini-batches and one generator per quantized message.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, ClassVar

import torch

from qafl_core.algorithms.state import SimulationState
# the thread policy of a step (threads.py) is re-exported here, where the algorithms import it from
from qafl_core.algorithms.threads import (  # noqa: F401
    _on_one_thread,
    _Threads,
    vector_ops_on_one_thread,
)
from qafl_core.channel import Channel
from qafl_core.config import RunConfig
from qafl_core.local import Finish, Prepare, Task, train_one_by_one
from qafl_core.quantize import IdentityQuantizer
from qafl_core.rng import torch_generator
from qafl_core.timing import ClientClocks


class Simulation:
    """Base class: state and bookkeeping common to QuAFL, FedAvg and FedBuff."""

    name = "base"
    #: everything the simulation carries across a checkpoint: a dataclass of fields named after its attributes
    State: ClassVar[type[SimulationState]] = SimulationState

    def __init__(self, cfg: RunConfig, task: Task, quantizer, clocks: ClientClocks):
        if isinstance(quantizer, IdentityQuantizer) and quantizer.copy:
            # every algorithm here consumes a message before it changes the sender's vector or the decoded
            # value (see each step()), so identity messages need no copies: 2 x 26 MB saved per CNN message
            quantizer = quantizer.borrowing()
        self.cfg, self.task, self.quantizer, self.clocks = cfg, task, quantizer, clocks
        self.n = task.num_clients
        if cfg.clients_per_round > self.n:
            raise ValueError(f"clients_per_round: s = {cfg.clients_per_round} exceeds the {self.n} clients of the dataset")
        #: where every model vector of the run lives (the task's device; qafl_core/device.py)
        self.device = getattr(task, "device", torch.device("cpu"))
        self.server = task.init_vector().to(self.device).clone()
        self.num_params = getattr(task, "num_params", task.dim)
        self.time = 0.0
        self.server_steps = 0
        self.local_steps = 0
        #: every send goes through here: encoding, decoding, bits up and down, decode failures
        self.channel = Channel(quantizer, cfg.seed, self.device, self.name)
        self.contacts = {"slow": 0, "fast": 0}
        self.zero_step_contacts = {"slow": 0, "fast": 0}
        self.steps_by_class = {"slow": 0, "fast": 0}
        self.sampler = torch_generator(cfg.seed, "server", "sampling")
        self._zeros: torch.Tensor | None = None
        self._acc: torch.Tensor | None = None
        self._sgd_threads: int | None = None
        # batched_clients asks the task to train the clients of a train_many call together; whether it does is
        # the task's business (NeuralTask.train_many), the algorithms never ask
        if getattr(cfg, "batched_clients", False) or getattr(task, "batched", False):
            if not getattr(task, "supports_batched", False):
                model = type(getattr(task, "module", task)).__name__
                raise ValueError(f"batched_clients: {model} has no batched local SGD (neural tasks with plain SGD "
                                 "only)")
            task.batched = True

    # ------------------------------------------------------------------ protocol pieces
    def step(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def done(self) -> bool:
        if self.cfg.max_server_steps is not None and self.server_steps >= self.cfg.max_server_steps:
            return True
        return self.time >= self.cfg.time_limit

    def sample_clients(self) -> list[int]:
        """s of n clients uniformly without replacement, sorted (the order has no effect on results)."""
        perm = torch.randperm(self.n, generator=self.sampler)[: self.cfg.clients_per_round]
        return sorted(perm.tolist())

    def lr_factor(self) -> float:
        """The paper code's optional step decay: x0.5 from 60 % of the time limit, x0.1 from 80 %."""
        if not self.cfg.lr_decay:
            return 1.0
        frac = self.time / self.cfg.time_limit
        return 0.1 if frac >= 0.8 else 0.5 if frac >= 0.6 else 1.0

    def encode(self, x: torch.Tensor, *msg_id: object, quantizer=None):
        """Encode ``x`` with the run's quantizer (or ``quantizer``), from the message's own named stream
        (:meth:`qafl_core.channel.Channel.encode`)."""
        return self.channel.encode(x, self.server_steps, *msg_id,
                                   quantizer=quantizer if quantizer is not None else self.quantizer)

    def decode(self, msg, key: torch.Tensor | None, direction: str, quantizer=None, receivers: int = 1,
               scratch: bool = False) -> torch.Tensor:
        """Deliver ``msg`` to ``receivers`` receivers holding ``key``: its value, with its bits and decode
        failures counted (:meth:`qafl_core.channel.Channel.decode`; ``scratch``: read at once, never changed)."""
        return self.channel.decode(msg, key, direction, self.time,
                                   quantizer=quantizer if quantizer is not None else self.quantizer,
                                   receivers=receivers, scratch=scratch)

    def send(self, x: torch.Tensor, key: torch.Tensor | None, direction: str, *msg_id: object,
             add_to: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`encode` then :meth:`decode` of a one-receiver message in one pass: the value (read it at
        once, never change it), bits and failures counted (:meth:`qafl_core.channel.Channel.send`).
        ``add_to``: the value is added into it (``add_to.add_(value)``, fused where the quantizer can)."""
        return self.channel.send(x, key, direction, self.time, self.server_steps, *msg_id, quantizer=self.quantizer,
                                 add_to=add_to)

    def decode_mix(self, msg, key: torch.Tensor | None, y: torch.Tensor, p: float, direction: str) -> torch.Tensor:
        """Deliver ``msg`` to a receiver that averages it into ``y``: ``y.mul_(1 - p).add_(decoded, alpha=p)``,
        in one pass where the quantizer can (:meth:`qafl_core.channel.Channel.decode_mix`)."""
        return self.channel.decode_mix(msg, key, y, p, direction, self.time, quantizer=self.quantizer)

    # the channel's counters under the names the results table and checkpoints use
    bits_up = property(lambda self: self.channel.bits_up, lambda self, v: setattr(self.channel, "bits_up", v))
    bits_down = property(lambda self: self.channel.bits_down, lambda self, v: setattr(self.channel, "bits_down", v))
    decode_failures = property(lambda self: self.channel.decode_failures,
                               lambda self, v: setattr(self.channel, "decode_failures", v))
    failed_messages = property(lambda self: self.channel.failed_messages,
                               lambda self, v: setattr(self.channel, "failed_messages", v))

    @property
    def zeros(self) -> torch.Tensor:
        """Decoding key for deltas: they are decoded against zero, never against a model (docs/choices.md#delta-decoding)."""
        if self._zeros is None:
            self._zeros = torch.zeros(self.task.dim, device=self.device)
        return self._zeros

    def local_sgd(self, row: torch.Tensor, client: int, num_steps: int, lr: float) -> None:
        """The task's local SGD on ``row``, run on the caller's intra-op thread count."""
        with self._sgd_thread_count():
            self.task.local_sgd(row, client, num_steps, lr)

    def train_many(self, clients: Sequence[int], prepare: Prepare, finish: Finish | None = None) -> None:
        """Local SGD of ``clients`` through the task's :meth:`qafl_core.local.NeuralTask.train_many`: ``prepare(j)
        -> (row, num_steps, lr)`` before ``clients[j]`` trains, ``finish(j)`` after. The task trains them one by
        one or batched; the callbacks only touch client ``j``'s own data, so either way gives the same results.

        The steps run on the caller's intra-op thread count, the callbacks' vector ops on one thread
        (:func:`vector_ops_on_one_thread`). Tasks without ``train_many`` train one by one (:func:`train_one_by_one`).
        """
        run = getattr(self.task, "train_many", None) or functools.partial(train_one_by_one, self.task)
        n = self._sgd_threads
        if n is None:
            return run(clients, prepare, finish)
        with _Threads(n):
            run(clients, _on_one_thread(prepare, n), None if finish is None else _on_one_thread(finish, n))

    def _sgd_thread_count(self):
        return _Threads(self._sgd_threads)

    def accumulator(self) -> torch.Tensor:
        """A zeroed (dim,) work vector for the server's sum of decoded messages, reused every step
        (a fresh 26 MB tensor per round costs page faults; zeroing in place does not)."""
        if self._acc is None:
            self._acc = torch.zeros_like(self.server)
        return self._acc.zero_()

    def record_contact(self, client: int, steps: int) -> None:
        cls = "slow" if self.clocks.is_slow[client] else "fast"
        self.contacts[cls] += 1
        self.steps_by_class[cls] += steps
        if steps == 0:
            self.zero_step_contacts[cls] += 1
        self.local_steps += steps

    def apply_server_delta(self, mean_delta: torch.Tensor, server_lr: float,
                           stats: torch.Tensor | None = None) -> None:
        """``X -= server_lr * mean_delta`` on parameters. Buffers (BatchNorm statistics) become the clients' mean:
        ``stats`` when given (FedBuff: arrivals that started from older models), else ``X - mean_delta`` on them,
        which is that mean when every client started from X (FedAvg)."""
        p = self.num_params
        self.server[:p].sub_(mean_delta[:p], alpha=server_lr)
        if p < self.server.numel():
            if stats is not None:
                self.server[p:].copy_(stats)
            else:
                self.server[p:].sub_(mean_delta[p:])

    # ------------------------------------------------------------------ reporting
    def counters(self) -> dict[str, float]:
        return {"time": self.time, "server_steps": self.server_steps, "local_steps": self.local_steps,
                "bits_up": self.bits_up, "bits_down": self.bits_down}

    def sim_metrics(self) -> dict[str, float]:
        """Simulator statistics reported with every evaluation (split ``sim``)."""
        out = {"decode_failures": float(self.decode_failures)}
        for cls in ("slow", "fast"):
            c = self.contacts[cls]
            if c:
                out[f"zero_step_fraction_{cls}"] = self.zero_step_contacts[cls] / c
                out[f"steps_per_contact_{cls}"] = self.steps_by_class[cls] / c
        return out

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> SimulationState:
        """The simulation's state now, as its :attr:`State` (:mod:`qafl_core.algorithms.state`)."""
        return self.State.of(self)

    def state_dict(self) -> dict[str, Any]:
        """The whole simulation state as tensors and plain containers only (generator states are uint8
        tensors; no sets, no custom classes): checkpoints are loaded with pickle disabled
        (:func:`qafl_core.store.check_plain` refuses anything else when the checkpoint is written)."""
        return self.state().to_plain()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` output (a ValueError names missing or unknown fields)."""
        self.State.from_plain(state).restore(self)


class RowPool:
    """Work vectors of length ``dim``, taken and given back: with clients trained one by one a single vector is in
    use at a time (as many as a batched call holds otherwise), so the sequential path keeps its memory."""

    def __init__(self, dim: int, device: torch.device):
        self.dim, self.device, self.free = dim, device, []

    def take(self) -> torch.Tensor:
        return self.free.pop() if self.free else torch.empty(self.dim, device=self.device)

    def give(self, row: torch.Tensor) -> None:
        self.free.append(row)
