"""Codecs by kind: `build_codecs(recipe)` gives a task's (source, target) pair."""

from __future__ import annotations

import torch

from crossflow_core.codecs.base import Codec, RawSample, SourceBatch, SourceCodec, TargetCodec
from crossflow_core.codecs.depth import DepthTarget
from crossflow_core.codecs.image_source import ImageSource
from crossflow_core.codecs.images import ImageTarget
from crossflow_core.codecs.text import TextSource
from crossflow_core.codecs.text_ae import TextAETarget
from crossflow_core.codecs.upsampled import UpsampledSource
from crossflow_core.encoders.latents import build_latent_space
from crossflow_core.recipe import SourceConfig, TargetConfig

__all__ = [
    "Codec",
    "RawSample",
    "SourceBatch",
    "SourceCodec",
    "TargetCodec",
    "build_codecs",
    "build_source",
    "build_target",
]


def build_target(cfg: TargetConfig, device: torch.device | str = "cpu") -> TargetCodec:
    """The target codec a recipe's `target` section names."""
    if cfg.kind == "depth":
        return DepthTarget(cfg)
    if cfg.kind == "text_ae":
        return TextAETarget(cfg, device=device)
    return ImageTarget(build_latent_space(cfg, device=device), posterior=getattr(cfg, "posterior", "mode"))


def build_source(
    cfg: SourceConfig,
    target: TargetCodec,
    device: torch.device | str = "cpu",
    token_dim: int | None = None,
    image_size: int | None = None,
) -> SourceCodec:
    """The source codec a recipe's `source` section names (image sources live in the target's space)."""
    if cfg.kind == "text":
        return TextSource(cfg, device=device, token_dim=token_dim)
    if cfg.kind == "upsampled":
        assert isinstance(target, ImageTarget)
        return UpsampledSource(cfg.factor, target)
    if cfg.kind == "image":
        return ImageSource(cfg, device=device, image_size=image_size)
    raise ValueError(f"unknown source kind {cfg.kind!r}")  # the recipe loader refuses it first


def build_codecs(
    source: SourceConfig,
    target: TargetConfig,
    device: torch.device | str = "cpu",
    token_dim: int | None = None,
    image_size: int | None = None,
) -> tuple[SourceCodec, TargetCodec]:
    """`image_size`: side of the prepared samples (image sources describe their shape with it)."""
    t = build_target(target, device)
    return build_source(source, t, device, token_dim, image_size), t
