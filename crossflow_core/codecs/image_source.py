"""Source codec "image" (captioning, depth): the input image, in pixels or a frozen VAE's latents.

The image stays at the prepared size; an image VE (crossflow_core/image_ve.py) maps it to the
target's latent shape (a depth map, a text latent). In pixel space the shard's PNG is read at
train time (cheap); in VAE space `prepare` precomputes `source.npy` so training never loads it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossflow_core.codecs.base import RawSample, SourceBatch, SourceCodec
from crossflow_core.codecs.images import encode_float16
from crossflow_core.encoders.latents import LatentSpace, build_latent_space, to_model_range
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import ImageSourceConfig, PixelTargetConfig, VAETargetConfig


def image_space(cfg: ImageSourceConfig, device: torch.device | str = "cpu") -> LatentSpace:
    """The latent space an image source lives in (pixels, or the VAE it names)."""
    if cfg.space == "pixels":
        return build_latent_space(PixelTargetConfig(), device)
    if not cfg.vae:
        raise CrossflowError(
            "source.space=vae needs source.vae: a diffusers AutoencoderKL hub id or local folder"
        )
    return build_latent_space(
        VAETargetConfig(vae=cfg.vae, scale_factor=cfg.scale_factor, shift_factor=cfg.shift_factor), device
    )


class ImageSource(SourceCodec):
    """uint8 images [H, W, 3] of the prepared size -> `SourceBatch(x)` with x [B, C, h, w]."""

    kind = "image"

    def __init__(
        self, cfg: ImageSourceConfig, device: torch.device | str = "cpu", image_size: int | None = None
    ) -> None:
        self.cfg, self.device, self.image_size = cfg, torch.device(device), image_size
        self._space: LatentSpace | None = None

    @property
    def space(self) -> LatentSpace:
        if self._space is None:
            self._space = image_space(self.cfg, self.device)
        return self._space

    def train_fields(self, stored: tuple[str, ...]) -> tuple[str, ...]:
        return ("source.npy",) if "source.npy" in stored else ("png",)

    def precomputed_fields(self) -> tuple[str, ...]:
        return () if self.cfg.space == "pixels" else ("source.npy",)

    def precompute(self, samples: list[RawSample]) -> dict[str, np.ndarray]:
        if self.cfg.space == "pixels":  # the PNG is the source
            return {}
        return {"source.npy": encode_float16(self.space, np.stack([s.image for s in samples]))}

    def from_fields(self, fields: Any, idx: Tensor, device: torch.device) -> SourceBatch:
        if "source.npy" in fields:
            return SourceBatch(fields["source.npy"][idx].to(device, torch.float32))
        return self.encode_uint8(fields["png"][idx], device)

    @torch.no_grad()
    def encode_uint8(self, images: Tensor | np.ndarray, device: torch.device) -> SourceBatch:
        """uint8 images [B, 3, H, W] or [B, H, W, 3] -> the source in its latent space."""
        x = to_model_range(images).to(device)
        return SourceBatch(self.space.encode(x).float())

    def encode(self, inputs: list[Any], device: torch.device) -> SourceBatch:
        """uint8 images [H, W, 3], all of one size -> `SourceBatch`."""
        arrays = [np.asarray(image) for image in inputs]
        if not arrays:
            raise CrossflowError("no input images given")
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise CrossflowError(f"images of one batch must share one size, got {sorted(shapes)}")
        return self.encode_uint8(np.stack(arrays), device)

    def spec(self) -> dict[str, Any]:
        """The source as the image VE sees it: channels and side (pixels: 3 x image size; VAE:
        its latent channels x image size / its downsampling)."""
        if self.image_size is None:
            raise CrossflowError("an image source needs the prepared image size to describe its shape")
        channels, side, _ = self.space.latent_shape(self.image_size)
        return {"space": self.cfg.space, "channels": int(channels), "size": int(side)}

    def identity(self) -> dict[str, Any]:
        """kind "image", its space, and that space's own identity (a VAE's name and revision)."""
        if self._space is not None or self.cfg.space == "pixels":
            latent = self.space.identity()
        else:
            latent = {"kind": "vae", "name": self.cfg.vae}
        return {"kind": "image", "space": self.cfg.space, "latent": latent}
