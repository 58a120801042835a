"""Image <-> latent spaces the flow targets; each owns its own scale, shift and shapes.

Images in the model range are float [B, 3, H, W] in [-1, 1]; `to_model_range` and `to_uint8`
are the only converters between those and uint8 pixels.

- `PixelSpace`: latents are the images themselves ([3, H, W], scale 1, shift 0).
- `VAELatentSpace`: a diffusers ``AutoencoderKL``; latents = (mean - shift) * scale
  (or a posterior sample instead of the mean with ``sample=True``), decode inverts it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossflow_core.encoders.revision import weights_revision
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import TargetConfig


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [B, H, W, 3] or [B, 3, H, W] -> float32 [B, 3, H, W] in [-1, 1] (x / 127.5 - 1)."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8:
        raise TypeError(f"to_model_range expects uint8 images, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"to_model_range expects [B, H, W, 3] or [B, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    elif x.shape[1] != 3:
        raise ValueError(f"to_model_range expects 3 channels, got shape {tuple(x.shape)}")
    return x.float().div(127.5).sub(1.0).contiguous()


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, 3, H, W] (clamped, rounded to nearest)."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


class LatentSpace(ABC):
    """Maps images in [-1, 1] to the latents the flow model generates, and back."""

    scale: float = 1.0
    shift: float = 0.0

    @abstractmethod
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images float [B, 3, H, W] in [-1, 1] -> latents float [B, C, h, w]."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] -> images float [B, 3, H, W] in [-1, 1]."""

    @abstractmethod
    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        """(C, h, w) of the latent of a square image of side ``image_size``."""

    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able description (kind, name, scale, shift, ...) for manifests and checks."""


class PixelSpace(LatentSpace):
    """The identity: latents are pixels in [-1, 1], [3, H, W]."""

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        return (3, image_size, image_size)

    def identity(self) -> dict[str, Any]:
        return {"kind": "pixels", "channels": 3, "downsample": 1, "scale": 1.0, "shift": 0.0}


class VAELatentSpace(LatentSpace):
    """A frozen diffusers ``AutoencoderKL``: latents = (mean_or_sample - shift) * scale.

    ``scale`` / ``shift`` default to the VAE config's ``scaling_factor`` / ``shift_factor`` (or 0).
    """

    def __init__(self, vae: Any, *, name: str, path: str | None = None, scale: float | None = None,
                 shift: float | None = None, device: str | torch.device = "cpu") -> None:
        self.vae = vae.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.name = name
        self.path = path
        self.revision = weights_revision(path or name)
        config = vae.config
        self.scale = float(scale if scale is not None else config.scaling_factor)
        self.shift = float(shift if shift is not None else (getattr(config, "shift_factor", None) or 0.0))
        self.channels = int(config.latent_channels)
        self.downsample = 2 ** (len(config.block_out_channels) - 1)
        self.dtype = next(vae.parameters()).dtype

    @torch.inference_mode()
    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> (mode or sample of q(z|x) - shift) * scale, float32."""
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return ((z.float() - self.shift) * self.scale)

    @torch.inference_mode()
    def moments(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> the posterior q(z|x) as [B, 2C, h, w]: its mean, then its
        log-variance, in the VAE's own (unscaled) space, as diffusers' `latent_dist.parameters`."""
        dist = self.vae.encode(images.to(self.device, self.dtype)).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1).float()

    def from_moments(self, moments: torch.Tensor, sample: bool) -> torch.Tensor:
        """Stored moments [B, 2C, h, w] -> latents [B, C, h, w]: a draw mean + std * eps (eps from
        torch's global RNG, which checkpoints save) or the mode (the mean), then scaled and shifted.
        The log-variance is clamped to [-30, 20] as diffusers' DiagonalGaussianDistribution does."""
        mean, logvar = moments.float().chunk(2, dim=1)
        z = mean
        if sample:
            z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * torch.randn_like(mean)
        return (z - self.shift) * self.scale

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, h, w] -> images [B, 3, H, W] clamped to [-1, 1], float32."""
        z = latents.to(self.device, torch.float32) / self.scale + self.shift
        return self.vae.decode(z.to(self.dtype)).sample.float().clamp(-1.0, 1.0)

    def latent_shape(self, image_size: int) -> tuple[int, int, int]:
        if image_size % self.downsample:
            raise CrossflowError(
                f"image size {image_size} is not divisible by the VAE's downsampling factor "
                f"{self.downsample}: use a multiple of {self.downsample}"
            )
        side = image_size // self.downsample
        return (self.channels, side, side)

    def identity(self) -> dict[str, Any]:
        return {"kind": "vae", "name": self.name, "path": self.path, "revision": self.revision,
                "channels": self.channels,
                "downsample": self.downsample, "scale": self.scale, "shift": self.shift}


def _load_vae(name: str) -> tuple[Any, str | None]:
    """AutoencoderKL from a local dir (or its ``vae/`` subfolder), a hub id, or ``org/repo/subfolder``."""
    from diffusers import AutoencoderKL

    from crossflow_core.encoders.text import load_pretrained

    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
            path = path / "vae"
        return load_pretrained(AutoencoderKL.from_pretrained, str(path), "VAE"), str(path)
    parts = name.split("/")
    if len(parts) == 3 and not name.startswith(("/", ".", "~")) and all(parts):
        repo, sub = "/".join(parts[:2]), parts[2]
        return load_pretrained(AutoencoderKL.from_pretrained, repo, "VAE", subfolder=sub), None
    return load_pretrained(AutoencoderKL.from_pretrained, name, "VAE"), None


def build_latent_space(cfg: TargetConfig, device: str | torch.device = "cpu") -> LatentSpace:
    """The latent space named by a recipe's ``target`` section (kind pixels or vae)."""
    if cfg.kind == "pixels":
        return PixelSpace()
    if not cfg.vae:
        raise CrossflowError("target.kind=vae needs target.vae: "
                             "a diffusers AutoencoderKL hub id or local folder")
    vae, path = _load_vae(cfg.vae)
    return VAELatentSpace(vae, name=cfg.vae, path=path, scale=cfg.scale_factor,
                          shift=cfg.shift_factor, device=device)
