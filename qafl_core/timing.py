"""Client speeds in simulated time (docs/timing.md; the paper's timing model, Zakerinia et al., AISTATS 2024).

Speed models (``timing``):

* ``exponential`` (the paper's): each local SGD step of client ``i`` takes an Exponential time with mean
  ``fast_mean`` (2) or ``slow_mean`` (8); the first ``ceil(slow_fraction * n)`` clients are slow, as in
  the paper's code.
* ``uniform``: every step of every client takes exactly ``fast_mean`` ("uniform timing experiments assume
  all clients take the same amount of time for a gradient step", ICLR §5).
* ``lognormal`` (extension): client ``i``'s mean step time is drawn once,
  ``m_i = fast_mean * exp(speed_sigma * z_i)`` with ``z_i ~ N(0, 1)`` from the stream ``("speed_mean", i)``,
  so ``fast_mean`` is the *median* of the clients' means, ``speed_sigma`` the standard deviation of
  ``log m_i`` (the mean of the means is ``fast_mean * exp(speed_sigma² / 2)``); then its steps are
  Exponential with mean ``m_i``, as in the paper's model.  ``speed_sigma = 0`` gives every client
  ``fast_mean``.  ``slow_fraction`` and ``slow_mean`` are not used.
* ``trace`` (extension): per-client statistics from a CSV file (``timing_trace``), e.g. measured devices::

      client,mean_step_time,std_step_time
      0,2.0,
      1,7.5,3.1

  One header row; columns ``client`` (integers 0..m-1, each once, any order) and ``mean_step_time``
  (> 0), optionally ``std_step_time`` (>= 0, may be left empty per row); no other columns.  A row
  without a std gets Exponential steps with that mean (the paper's model); with a std, log-normal steps
  with exactly that mean and std (``σ² = ln(1 + std²/mean²)``, ``μ = ln(mean) − σ²/2``; std 0 = constant
  steps).  Log-normal rather than gamma because measured step and round-trip times are positive and
  right-skewed, the log-normal is fitted by mean and std in closed form, and it is drawn from the client's
  own torch generator (a gamma sampler that takes a generator is not available in torch).  Client ``i``
  of a run uses row ``client = i``; a run with more clients than the file has rows is an error (a device
  profile is never reused silently), extra rows are unused.  Any bad file is one ValueError naming the
  file, the line and the column.

``is_slow`` (used to report zero-step contacts by class) is the paper's first-``k`` rule for
``exponential`` and ``uniform``; for ``lognormal`` and ``trace`` a client is slow when its mean step
time is above the median of the clients' means.

Durations come from one generator per client, consumed in order, so a client's step times depend
only on the root seed and on how many steps it has taken — never on the order in which the
simulator processes events.

Longer than 250 lines: every speed model and the one lazy-progress rule that QuAFL and the estimator share
live together, so that the rule cannot drift between them.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from qafl_core.rng import numpy_generator, torch_generator

_BLOCK = 256
TRACE_COLUMNS = ("client", "mean_step_time", "std_step_time")


def num_slow_clients(num_clients: int, slow_fraction: float) -> int:
    # the 1e-9 keeps 0.3 * 100 = 30.000000000000004 from becoming 31
    return min(num_clients, math.ceil(slow_fraction * num_clients - 1e-9))


def lognormal_means(num_clients: int, fast_mean: float, speed_sigma: float, seed: int) -> list[float]:
    """Per-client mean step times ``fast_mean * exp(speed_sigma * z_i)``, ``z_i`` from stream ``("speed_mean", i)``."""
    out = []
    for i in range(num_clients):
        z = torch.empty(1, dtype=torch.float64).normal_(generator=torch_generator(seed, "speed_mean", i))
        out.append(float(fast_mean * torch.exp(speed_sigma * z)))
    return out


def _number(text: str, path: Path, line: int, column: str, positive: bool) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not math.isfinite(v) or v < 0 or (positive and v == 0):
        raise ValueError(f"{path}: line {line}, column {column!r}: expected a finite number "
                         f"{'> 0' if positive else '>= 0'}, got {text!r}")
    return v


def read_trace(path: str | os.PathLike, num_clients: int) -> list[tuple[float, float | None]]:
    """``(mean, std or None)`` for clients ``0..num_clients-1`` from a trace CSV (format: module docstring).

    Raises:
        FileNotFoundError: no such file.
        ValueError: bad header, cell, duplicate or missing client, or fewer rows than ``num_clients``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: timing_trace file not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:  # -sig: a spreadsheet's BOM
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            rows = [(reader.line_num, r) for r in reader if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{p}: cannot read the timing trace as CSV: {exc}") from None
    if "client" not in header or "mean_step_time" not in header:
        raise ValueError(f"{p}: line 1: the header needs columns 'client' and 'mean_step_time' "
                         f"(optional 'std_step_time'), got {header}")
    for col in header:
        if col not in TRACE_COLUMNS or header.count(col) > 1:
            raise ValueError(f"{p}: line 1, column {col!r}: unknown or repeated column; "
                             f"allowed: {', '.join(TRACE_COLUMNS)}")
    stats: dict[int, tuple[float, float | None]] = {}
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{p}: line {line}: {len(row)} fields, the header has {len(header)}")
        cell = dict(zip(header, (c.strip() for c in row)))
        try:
            client = int(cell["client"])
        except ValueError:
            client = -1
        if client < 0:
            raise ValueError(f"{p}: line {line}, column 'client': expected an integer >= 0, got {cell['client']!r}")
        if client in stats:
            raise ValueError(f"{p}: line {line}, column 'client': client {client} is listed twice")
        mean = _number(cell["mean_step_time"], p, line, "mean_step_time", positive=True)
        std_text = cell.get("std_step_time", "")
        std = _number(std_text, p, line, "std_step_time", positive=False) if std_text else None
        stats[client] = (mean, std)
    missing = [i for i in range(len(stats)) if i not in stats]
    if missing:
        raise ValueError(f"{p}: column 'client': clients must be 0..{len(stats) - 1} (one row each); "
                         f"missing {missing[:10]}")
    if len(stats) < num_clients:
        raise ValueError(f"{p}: has {len(stats)} clients but the run has {num_clients}; add rows or lower num_clients")
    return [stats[i] for i in range(num_clients)]


class ClientClocks:
    """Step-duration streams of every client.

    Args:
        num_clients: n.
        timing: ``"exponential"``, ``"uniform"``, ``"lognormal"`` or ``"trace"``.
        slow_fraction, fast_mean, slow_mean: the paper's two-class speed model.
        seed: root seed (stream ``("speed", i)`` per client).
        speed_sigma: ``lognormal`` only: σ of the log mean step time.
        trace: ``trace`` only: path of the CSV file.
    """

    def __init__(self, num_clients: int, timing: str, slow_fraction: float, fast_mean: float,
                 slow_mean: float, seed: int, speed_sigma: float | None = None, trace: str | None = None):
        self.num_clients = num_clients
        self.timing = timing
        #: per client: None = Exponential(mean), else (mu, sigma) of log-normal steps (``trace`` with a std)
        self._lognormal: list[tuple[float, float] | None] = [None] * num_clients
        if timing in ("exponential", "uniform"):
            k = num_slow_clients(num_clients, slow_fraction)
            self.is_slow = [i < k for i in range(num_clients)]
            self.means = [slow_mean if s else fast_mean for s in self.is_slow]
            if timing == "uniform":
                self.means = [fast_mean] * num_clients
        elif timing in ("lognormal", "trace"):
            if timing == "lognormal":
                if speed_sigma is None:
                    raise ValueError("speed_sigma: timing: lognormal needs speed_sigma")
                self.means = lognormal_means(num_clients, fast_mean, speed_sigma, seed)
            else:
                if trace is None:
                    raise ValueError("timing_trace: timing: trace needs the path of a CSV file")
                rows = read_trace(trace, num_clients)
                self.means = [m for m, _ in rows]
                self._lognormal = [None if s is None else _lognormal_params(m, s) for m, s in rows]
            median = float(np.median(self.means)) if num_clients else 0.0
            self.is_slow = [m > median for m in self.means]
        else:
            raise ValueError(f"timing: unknown value {timing!r}")
        self.seed = seed
        self._gens: dict[int, torch.Generator] = {}
        self._buf: dict[int, list[float]] = {}

    def draw(self, i: int) -> float:
        """The duration of client ``i``'s next local step."""
        if self.timing == "uniform":
            return self.means[i]
        ln = self._lognormal[i]
        if ln is not None and ln[1] == 0.0:
            return self.means[i]  # std 0 in the trace: constant steps
        buf = self._buf.get(i)
        if not buf:
            g = self._gens.get(i)
            if g is None:
                g = self._gens[i] = torch_generator(self.seed, "speed", i)
            if ln is None:
                block = torch.empty(_BLOCK, dtype=torch.float64).exponential_(1.0, generator=g) * self.means[i]
            else:
                block = torch.exp(ln[0] + ln[1] * torch.empty(_BLOCK, dtype=torch.float64).normal_(generator=g))
            buf = self._buf[i] = block.tolist()[::-1]  # pop() from the end = draw order
        return buf.pop()

    def draw_sum(self, i: int, k: int) -> float:
        """Time for ``k`` consecutive steps of client ``i``."""
        return sum(self.draw(i) for _ in range(k))

    def state_dict(self) -> dict[str, Any]:
        return {"gens": {i: g.get_state() for i, g in self._gens.items()},
                "buf": {i: list(b) for i, b in self._buf.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gens = {}
        for i, s in state["gens"].items():
            g = torch.Generator()
            g.set_state(s)
            self._gens[int(i)] = g
        self._buf = {int(i): list(b) for i, b in state["buf"].items()}


def _lognormal_params(mean: float, std: float) -> tuple[float, float]:
    """(μ, σ) of the log-normal with this mean and standard deviation."""
    s2 = math.log1p((std / mean) ** 2)
    return math.log(mean) - s2 / 2, math.sqrt(s2)


def lazy_progress(last_contact: float, next_duration: float, now: float, max_steps: int,
                  draw: Callable[[], float]) -> tuple[int, float]:
    """QuAFL's lazy-progress rule (docs/timing.md#quafl-lazy-progress), the one place it is written.

    A client last contacted at ``last_contact``, whose next step was drawn to take ``next_duration``,
    completes at a contact at ``now`` the steps that end strictly before ``now``, at most ``max_steps``
    (K); the step in flight is dropped but its drawn duration is kept.  ``draw()`` gives the next
    duration after each completed step.  Returns ``(completed steps, duration of the step in flight)``;
    the caller resets the client's clock to ``now``.
    """
    k, t, d = 0, last_contact, next_duration
    while k < max_steps and t + d < now:
        t += d
        d = draw()
        k += 1
    return k, d


def expected_steps_per_contact(mean_step: float, round_time: float, contact_prob: float, max_steps: int,
                               timing: str, seed: int, num_contacts: int = 4000) -> float:
    """Monte Carlo estimate of H_i, the mean number of local steps a QuAFL client completes between
    two contacts, under :func:`lazy_progress` (the rule the simulator itself uses).

    Used only by ``speed_correction: estimate`` (:mod:`qafl_core.speed`); it draws from its own stream.
    Steps are constant for ``timing="uniform"`` and Exponential otherwise (``lognormal`` draws Exponential
    steps too; ``trace`` is refused by the configuration).  The estimate can be arbitrary: when
    ``mean_step * ln(1 / (1 - contact_prob)) >= round_time`` the expected number of contacts a drawn
    step needs is infinite (see :func:`qafl_core.speed.heavy_tailed`).
    """
    rng = numpy_generator(seed, "estimate_H", mean_step, round_time, contact_prob, max_steps)

    def draw() -> float:
        return mean_step if timing == "uniform" else rng.exponential(mean_step)

    total, t_now = 0, 0.0
    d = draw()
    for _ in range(num_contacts):
        last = t_now
        t_now += round_time * rng.geometric(contact_prob)
        k, d = lazy_progress(last, d, t_now, max_steps, draw)
        total += k
    return total / num_contacts


__all__ = ["ClientClocks", "TRACE_COLUMNS", "expected_steps_per_contact", "lazy_progress", "lognormal_means",
           "num_slow_clients", "read_trace"]
