"""Deterministic, resumable batches from a prepared dataset held in memory.

Each epoch is a fresh permutation drawn from a generator seeded by (seed, epoch), so the
data position is two integers (`epoch`, `position`) in `state_dict`, and a resumed run sees
exactly the batches an uninterrupted one would. With several processes, every process walks
the same global permutation and takes its own slice of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crossflow_core.data.arrays import TrainingArrays
from crossflow_core.encoders.latents import LatentSpace, to_model_range
from crossflow_core.encoders.text import TextEncoder
from crossflow_core.errors import CrossflowError
from crossflow_core.train.system import Batch


class EpochSampler:
    """Global batches of indices; `next_indices()` returns this process's slice [B / world]."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        if num_samples < batch_size:
            raise CrossflowError(
                f"the dataset has {num_samples} samples, fewer than train.batch_size={batch_size}: "
                f"--set train.batch_size={max(1, num_samples // world * world)} or prepare more data"
            )
        if batch_size % world:
            raise CrossflowError(
                f"train.batch_size={batch_size} must be divisible by the {world} processes: "
                f"--set train.batch_size={max(world, batch_size // world * world)}"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.position = 0, 0
        self._perm = self._permutation(0)

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
        return batch[self.rank * per : (self.rank + 1) * per]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


@dataclass
class BatchMaker:
    """Turns indices into a `Batch` on `device`, encoding on the fly what was not precomputed."""

    arrays: TrainingArrays
    latent_space: LatentSpace
    text_encoder: TextEncoder | None
    device: torch.device

    def __call__(self, idx: Tensor) -> Batch:
        a = self.arrays
        if a.latents is not None:
            latents = a.latents[idx].to(self.device, torch.float32)
        else:
            with torch.no_grad():
                latents = self.latent_space.encode(to_model_range(a.images[idx]).to(self.device))
        if a.text_tokens is not None and a.text_mask is not None:
            tokens = a.text_tokens[idx].to(self.device, torch.float32)
            mask = a.text_mask[idx].to(self.device)
        else:
            assert self.text_encoder is not None, "text embeddings were not precomputed"
            emb = self.text_encoder.encode([a.captions[i] for i in idx.tolist()])
            tokens, mask = emb.tokens.to(self.device), emb.mask.to(self.device)
        return Batch(image_latents=latents, text_tokens=tokens, text_mask=mask)
