"""Run configuration: one flat, frozen, validated dataclass, and its loading from YAML files and ``--set`` options.

Names follow the issue tracker's contract (``clients_per_round``, ``local_steps``, ...), so that
``qafl run --set clients_per_round=10`` and YAML files use the same keys.  Validation happens in
``__post_init__`` and every message names the offending field.  ``config_hash`` identifies a run's
*configuration*: it hashes the keys that can change results and differ from their defaults, so that a new
key added with a default keeps every existing hash.  Keys that cannot change results (progress bars,
checkpoint cadence, thread counts) are left out, and so is ``data_root``: the data a run reads is covered by
its data fingerprint, part of the run identity (:mod:`qafl_core.fingerprint`).

Defaults follow the best readings of docs/choices.md#hyper-parameters: K = 5, base ``sit`` = 10 scaled by b/32, ``swt`` = 0,
lattice spacing 1e-4, 30 % slow clients with exponential step times of mean 2 (fast) and 8 (slow),
constant learning rate, QuAFL client learning-rate scaling (s+1)/s on.

Validation also refuses integers beyond 64 bits and configs whose clock never advances (QuAFL with
``sit = swt = 0``); :meth:`RunConfig.check_intervals`, called before a run starts, refuses more than
:data:`MAX_INTERVALS` evaluations or checkpoints.  Longer than 250 lines on purpose: every key, its default and its validation stay in one table.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from qafl_core.device import check_device, identity_device
from qafl_core.algorithms import ALGORITHMS
from qafl_core.data.registry import DATASETS
from qafl_core.quantize import BUILDERS as QUANTIZERS

# Names of algorithms, quantizers and datasets are the keys of their registries (register_algorithm,
# register_quantizer, register_dataset), read at validation time so that a registered name is valid at once.
TIMINGS = ("exponential", "uniform", "lognormal", "trace")
PARTITIONS = ("natural", "iid", "dirichlet")
STALENESS = ("none", "sqrt", "poly")
DECODE_KEYS = ("current", "base")
OPTIMIZERS = ("sgd", "adam")
FEDASYNC_STALENESS = ("constant", "poly", "hinge")
QAFEL_VARIANTS = ("qafel", "naive")
QAFEL_ORDERS = ("step_then_dispatch", "dispatch_then_step")
SPEED_CORRECTIONS = ("none", "lr", "normalized", "estimate")  # qafl_core/speed.py

# keys that never change the results of a run (excluded from the hash); data_root is covered by the data fingerprint
_NON_RESULT_KEYS = ("progress", "checkpoint_every", "data_root", "eval_workers", "num_threads")

#: Every integer key must fit a signed 64-bit integer (results tables, torch sizes and seeds are int64).
INT64_MAX = 2 ** 63 - 1
#: A run may evaluate (``time_limit / eval_every``) and checkpoint (``time_limit / checkpoint_every``) at most
#: this many times: a smaller interval cannot finish in practice (and a tiny one stops advancing in float arithmetic).
MAX_INTERVALS = 1_000_000


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one simulation. See README "Configuration" for each key."""

    # what
    algorithm: str = "quafl"
    dataset: str = "synthetic"
    data_root: str | None = None          # None -> $QAFL_DATA_DIR/<dataset default>, or embedded data
    dataset_options: Mapping[str, Any] = field(default_factory=dict)
    model: str = "auto"                   # "auto" -> the dataset's LEAF / paper-code model
    seed: int = 0
    partition: str | None = None          # None -> the dataset's own: natural (LEAF, Synthetic) or iid (vision)
    dirichlet_alpha: float | None = None  # Dir(alpha) label skew; only (and required) with partition: dirichlet
    # federation
    num_clients: int | None = None        # None -> every client of the dataset
    clients_per_round: int = 5            # s (QuAFL peers, FedAvg sample, FedBuff default buffer size)
    local_steps: int = 5                  # K
    lr: float = 0.01                      # base (client) learning rate eta
    batch_size: int = 32
    optimizer: str = "sgd"
    lr_decay: bool = False                # paper code's optional step decay: x0.5 at 60 %, x0.1 at 80 % of time_limit
    momentum: float = 0.0                 # optimizer: sgd: torch.optim.SGD momentum, kept per client across contacts
    weight_decay: float = 0.0             # L2 penalty of the clients' optimizer (torch's convention)
    # communication
    quantizer: str = "identity"
    bits: int = 32
    lattice_eps: float = 1e-4             # lattice spacing epsilon (docs/quantizers.md)
    qsgd_bucket: int | None = None        # None -> one bucket per tensor (paper code); else bucket size
    # timing (docs/timing.md)
    timing: str = "exponential"
    slow_fraction: float = 0.3
    fast_mean: float = 2.0
    slow_mean: float = 8.0
    sit: float = 10.0                     # server interaction time (base, for 32 bits)
    swt: float = 0.0                      # server waiting time between rounds (QuAFL)
    scale_sit_by_bits: bool = True        # sit * bits/32 for quantized runs
    time_limit: float = 500.0
    max_server_steps: int | None = None
    eval_every: float = 50.0
    eval_max_samples: int | None = None   # None -> the whole pooled test set
    eval_batch_size: int = 1024
    speed_sigma: float | None = None      # timing: lognormal: sigma of log(mean step time); median fast_mean
    timing_trace: str | None = None       # timing: trace: CSV client,mean_step_time[,std_step_time]
    divergence_factor: float | None = 1e4  # diverged when the test loss > factor * max(1, first test loss); None: off
    # QuAFL switches (docs/algorithm.md)
    server_averaging: bool = True
    client_averaging: bool = True
    client_lr_scaling: bool = True        # client lr * (s+1)/s when server_averaging (paper code)
    client_decode_key: str = "current"    # "current" (code) or "base" (paper text)
    speed_lr_correction: bool = False     # replaced by speed_correction; true is an error (unbounded factors)
    speed_correction: str = "none"        # suite extension: none | lr | normalized | estimate (qafl_core/speed.py)
    speed_correction_cap: float = 4.0     # every speed-correction factor is clipped to [1/cap, cap]
    # FedAvg / FedBuff
    server_lr: float = 1.0
    buffer_size: int | None = None        # FedBuff Z; None -> clients_per_round
    staleness: str = "none"               # none | sqrt: 1/sqrt(1+tau) | poly: (1+tau)^-staleness_exponent
    staleness_exponent: float = 0.5
    fedbuff_client_lr_s_over_n: bool = False  # the paper code's client lr * s/n quirk (docs/baselines.md#fedbuff)
    concurrency: int | None = None        # FedBuff/FedAsync/QAFeL: clients training at once; None -> n (all busy)
    # FedAsync (Xie, Koyejo, Gupta 2019)
    fedasync_alpha: float = 0.6           # mixing weight alpha of an arriving model
    fedasync_staleness: str = "constant"  # constant | poly: (d+1)^-a | hinge: 1 if d <= b else 1/(a(d-b)+1)
    fedasync_a: float = 0.5
    fedasync_b: float = 4.0
    fedasync_rho: float = 0.0             # proximal term rho of the clients' local steps (0: plain SGD)
    # QAFeL (Ortega, Jafarkhani 2024)
    server_quantizer: str | None = None   # Q_s of the hidden-state broadcast; None -> quantizer
    server_bits: int | None = None        # bits of Q_s; None -> bits
    qafel_variant: str = "qafel"          # qafel (hidden state) | naive (clients start from Q_s(x))
    qafel_order: str = "step_then_dispatch"  # or dispatch_then_step: the Z-th client restarts before the step
    # run management
    progress: bool = True
    checkpoint_every: float | None = None
    eval_workers: int = 1
    num_threads: int | None = None        # torch intra-op threads; None -> 1 for small models (< 200k coords), else torch's default
    batched_clients: bool = False         # suite extension: the clients' local SGD batched together (every model; plain SGD)
    device: str = "cpu"                   # cpu | cuda | cuda:N | auto (cuda if available); qafl_core/device.py

    def __post_init__(self) -> None:
        _check_choice("algorithm", self.algorithm, ALGORITHMS)
        _check_choice("quantizer", self.quantizer, QUANTIZERS)
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("timing", self.timing, TIMINGS)
        _check_choice("staleness", self.staleness, STALENESS)
        _check_choice("client_decode_key", self.client_decode_key, DECODE_KEYS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("fedasync_staleness", self.fedasync_staleness, FEDASYNC_STALENESS)
        _check_choice("qafel_variant", self.qafel_variant, QAFEL_VARIANTS)
        _check_choice("qafel_order", self.qafel_order, QAFEL_ORDERS)
        self._check_speed_correction()
        _check_int("seed", self.seed, lo=0)
        check_device(self.device)
        self._check_heterogeneity()
        if self.num_clients is not None:
            _check_int("num_clients", self.num_clients, lo=1)
        _check_int("clients_per_round", self.clients_per_round, lo=1)
        if self.num_clients is not None and self.clients_per_round > self.num_clients:
            raise ValueError(f"clients_per_round: s = {self.clients_per_round} exceeds num_clients = {self.num_clients}")
        _check_int("local_steps", self.local_steps, lo=1)
        _check_int("batch_size", self.batch_size, lo=1)
        _check_int("bits", self.bits, lo=1, hi=32)
        if self.quantizer == "identity" and self.bits != 32:
            raise ValueError(f"bits: the identity quantizer sends 32-bit floats; got bits = {self.bits} (use quantizer=lattice/qsgd)")
        if self.quantizer == "qsgd" and self.bits < 1:
            raise ValueError("bits: qsgd needs at least 1 bit")
        if self.qsgd_bucket is not None:
            _check_int("qsgd_bucket", self.qsgd_bucket, lo=1)
        for name in ("lr", "lattice_eps", "fast_mean", "slow_mean", "time_limit", "eval_every", "server_lr"):
            _check_float(name, getattr(self, name), positive=True)
        for name in ("sit", "swt"):
            _check_float(name, getattr(self, name), positive=False)
        _check_float("slow_fraction", self.slow_fraction, positive=False)
        if self.slow_fraction > 1:
            raise ValueError(f"slow_fraction: must be in [0, 1], got {self.slow_fraction}")
        _check_float("staleness_exponent", self.staleness_exponent, positive=False)
        self._check_optimizer()
        if self.buffer_size is not None:
            _check_int("buffer_size", self.buffer_size, lo=1)
            if self.num_clients is not None and self.buffer_size > self.num_clients:
                raise ValueError(f"buffer_size: Z = {self.buffer_size} exceeds num_clients = {self.num_clients}")
        if self.concurrency is not None:
            _check_int("concurrency", self.concurrency, lo=1)
            if self.num_clients is not None and self.concurrency > self.num_clients:
                raise ValueError(f"concurrency: C = {self.concurrency} exceeds num_clients = {self.num_clients}")
        _check_float("fedasync_alpha", self.fedasync_alpha, positive=True)
        if self.fedasync_alpha > 1:
            raise ValueError(f"fedasync_alpha: must be in (0, 1], got {self.fedasync_alpha}")
        for name in ("fedasync_a", "fedasync_b", "fedasync_rho"):
            _check_float(name, getattr(self, name), positive=False)
        if self.quantizer == "qsgd_norm" and self.bits < 2:
            raise ValueError(f"bits: qsgd_norm sends a sign and a level per coordinate, so it needs at least 2 bits; "
                             f"got {self.bits}")
        if self.server_quantizer is not None:
            _check_choice("server_quantizer", self.server_quantizer, QUANTIZERS)
        if self.server_bits is not None:
            _check_int("server_bits", self.server_bits, lo=1, hi=32)
        if self.server_quantizer is not None or self.server_bits is not None:
            sq, sb = self.effective_server_quantizer
            if sq == "identity" and sb != 32:
                raise ValueError(f"server_bits: the identity server quantizer sends 32-bit floats; got {sb}")
            if sq == "qsgd_norm" and sb < 2:
                raise ValueError(f"server_bits: qsgd_norm needs at least 2 bits (sign and level); got {sb}")
        if self.max_server_steps is not None:
            _check_int("max_server_steps", self.max_server_steps, lo=1)
        if self.eval_max_samples is not None:
            _check_int("eval_max_samples", self.eval_max_samples, lo=1)
        _check_int("eval_batch_size", self.eval_batch_size, lo=1)
        _check_int("eval_workers", self.eval_workers, lo=1)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, lo=1)
        if self.checkpoint_every is not None:
            _check_float("checkpoint_every", self.checkpoint_every, positive=True)
        self._check_can_finish()
        if not isinstance(self.dataset_options, Mapping):
            raise ValueError(f"dataset_options: expected a mapping, got {type(self.dataset_options).__name__}")
        for name in ("lr_decay", "scale_sit_by_bits", "server_averaging", "client_averaging", "client_lr_scaling",
                     "speed_lr_correction", "fedbuff_client_lr_s_over_n", "progress", "batched_clients"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true/false, got {getattr(self, name)!r}")

    def _check_speed_correction(self) -> None:
        """``speed_correction`` (QuAFL only), its cap, the retired ``speed_lr_correction``, ``divergence_factor``."""
        if self.speed_lr_correction is True:
            raise ValueError("speed_lr_correction: replaced by speed_correction (its factors were unbounded and came "
                             "from one short Monte-Carlo chain); use speed_correction: lr (realised progress), "
                             "normalized, or estimate (the old estimator, capped)")
        _check_choice("speed_correction", self.speed_correction, SPEED_CORRECTIONS)
        _check_float("speed_correction_cap", self.speed_correction_cap, positive=True)
        if self.speed_correction_cap < 1:
            raise ValueError(f"speed_correction_cap: must be >= 1 (factors lie in [1/cap, cap]), got "
                             f"{self.speed_correction_cap}")
        if self.speed_correction != "none" and self.algorithm != "quafl":
            raise ValueError(f"speed_correction: only QuAFL has a speed correction (algorithm is {self.algorithm})")
        if self.speed_correction == "estimate" and self.timing == "trace":
            raise ValueError("speed_correction: estimate is not available with timing: trace (its Monte-Carlo "
                             "chain assumes exponential or constant step times); use lr or normalized")
        if self.divergence_factor is not None:
            _check_float("divergence_factor", self.divergence_factor, positive=True)
            if self.divergence_factor <= 1:
                raise ValueError(f"divergence_factor: must be > 1 (or null to only catch non-finite values), got "
                                 f"{self.divergence_factor}")

    def _check_heterogeneity(self) -> None:
        """Data partition and client-speed keys: each option only with the choice it belongs to."""
        if self.partition is not None:
            _check_choice("partition", self.partition, PARTITIONS)
            own = DATASETS[self.dataset].get("partition", "natural")
            if own is None:
                raise ValueError(f"partition: the {self.dataset} problem has no samples to partition")
            if self.partition == "natural" and own != "natural":
                raise ValueError(f"partition: {self.dataset} has no natural client partition; use iid or dirichlet")
        if self.partition == "dirichlet":
            if self.dirichlet_alpha is None:
                raise ValueError("dirichlet_alpha: partition: dirichlet needs dirichlet_alpha (e.g. 0.1, 1 or 100)")
            _check_float("dirichlet_alpha", self.dirichlet_alpha, positive=True)
        elif self.dirichlet_alpha is not None:
            raise ValueError(f"dirichlet_alpha: only used with partition: dirichlet (partition is {self.partition})")
        if self.timing == "lognormal":
            if self.speed_sigma is None:
                raise ValueError("speed_sigma: timing: lognormal needs speed_sigma "
                                 "(sigma of the log mean step time, e.g. 0.5)")
            _check_float("speed_sigma", self.speed_sigma, positive=False)
        elif self.speed_sigma is not None:
            raise ValueError(f"speed_sigma: only used with timing: lognormal (timing is {self.timing})")
        if self.timing == "trace":
            if not isinstance(self.timing_trace, str) or not self.timing_trace.strip():
                raise ValueError(f"timing_trace: timing: trace needs the path of a CSV file, got {self.timing_trace!r}")
        elif self.timing_trace is not None:
            raise ValueError(f"timing_trace: only used with timing: trace (timing is {self.timing})")

    def _check_optimizer(self) -> None:
        """The clients' optimizer keys (qafl_core.optim): each with what it applies to."""
        for name in ("momentum", "weight_decay"):
            _check_float(name, getattr(self, name), positive=False)
        if self.momentum >= 1:
            raise ValueError(f"momentum: must be in [0, 1), got {self.momentum}")
        if self.optimizer != "sgd" and self.momentum != 0:
            raise ValueError(f"momentum: only used with optimizer: sgd (Adam uses torch's default betas); "
                             f"optimizer is {self.optimizer}")
        if self.optimizer == "sgd" and self.momentum == 0 and self.weight_decay == 0:
            return
        what = f"optimizer: {self.optimizer}" + (f" with momentum {self.momentum}" if self.momentum else "") + (
            f" with weight_decay {self.weight_decay}" if self.weight_decay else "")
        if self.dataset == "quadratic":
            raise ValueError(f"optimizer: the quadratic problem trains with plain SGD (its conservation check "
                             f"assumes it); got {what}")
        if self.batched_clients:
            raise ValueError(f"batched_clients: batched local steps are plain SGD only; got {what}")

    def _check_can_finish(self) -> None:
        """Refuse configs whose simulated clock never advances."""
        if (self.algorithm == "quafl" and self.sit == 0 and self.swt == 0 and self.max_server_steps is None):
            raise ValueError("sit, swt: QuAFL with sit = swt = 0 never advances its clock (a round takes sit + swt); "
                             "set sit or swt > 0, or bound the run with max_server_steps")

    def check_intervals(self, checkpoint_every: float | None = None) -> None:
        """ValueError unless a run evaluates and checkpoints at most :data:`MAX_INTERVALS` times up to ``time_limit``.

        Called before a run starts (``qafl_core.runner.run``, ``qafl_core.backend.run_many``), not on construction:
        a simulation stepped by hand (the benchmarks) may take an unbounded horizon and never evaluate.
        ``checkpoint_every`` overrides the config's (``qafl run --checkpoint-every``).
        """
        every = {"eval_every": self.eval_every,
                 "checkpoint_every": checkpoint_every if checkpoint_every is not None else self.checkpoint_every}
        for name, value in every.items():
            if value is not None and self.time_limit / value > MAX_INTERVALS:
                raise ValueError(f"{name}: {value} gives {self.time_limit / value:.3g} intervals over time_limit = "
                                 f"{self.time_limit}; at most {MAX_INTERVALS:,} are allowed (raise {name})")

    # ------------------------------------------------------------------ derived values
    @property
    def round_sit(self) -> float:
        """The server interaction time of one round, scaled by bits/32 when quantized (docs/timing.md#quafl-round-time)."""
        if self.scale_sit_by_bits and self.quantizer != "identity":
            return self.sit * self.bits / 32.0
        return self.sit

    @property
    def effective_buffer_size(self) -> int:
        return self.buffer_size if self.buffer_size is not None else self.clients_per_round

    @property
    def effective_server_quantizer(self) -> tuple[str, int]:
        """QAFeL's server quantizer and its bits: ``server_quantizer``/``server_bits``, else the run's own."""
        return (self.server_quantizer if self.server_quantizer is not None else self.quantizer,
                self.server_bits if self.server_bits is not None else self.bits)

    # ------------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dataset_options"] = dict(self.dataset_options)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                kwargs[f.name] = _coerce(f.name, data[f.name], f.type, source)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "RunConfig":
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def config_hash(self) -> str:
        """16 hex digits of sha256 over the canonical JSON (sorted keys, no spaces) of the result-affecting
        keys whose values differ from the :class:`RunConfig` defaults (ints given for float keys count as
        floats, so ``lr=1`` and ``lr=1.0`` are one config)."""
        defaults = _defaults()
        d = {}
        # the kind of device, not its spelling: auto on a machine without a GPU is cpu (today's hashes), any GPU is cuda
        for k, v in {**self.to_dict(), "device": identity_device(self.device)}.items():
            if k in _NON_RESULT_KEYS or v == defaults[k]:
                continue
            if isinstance(v, int) and not isinstance(v, bool) and isinstance(defaults[k], float):
                v = float(v)
            d[k] = v
        text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return RunConfig().to_dict()


# ---------------------------------------------------------------------- helpers
def _check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; expected one of {', '.join(choices)}")


def _check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if abs(value) > INT64_MAX:
        raise ValueError(f"{name}: {value} does not fit a 64-bit integer (at most {INT64_MAX})")
    if lo is not None and value < lo:
        raise ValueError(f"{name}: must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"{name}: must be <= {hi}, got {value}")


def _check_float(name: str, value: Any, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    if not positive and value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")


def _coerce(name: str, value: Any, typ: Any, source: str) -> Any:
    """Light coercion for values that come from YAML or ``--set key=value`` strings."""
    t = str(typ)
    if isinstance(value, str):
        low = value.strip().lower()
        if "None" in t and low in ("none", "null", "~", ""):
            return None
        if t.startswith("bool"):
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(f"{source}: {name}: expected true/false, got {value!r}")
        if t.startswith("int"):
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"{source}: {name}: expected an integer, got {value!r}") from None
        if t.startswith("float"):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{source}: {name}: expected a number, got {value!r}") from None
        if t.startswith("Mapping"):
            import yaml

            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError as exc:
                raise ValueError(f"{source}: {name}: not valid YAML ({yaml_problem(exc)}): {value!r}") from None
            except RecursionError:
                raise ValueError(f"{source}: {name}: nested too deeply") from None
            if not isinstance(parsed, dict):
                raise ValueError(f"{source}: {name}: expected a mapping like {{key: value}}, got {value!r}")
            return parsed
    if t.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(f"{source}: {name}: {value} is too large for a number") from None
    return value


def yaml_problem(exc: Exception) -> str:
    """One line for a YAML error (PyYAML's own message spans several lines, with an excerpt)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


def parse_set_options(items: list[str] | None) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}`` with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


#: A config file larger than this is refused unread (config files are a few kB; this guards against a wrong path).
MAX_CONFIG_BYTES = 16 * 2 ** 20


def load_config_file(path: str | None) -> dict:
    """A flat mapping of RunConfig keys from a YAML (or JSON) file; a clear error for anything else."""
    if path is None:
        return {}
    import yaml

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: config file not found")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{p}: {p.stat().st_size:,} bytes is not a config file (at most {MAX_CONFIG_BYTES:,})")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                         f"save the config file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({yaml_problem(exc)})") from None
    except RecursionError:
        raise ValueError(f"{p}: not a config file (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def config_from_args(config_file: str | None, sets: list[str] | None) -> RunConfig:
    """The RunConfig of a command line: the keys of ``config_file`` (if any), then each ``--set`` override."""
    data = load_config_file(config_file)
    data.update(parse_set_options(sets))
    return RunConfig.from_dict(data, source=config_file or "--set")
