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
from torch import Tensor


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
    """One sample at prepare time: the image uint8 [H, W, 3] and its caption ("" when none)."""

    image: np.ndarray
    caption: str


class Codec(ABC):
    """The data side shared by source and target codecs."""

    kind: str = ""
    needs_captions: bool = False  # prepare refuses images without captions when True

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


class TargetCodec(Codec):
    """Raw outputs <-> latents [B, C, H, W]."""

    @abstractmethod
    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latent of a square sample of side `size`."""

    @abstractmethod
    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> Tensor:
        """The target latents [B, C, h, w] of samples `idx` of a loaded dataset."""

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:
        """latents [B, C, h, w] -> outputs (images: float [B, 3, H, W] in [0, 1])."""
