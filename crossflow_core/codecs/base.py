"""The task seam: a task is a source codec, a target codec and the VE between them.

A *source codec* turns raw inputs (captions, low-res images ...) into a `SourceBatch`, what the
VE (or, with no VE, the flow itself) starts from. A *target codec* maps raw outputs (images,
depth maps ...) to the latents the flow generates and back. Both also say which per-sample
fields of a prepared shard they read in training, and may precompute features at `prepare`
time so training never loads a frozen encoder. Nothing downstream (VE, path, losses, solvers,
loop, checkpoints, pipeline) knows which task it runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SourceBatch:
    """What a VE consumes. Text: x = tokens [B, L, D], mask [B, L] bool (True = real token).
    Image-like: x [B, C, H, W], mask None."""

    x: Tensor
    mask: Tensor | None = None

    def to(self, device: torch.device | str) -> SourceBatch:
        return SourceBatch(self.x.to(device), None if self.mask is None else self.mask.to(device))

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass(frozen=True)
class RawSample:
    """One sample at prepare time: the image uint8 [H, W, 3], its caption ("" when none) and, for
    depth tasks, its depth map float32 [H, W] in metres (0 where unknown)."""

    image: np.ndarray
    caption: str
    depth: np.ndarray | None = None


class Codec(ABC):
    """The data side shared by source and target codecs."""

    kind: str = ""
    needs_captions: bool = False  # prepare refuses images without captions when True
    needs_depth: bool = False  # prepare reads a depth map per image (and stores it) when True

    @abstractmethod
    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        """Shard fields read in training, given the fields a dataset stores."""

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        """Features stored in the shards at prepare time: field -> array [N, ...]. None by default."""
        return {}

    def precomputed_fields(self) -> tuple[str, ...]:
        """The fields `precompute` writes."""
        return ()

    def caption_tokens(self, captions: list[str]) -> list[int] | None:
        """Untruncated token counts of captions, for the manifest's statistics (None: no tokenizer)."""
        return None

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description, recorded in manifests and exported models, checked on reuse."""


class SourceCodec(Codec):
    """Raw inputs -> `SourceBatch`."""

    @abstractmethod
    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> SourceBatch:
        """The sources of samples `idx` [B] of a loaded dataset (`TrainingArrays`)."""

    @abstractmethod
    def encode(self, inputs: list[Any], device: torch.device) -> SourceBatch:
        """Raw inputs (captions, or uint8 [H, W, 3] images of one size) -> `SourceBatch`."""

    @abstractmethod
    def spec(self) -> dict[str, Any]:
        """The shape facts a VE is built from (e.g. num_tokens, token_dim)."""

    def grid(self, prompts: tuple[str, ...], fields: Any, device: torch.device, n: int = 8) -> SourceBatch:
        """The fixed sources of the periodic sample grids: the first `n` training samples."""
        idx = torch.arange(min(n, len(fields)))
        return self.from_fields(fields, idx, device)


@dataclass(frozen=True)
class TargetLoss:
    """A trainable target codec's own training loss (scalar) and a quality measure in [0, 1]
    logged beside it (the text autoencoder: its token accuracy)."""

    loss: Tensor
    accuracy: Tensor


class TargetCodec(Codec):
    """Raw outputs <-> latents [B, C, H, W].

    A *fixed* codec (pixels, a frozen VAE) has no network to train: `from_fields` gives the target
    latents. A *trainable* one (the captioning text autoencoder) returns its network from
    `trainable()`; training then holds it, pretrains it alone in the "target" phase, and freezes
    it afterwards; `from_fields` gives what that network reads, and the network has
    `latents(target) -> Tensor [B, C, h, w]` (deterministic: the flow's z1) and
    `loss(target) -> TargetLoss`. `use_trainable` hands an exported network back for `decode`.
    """

    def trainable(self, data: Any = None) -> nn.Module | None:
        """The codec's own network when it is trained with the flow, else None (a fixed codec).
        Built on the first call, sized by the training `data` (a loaded dataset) where it needs to be."""
        return None

    def use_trainable(self, network: nn.Module) -> None:
        """Decode with `network` (the trained weights of what `trainable()` describes)."""
        raise TypeError(f"target codec {self.kind!r} has no trainable network")

    @abstractmethod
    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latent of a square sample of side `size`."""

    @abstractmethod
    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> Any:
        """The target latents [B, C, h, w] of samples `idx` of a loaded dataset (a trainable
        codec: what its network reads)."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Any:
        """latents [B, C, h, w] -> outputs (images: float [B, 3, H, W] in [0, 1]; captions: list[str])."""
