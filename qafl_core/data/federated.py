"""The one federated dataset type every loader returns.

All samples of all clients live in a few contiguous tensors held in memory; a client is a slice
``[offsets[i], offsets[i+1])`` of them.  Batching a client is therefore one ``index_select`` with an
index tensor drawn from the client's own generator (no ``DataLoader``, no per-step Python lists),
which is what keeps the simulator's cost close to the cost of the local SGD itself (docs/design.md#local-sgd-without-copies).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch


def _offsets(counts: Sequence[int]) -> torch.Tensor:
    out = torch.zeros(len(counts) + 1, dtype=torch.int64)
    if len(counts):
        out[1:] = torch.cumsum(torch.as_tensor(list(counts), dtype=torch.int64), 0)
    return out


@dataclass
class FederatedDataset:
    """Clients -> train/test samples, concatenated per split.

    Attributes:
        name: dataset name (``femnist``, ``shakespeare``, ``synthetic``, ...).
        client_ids: one id per client (LEAF user ids, or shard numbers for i.i.d. splits).
        x_train: ``(N_train, *input_shape)`` inputs of every client, client after client.
        y_train: ``(N_train,)`` int64 labels.
        train_offsets: ``(num_clients + 1,)`` int64; client ``i`` owns rows ``[off[i], off[i+1])``.
        x_test, y_test, test_offsets: the same for the test split (per-client test sets; LEAF
            evaluates on the union of them).
        num_classes: number of output classes.
        hierarchies: optional group per client (LEAF ``hierarchies``, e.g. the play of a role).
        info: provenance: source files, LEAF flags and seeds, out-of-vocabulary policy, ...
    """

    name: str
    client_ids: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    train_offsets: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    test_offsets: torch.Tensor
    num_classes: int
    hierarchies: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.client_ids)
        for split in ("train", "test"):
            off = getattr(self, f"{split}_offsets")
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if off.shape != (n + 1,):
                raise ValueError(f"{self.name}: {split}_offsets must have shape ({n + 1},), got {tuple(off.shape)}")
            if len(x) != len(y) or int(off[-1]) != len(y):
                raise ValueError(f"{self.name}: {split} inputs ({len(x)}), labels ({len(y)}) and offsets "
                                 f"(total {int(off[-1])}) disagree")
        if self.hierarchies is not None and len(self.hierarchies) != n:
            raise ValueError(f"{self.name}: hierarchies has {len(self.hierarchies)} entries for {n} clients")
        self._check_values()

    def _check_values(self) -> None:
        """NaN/inf inputs or labels outside ``0..num_classes-1`` are a data error naming the client, wherever the
        tensors came from (loaders check their files first and name them; this also covers caches)."""
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
                row = int((~torch.isfinite(x.reshape(len(x), -1))).any(1).nonzero()[0])
                raise ValueError(f"{self.name}: {split} inputs of client '{self._owner(split, row)}' hold NaN or "
                                 f"infinite values")
            if y.numel() and (y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                bad = (y < 0) | (y >= self.num_classes) | (y != y.round() if y.is_floating_point() else False)
                row = int(bad.nonzero()[0]) if bool(bad.any()) else 0
                raise ValueError(f"{self.name}: {split} labels of client '{self._owner(split, row)}' must be integers "
                                 f"in 0..{self.num_classes - 1}, got {y[row].item()!r}")

    def _owner(self, split: str, row: int) -> str:
        off = getattr(self, f"{split}_offsets")
        return self.client_ids[int(torch.searchsorted(off, torch.tensor(row), right=True)) - 1]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_clients(cls, name: str, client_ids: Sequence[str],
                     train: Sequence[tuple[torch.Tensor, torch.Tensor]],
                     test: Sequence[tuple[torch.Tensor, torch.Tensor]], num_classes: int,
                     hierarchies: Sequence[str] | None = None, info: dict | None = None) -> "FederatedDataset":
        """Build from per-client ``(x, y)`` pairs (same order as ``client_ids``)."""
        if not (len(client_ids) == len(train) == len(test)):
            raise ValueError(f"{name}: {len(client_ids)} client ids but {len(train)} train and {len(test)} test sets")
        if len(client_ids) == 0:
            raise ValueError(f"{name}: no clients")

        def cat(parts, idx):
            return torch.cat([p[idx] for p in parts]) if parts else torch.empty(0)

        return cls(name=name, client_ids=[str(c) for c in client_ids],
                   x_train=cat(train, 0), y_train=cat(train, 1).long(), train_offsets=_offsets([len(p[1]) for p in train]),
                   x_test=cat(test, 0), y_test=cat(test, 1).long(), test_offsets=_offsets([len(p[1]) for p in test]),
                   num_classes=int(num_classes), hierarchies=list(hierarchies) if hierarchies is not None else None,
                   info=dict(info or {}))

    # ------------------------------------------------------------------ access
    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def train_counts(self) -> torch.Tensor:
        return self.train_offsets[1:] - self.train_offsets[:-1]

    def test_counts(self) -> torch.Tensor:
        return self.test_offsets[1:] - self.test_offsets[:-1]

    def client_train(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.train_offsets[i]), int(self.train_offsets[i + 1])
        return self.x_train[a:b], self.y_train[a:b]

    def client_test(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = int(self.test_offsets[i]), int(self.test_offsets[i + 1])
        return self.x_test[a:b], self.y_test[a:b]

    def subset(self, indices: Sequence[int]) -> "FederatedDataset":
        """A dataset with only the given clients, in the given order."""
        idx = [int(i) for i in indices]
        return FederatedDataset.from_clients(
            self.name, [self.client_ids[i] for i in idx], [self.client_train(i) for i in idx],
            [self.client_test(i) for i in idx], self.num_classes,
            [self.hierarchies[i] for i in idx] if self.hierarchies is not None else None,
            {**self.info, "subset_of": self.num_clients})

    def pooled(self) -> "FederatedDataset":
        """One client holding every client's train and test samples (a centralised node)."""
        return FederatedDataset(self.name, ["pooled"], self.x_train, self.y_train,
                                torch.tensor([0, len(self.y_train)]), self.x_test, self.y_test,
                                torch.tensor([0, len(self.y_test)]), self.num_classes, None,
                                {**self.info, "pooled_clients": self.num_clients})

    def stats(self) -> dict[str, Any]:
        """Statistics in the spirit of LEAF's ``stats.sh`` (per-client counts over train + test)."""
        tr, te = self.train_counts().double(), self.test_counts().double()
        tot = tr + te
        ntr = int(tr.sum())
        classes_seen = int(torch.unique(torch.cat([self.y_train, self.y_test])).numel()) if ntr else 0
        std = lambda t: float(t.std(unbiased=False)) if len(t) else 0.0  # noqa: E731  (LEAF uses np.std)
        return {
            "name": self.name,
            "num_clients": self.num_clients,
            "num_train_samples": ntr,
            "num_test_samples": int(te.sum()),
            "num_samples": int(tot.sum()),
            "num_classes": self.num_classes,
            "classes_present": classes_seen,
            "input_shape": list(self.input_shape),
            "samples_per_client_mean": float(tot.mean()),
            "samples_per_client_std": std(tot),
            "train_samples_per_client_mean": float(tr.mean()),
            "train_samples_per_client_std": std(tr),
            "test_samples_per_client_mean": float(te.mean()),
            "test_samples_per_client_std": std(te),
            "min_train_samples": int(tr.min()), "max_train_samples": int(tr.max()),
        }
