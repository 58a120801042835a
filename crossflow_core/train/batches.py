"""Deterministic, resumable batches from a prepared dataset held in memory.

Each epoch is a fresh permutation drawn from a generator seeded by (seed, epoch), so the
data position is two integers (`epoch`, `position`) in `state_dict`, and a resumed run sees
exactly the batches an uninterrupted one would. With several processes, every process walks
the same global permutation and takes its own slice of each global batch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from crossflow_core.codecs import SourceCodec, TargetCodec
from crossflow_core.data.arrays import TrainingArrays
from crossflow_core.errors import CrossflowError
from crossflow_core.train.system import Batch


class EpochSampler:
    """Global batches of indices; `next_indices()` returns this process's slice [B / world].

    Every process gets exactly `batch_size // world` indices per global batch (the ragged tail
    of an epoch is dropped for all alike), so no process runs out of data and waits at a
    collective call while the others go on; `next_micro_batches()` splits that slice in `accum`.
    """

    def __init__(
        self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, accum: int = 1
    ) -> None:
        if num_samples < batch_size:
            raise CrossflowError(
                f"the dataset has {num_samples} samples, fewer than train.batch_size={batch_size}: "
                f"set train.batch_size={max(1, num_samples // world * world)} or prepare more data"
            )
        parts = world * accum
        if batch_size % parts:
            raise CrossflowError(
                f"train.batch_size={batch_size} must be divisible by the {world} processes x "
                f"train.grad_accum={accum} micro-batches: set train.batch_size="
                f"{max(parts, batch_size // parts * parts)}"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.accum = rank, world, accum
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)
        self._trace = _IndexTrace.from_env(rank)

    def _permutation(self, epoch: int) -> Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=gen)

    def next_indices(self) -> Tensor:
        """Indices [batch_size // world] of this process's part of the next global batch."""
        if self.position + self.batch_size > self.num_samples:  # drop the ragged tail
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        batch = self._perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        per = self.batch_size // self.world
        mine = batch[self.rank * per : (self.rank + 1) * per]
        if self._trace is not None:
            self._trace.write(self.epoch, self.position - self.batch_size, mine)
        return mine

    def next_micro_batches(self) -> tuple[Tensor, ...]:
        """This process's slice of the next global batch as `accum` micro-batches [B / (world * accum)]."""
        return self.next_indices().chunk(self.accum)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


TRACE_ENV = "CROSSFLOW_TRACE_INDICES"


@dataclass
class _IndexTrace:
    """Debugging aid: with $CROSSFLOW_TRACE_INDICES=DIR every process appends the indices it
    trains on to DIR/indices_rank<rank>.jsonl (one line per global batch)."""

    path: Path

    @classmethod
    def from_env(cls, rank: int) -> _IndexTrace | None:
        folder = os.environ.get(TRACE_ENV)
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        return cls(Path(folder) / f"indices_rank{rank}.jsonl")

    def write(self, epoch: int, position: int, indices: Tensor) -> None:
        line = {"epoch": epoch, "position": position, "indices": indices.tolist()}
        with self.path.open("a") as f:
            f.write(json.dumps(line) + "\n")


@dataclass
class BatchMaker:
    """Turns indices into a `Batch` on `device`: each codec reads the fields it needs."""

    arrays: TrainingArrays
    source: SourceCodec
    target: TargetCodec
    device: torch.device

    def __call__(self, idx: Tensor) -> Batch:
        return Batch(source=self.source.from_fields(self.arrays, idx, self.device),
                     target=self.target.from_fields(self.arrays, idx, self.device))
