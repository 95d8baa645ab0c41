"""Heterogeneous quadratics: the setting in which the QuAFL theorem can be checked numerically.

docs/algorithm.md#what-the-suite-checks-numerically: ``f_i(x) = 1/2 ||x - c_i||^2`` (so L = 1, B^2 = 1), stochastic gradient
``x - c_i + xi`` with ``xi ~ N(0, sigma^2/d I)``, and ``G^2 = 1/n sum_i ||c_i - c_bar||^2`` controlled by
``heterogeneity``.  The global objective ``f = 1/n sum_i f_i`` has minimiser ``c_bar`` and gradient
``x - c_bar``.  Theorem 4.2 (ICLR) bounds ``1/T sum_t E||grad f(mu_t)||^2`` for the mean model
``mu_t = (X_t + sum_i X^i_t)/(n+1)``, so :class:`QuadraticTask` reports the gradient at the server
model (split ``test``) *and* at the mean model, plus the sum of all n+1 models (split ``mean_model``)
— with the identity quantizer that sum changes only by the clients' gradient progress (docs/algorithm.md#conservation-invariant).

For speed heterogeneity (docs/algorithm.md#speed-heterogeneity-corrections) both splits also report
``dist_opt = ||x - c_bar||`` and, once the simulation has told the task which clients are slow
(:meth:`QuadraticTask.set_slow_clients`), ``bias_fast``: the projection of ``x - c_bar`` on
``u = mean(fast clients' c_i) - c_bar`` in units of ``||u||``, ``(x - c_bar).u / u.u`` — 0 at the global optimum,
1 at the fast clients' optimum (not reported when every client, or none, is slow).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from qafl_core.rng import torch_generator


class QuadraticTask:
    """n heterogeneous quadratics in ``dim`` dimensions (implements :class:`qafl_core.local.Task`).

    Args:
        num_clients: n.
        seed: root seed (centres and gradient noise).
        dim: d.
        sigma: gradient-noise standard deviation (total over the d coordinates).
        heterogeneity: G, the root-mean-square distance of the centres c_i from their mean.
        offset: distance of the optimum c_bar from the initial model 0.
        device: where the centres, the models and the arithmetic live (the centres and the gradient noise are
            drawn on the CPU, so every device sees the same problem and the same noise).
    """

    def __init__(self, num_clients: int, seed: int, dim: int = 20, sigma: float = 1.0,
                 heterogeneity: float = 1.0, offset: float = 10.0, device: torch.device | str = "cpu"):
        for name, v in (("dim", dim), ("num_clients", num_clients)):
            if int(v) < 1:
                raise ValueError(f"{name}: must be >= 1, got {v}")
        for name, v in (("sigma", sigma), ("heterogeneity", heterogeneity), ("offset", offset)):
            if not math.isfinite(v) or v < 0:
                raise ValueError(f"dataset_options.{name}: must be a finite number >= 0, got {v}")
        self.num_clients, self.dim, self.sigma = int(num_clients), int(dim), float(sigma)
        self.segments = [self.dim]
        self.num_params = self.dim
        g = torch_generator(seed, "quadratic", "centres")
        direction = torch.randn(self.dim, generator=g, dtype=torch.float64)
        spread = torch.randn(self.num_clients, self.dim, generator=g, dtype=torch.float64)
        spread -= spread.mean(0)
        if self.num_clients > 1:
            spread *= heterogeneity / spread.pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
        self.device = torch.device(device)
        self.c_bar = (direction / direction.norm() * offset).to(self.device)
        self.centres = (self.c_bar + spread.to(self.device)).float()         # (n, d)
        self.f_star = 0.5 * float(spread.pow(2).sum(1).mean())
        self.G2 = float(spread.pow(2).sum(1).mean())
        self.seed = seed
        self._gens: dict[int, torch.Generator] = {}
        self.progress_sum = torch.zeros(self.dim, dtype=torch.float64, device=self.device)  # sum of eta * g applied
        self.fast_direction: torch.Tensor | None = None                       # u of bias_fast

    def set_slow_clients(self, is_slow) -> None:
        """Which clients are slow (the clocks' ``is_slow``): defines ``bias_fast``'s direction u."""
        fast = torch.tensor([not s for s in is_slow], dtype=torch.bool, device=self.centres.device)
        if len(fast) != self.num_clients:
            raise ValueError(f"is_slow: {len(fast)} flags for {self.num_clients} clients")
        u = self.centres[fast].double().mean(0) - self.c_bar if fast.any() and not fast.all() else None
        self.fast_direction = u if u is not None and float(u.norm()) > 0 else None

    def init_vector(self) -> torch.Tensor:
        return torch.zeros(self.dim, device=self.device)

    def _gen(self, i: int) -> torch.Generator:
        if i not in self._gens:
            self._gens[i] = torch_generator(self.seed, "quadratic", "noise", i)
        return self._gens[i]

    def local_sgd(self, row: torch.Tensor, client: int, num_steps: int, lr: float) -> None:
        noise_scale = self.sigma / math.sqrt(self.dim)
        for _ in range(num_steps):
            noise = torch.randn(self.dim, generator=self._gen(client)).to(self.device)
            g = row - self.centres[client] + noise_scale * noise
            self.progress_sum += lr * g.double()
            row.sub_(g, alpha=lr)

    def _metrics(self, x: torch.Tensor) -> dict[str, float]:
        xd = x.double()
        grad = xd - self.c_bar
        f = 0.5 * float((xd - self.centres.double()).pow(2).sum(1).mean())
        out = {"grad_sq": float(grad.pow(2).sum()), "suboptimality": f - self.f_star, "loss": f,
               "dist_opt": float(grad.norm())}
        u = self.fast_direction
        if u is not None:
            out["bias_fast"] = float(grad @ u) / float(u @ u)
        return out

    def evaluate(self, vec: torch.Tensor) -> dict[str, float]:
        return self._metrics(vec)

    def evaluate_mean_model(self, sim) -> dict[str, float]:
        """Gradient at the mean of all n+1 models, and the conservation-invariant residual."""
        total = sim.server.double() + sim.clients.double().sum(0)
        mu = (total / (sim.n + 1)).float()
        out = self._metrics(mu)
        # sum of all models + all gradient progress so far is constant (= (n+1) x_0 = 0) without quantization
        out["conservation_residual"] = float((total + self.progress_sum).abs().max())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"gens": {i: g.get_state() for i, g in self._gens.items()}, "progress_sum": self.progress_sum.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._gens = {}
        for i, s in state["gens"].items():
            self._gens[int(i)] = torch.Generator()
            self._gens[int(i)].set_state(s)
        self.progress_sum = state["progress_sum"].to(self.device, copy=True)
