"""What the asynchronous algorithms share (FedBuff, FedAsync, QAFeL): client jobs at a bounded concurrency on
the simulated clock, and a server step that collects a fixed number of arriving updates.

Event semantics (the same for the three algorithms; ``docs/baselines.md``):

* A *job* is one client's K local SGD steps, from the model it downloaded when the job started, up to its
  upload. It lasts the sum of the client's K step times (:class:`qafl_core.timing.ClientClocks`). Jobs arrive
  in order of finishing time (ties: lower client index first).
* At most C jobs run at once (``concurrency``; default n: every client always busy, as the QuAFL paper's code
  runs FedBuff). At time 0 the server starts C jobs from the initial model, which every client already holds
  (no bits are counted for it).
* The server handles one arrival at a time: its clock moves forward to the arrival time if it is behind (an
  update that arrives while the server is busy waits), and every server step -- a FedBuff buffer flush, a
  FedAsync merge -- then costs ``sit``. A server step takes :attr:`AsyncSimulation.arrivals_per_step`
  arrivals.
* Each arrival frees a slot, and the server starts a new job at once: its client is drawn uniformly at random
  among the idle clients, the one that just reported included, from the stream ``("server", "start")`` of the
  root seed (with C = n the reporter is the only idle client: it simply goes on). The new job downloads the
  server's current model and records its *start version*, the number of server steps done so far. The job
  started by the arrival that completes a server step starts after that step (and its ``sit``), from the
  new model -- unless :attr:`AsyncSimulation.dispatch_before_step` (QAFeL's ``dispatch_then_step``): then it
  starts at its arrival, from the model before the step.
* The *staleness* of an update is the number of server steps between its job's start and its arrival
  (server versions, not arrivals): 0 when nothing was applied meanwhile.

Computation lags behind the events, which depend only on step durations and the start draws: the arrivals of
a server step are trained in *waves*, runs of consecutive arrivals. A new wave begins at an arrival whose job was
started during the same server step, since that job trains from a download made after the previous wave (a
client downloads after its previous update was computed: its own last model is the decoding key of key-based
quantizers). A wave is one :meth:`Simulation.train_many` call: the task trains its jobs one at a time in arrival
order, each update reaching the server right after its job, or all at once when it is batched (an accelerator
computes many clients at once), the updates then reaching the server in arrival order; then the jobs started so
far download their start model. A job touches only its client's row, its client's mini-batch stream and its
start message, so the grouping changes nothing: the sequential path performs exactly the operations of handling
one arrival at a time, and the batched path differs from it only by the batched kernels' float rounding.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import torch

from qafl_core.algorithms.base import RowPool, Simulation, vector_ops_on_one_thread
from qafl_core.algorithms.state import AsyncState
from qafl_core.rng import torch_generator


@dataclass
class Arrival:
    """One finished job as the server sees it: the client, the staleness of its update (server steps since
    the job started) and the step size its K local steps use (fixed at the arrival time, as ``lr_decay`` is)."""

    client: int
    staleness: int
    lr: float


class ClientJobs:
    """The running jobs (a heap of ``(finish time, client)``), each client's start version, the idle clients.

    Args:
        num_clients: n.
        clocks: step-duration streams; a job of client i lasts ``clocks.draw_sum(i, local_steps)``.
        local_steps: K.
        seed: root seed (the client-start stream ``("server", "start")``).
    """

    def __init__(self, num_clients: int, clocks, local_steps: int, seed: int):
        self.clocks, self.local_steps = clocks, local_steps
        self.queue: list[tuple[float, int]] = []
        self.version = [0] * num_clients       # server step at which each client's current (or last) job started
        self.idle = list(range(num_clients))  # order: the history of swap-removals (a uniform draw needs no order)
        self.rng = torch_generator(seed, "server", "start")

    def start(self, now: float, version: int) -> int:
        """Start a job at time ``now`` for a client drawn uniformly among the idle ones; returns the client."""
        j = self.draw(len(self.idle))
        client = self.idle[j]
        self.idle[j] = self.idle[-1]
        self.idle.pop()
        self.version[client] = version
        heapq.heappush(self.queue, (now + self.clocks.draw_sum(client, self.local_steps), client))
        return client

    def draw(self, m: int) -> int:
        """A uniform index in ``0..m-1`` from the client-start stream."""
        return int(torch.randint(m, (1,), generator=self.rng))

    def pop(self) -> tuple[float, int]:
        """The earliest-finishing job ``(finish time, client)``; its client becomes idle."""
        finish, client = heapq.heappop(self.queue)
        self.idle.append(client)
        return finish, client

    def state_dict(self) -> dict[str, Any]:
        return {"queue": [[t, i] for t, i in self.queue], "version": list(self.version), "idle": list(self.idle),
                "rng": self.rng.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.queue = [(float(t), int(i)) for t, i in state["queue"]]   # already a heap: saved in heap order
        self.version = [int(v) for v in state["version"]]
        self.idle = [int(i) for i in state["idle"]]
        self.rng.set_state(state["rng"])


class AsyncSimulation(Simulation):
    """Base class of FedBuff, FedAsync and QAFeL: the event loop of the module docstring.

    Subclasses define :attr:`arrivals_per_step` and the hooks :meth:`receive` (an arrival's update reaches the
    server), :meth:`server_update` (the server step itself) and :meth:`download` (a new job's start model);
    :meth:`train` may be overridden (FedAsync's proximal term).
    """

    State = AsyncState
    #: start the job of the arrival that completes a server step before the step (from the old model)
    dispatch_before_step = False

    def __init__(self, cfg, task, quantizer, clocks):
        super().__init__(cfg, task, quantizer, clocks)
        c = cfg.concurrency if cfg.concurrency is not None else self.n
        if c > self.n:
            raise ValueError(f"concurrency: C = {c} exceeds the {self.n} clients of the dataset")
        self.concurrency = c
        self.client_lr = cfg.lr
        # row i: the model client i downloaded for its current job (trained in place when the job arrives), or,
        # while idle, its last model -- the decoding key of its next download
        self.clients = self.server.unsqueeze(0).repeat(self.n, 1)
        self.jobs = ClientJobs(self.n, clocks, cfg.local_steps, cfg.seed)
        for _ in range(c):
            self.jobs.start(0.0, 0)
        self._starts = RowPool(self.task.dim, self.device)    # the start models of the jobs in training

    @property
    def arrivals_per_step(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ the event loop
    @vector_ops_on_one_thread
    def step(self) -> None:
        self.begin_step()
        wave: list[Arrival] = []      # arrivals to train together
        started: list[int] = []       # clients started during this step, download pending
        z = self.arrivals_per_step
        for k in range(z):
            finish, i = self.jobs.pop()
            self.time = max(self.time, finish)
            if i in started:          # its job began during this step: it trains from the download below
                self._run_wave(wave)
                self._download_all(started)
                wave, started = [], []
            wave.append(Arrival(i, self.server_steps - self.jobs.version[i], self.client_lr * self.lr_factor()))
            if k < z - 1 or self.dispatch_before_step:
                started.append(self.jobs.start(self.time, self.server_steps))
        self._run_wave(wave)
        self._download_all(started)
        self.server_update()
        self.server_steps += 1
        self.time += self.cfg.round_sit
        if not self.dispatch_before_step:
            self.download(self.jobs.start(self.time, self.server_steps))

    def _run_wave(self, wave: list[Arrival]) -> None:
        """Train the wave's jobs (:meth:`train`), handing each update to the server in arrival order."""
        if wave:
            self.train(wave)

    def _download_all(self, clients: list[int]) -> None:
        for i in clients:
            self.download(i)

    # ------------------------------------------------------------------ hooks
    def begin_step(self) -> None:
        """Called before the first arrival of a server step."""

    def train(self, arrivals: list[Arrival]) -> None:
        """The K local SGD steps of each arriving job on its client's row, in place, each followed by
        :meth:`receive` (the task trains them one by one or together: :meth:`Simulation.train_many`)."""
        starts: dict[int, torch.Tensor] = {}

        def start(j: int):
            a = arrivals[j]
            starts[j] = self._starts.take().copy_(self.clients[a.client])
            return self.clients[a.client], self.cfg.local_steps, a.lr

        def arrive(j: int) -> None:
            self.receive(arrivals[j], starts[j])
            self._starts.give(starts.pop(j))

        self.train_many([a.client for a in arrivals], start, arrive)

    def receive(self, arrival: Arrival, start: torch.Tensor) -> None:  # pragma: no cover - abstract
        """The arrival's upload reaches the server; ``start`` (a work buffer the hook may overwrite) holds the
        job's start model, ``self.clients[arrival.client]`` its trained model."""
        raise NotImplementedError

    def server_update(self) -> None:
        """The server step, once every arrival of the step was received."""

    def download(self, client: int) -> None:  # pragma: no cover - abstract
        """Client ``client`` receives the start model of the job just started for it."""
        raise NotImplementedError
