"""The checks a loaded recipe must pass beyond its types: which source, VE and target fit
together, and the value ranges of its keys (each failure is one `RecipeError` line)."""

from __future__ import annotations

import math
from typing import Any

from crossflow_core.errors import CrossflowError
from crossflow_core.recipe_sections import Recipe


class RecipeError(CrossflowError):
    """A recipe file or override is invalid."""


_IMAGE_SOURCES = ("upsampled", "image")
TEXT_VE_OBJECTIVES = ("image_text_contrastive", "text_text_contrastive", "text_reconstruction")
IMAGE_VE_OBJECTIVES = ("image_reconstruction", "target_contrastive")


def _check_pair(recipe: Recipe) -> None:
    """The source, VE and target must fit together."""
    source, ve, train = recipe.source, recipe.ve, recipe.train
    if ve.kind == "text" and source.kind != "text":
        raise RecipeError(
            f"ve.kind=text needs source.kind=text, not {source.kind!r}: "
            "use ve.kind=identity or noise_concat for an image source"
        )
    if ve.kind != "text" and source.kind not in _IMAGE_SOURCES:
        raise RecipeError(
            f"ve.kind={ve.kind} needs an image source, not source.kind={source.kind!r}: "
            "use ve.kind=text for a text source"
        )
    if ve.kind == "image" and source.kind != "image":
        raise RecipeError(
            f"ve.kind=image needs source.kind=image, not {source.kind!r}: "
            "use ve.kind=identity or noise_concat for an upsampled source"
        )
    if source.kind == "image" and ve.kind != "image":
        raise RecipeError(
            f"source.kind=image needs ve.kind=image (its shape is not the target's), not {ve.kind!r}"
        )
    for kind, allowed in (("text", TEXT_VE_OBJECTIVES), ("image", IMAGE_VE_OBJECTIVES)):
        if ve.kind == kind and ve.objective not in allowed:
            raise RecipeError(
                f"ve.objective={ve.objective} is not an objective of the {kind} VE: "
                f"choose one of {', '.join(allowed)}"
            )
    if ve.kind not in ("text", "image") and train.stage != "joint":
        raise RecipeError(
            f"train.stage={train.stage} pretrains a VE, but ve.kind={ve.kind} has none "
            "to pretrain: use train.stage=joint"
        )
    if ve.kind == "text" and ve.width % ve.heads:
        raise RecipeError(f"ve.width={ve.width} must be divisible by ve.heads={ve.heads}: change ve.heads")
    if ve.kind == "text" and ve.width >> ve.reduce_layers < 1:
        raise RecipeError(
            f"ve.reduce_layers={ve.reduce_layers} halves ve.width={ve.width} below 1: use fewer"
        )
    last = ve.width >> max(ve.reduce_layers - 1, 0)
    if ve.kind == "text" and ve.reduction == "encoder" and last % ve.heads:
        raise RecipeError(
            f"ve.reduction=encoder attends at width {last} after {ve.reduce_layers - 1} halvings of "
            f"ve.width={ve.width}, not divisible by ve.heads={ve.heads}: use fewer heads or reduce_layers"
        )
    from crossflow_core.data.shapes_vocab import CATEGORIES

    unknown = [c for c in recipe.data.categories if c not in CATEGORIES]
    if unknown:
        raise RecipeError(
            f"data.categories names unknown categories {unknown}: use some of {', '.join(CATEGORIES)}"
        )
    target = recipe.target
    if target.kind == "depth" and not target.max_depth > target.min_depth:
        raise RecipeError(
            f"target.max_depth={target.max_depth} must be > target.min_depth={target.min_depth}"
        )
    if target.kind == "depth" and target.log and target.min_depth <= 0:
        raise RecipeError("target.log=true needs target.min_depth > 0 (log 0 is -inf): set e.g. 0.1")
    _check_trainable_target(recipe)
    if source.kind == "upsampled" and recipe.data.image_size % source.factor:
        raise RecipeError(
            f"data.image_size={recipe.data.image_size} is not divisible by "
            f"source.factor={source.factor}: choose a factor that divides it"
        )


TRAINABLE_TARGETS = ("text_ae",)  # target kinds with their own network (pretrained in the target phase)


def _check_trainable_target(recipe: Recipe) -> None:
    """A text autoencoder target needs its pretraining steps; a fixed target has none to pretrain."""
    target, steps = recipe.target, recipe.train.target_steps
    if target.kind not in TRAINABLE_TARGETS:
        if steps:
            raise RecipeError(
                f"train.target_steps={steps} pretrains a target network, but target.kind={target.kind} "
                "has none: set train.target_steps=0"
            )
        return
    if steps < 1:
        raise RecipeError(
            f"target.kind={target.kind} trains its autoencoder first: set train.target_steps >= 1"
        )
    if target.width % target.heads:
        raise RecipeError(
            f"target.width={target.width} must be divisible by target.heads={target.heads}: "
            "change target.heads"
        )
    if target.width >> target.reduce_layers < 1:
        raise RecipeError(
            f"target.reduce_layers={target.reduce_layers} halves target.width={target.width} below 1: "
            "use fewer"
        )


_POSITIVE = "must be > 0"
_NON_NEGATIVE = "must be >= 0"
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("data.image_size", lambda v: v >= 16, "must be >= 16"),
    ("data.num_samples", lambda v: v >= 1, _POSITIVE),
    ("data.shard_size", lambda v: v >= 1, _POSITIVE),
    ("data.workers", lambda v: v >= 1, "must be >= 1"),
    ("source.max_length", lambda v: v >= 1, _POSITIVE),
    ("source.factor", lambda v: v >= 2, "must be >= 2"),
    ("data.depth_scale", lambda v: v > 0, _POSITIVE),
    ("target.min_depth", lambda v: v >= 0, _NON_NEGATIVE),
    ("target.max_depth", lambda v: v > 0, _POSITIVE),
    ("ve.width", lambda v: v >= 1, _POSITIVE),
    ("ve.depth", lambda v: v >= 1, _POSITIVE),
    ("ve.heads", lambda v: v >= 1, _POSITIVE),
    ("ve.ffn", lambda v: v >= 1, _POSITIVE),
    ("ve.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("ve.reduce_layers", lambda v: v >= 0, _NON_NEGATIVE),
    ("ve.kl_weight", lambda v: v >= 0, _NON_NEGATIVE),
    ("ve.enc_weight", lambda v: v >= 0, _NON_NEGATIVE),
    ("ve.image_encoder_width", lambda v: v >= 1, _POSITIVE),
    ("model.patch_size", lambda v: v >= 1, _POSITIVE),
    ("model.width", lambda v: v is None or v >= 4, "must be >= 4"),
    ("model.depth", lambda v: v is None or v >= 1, _POSITIVE),
    ("model.heads", lambda v: v is None or v >= 1, _POSITIVE),
    ("model.mlp_ratio", lambda v: v > 0, _POSITIVE),
    (
        "model.unet_channels",
        lambda v: len(v) >= 1 and min(v) >= 1,
        "must be a non-empty list of positive ints",
    ),
    ("model.unet_layers", lambda v: v >= 1, _POSITIVE),
    ("model.unet_head_dim", lambda v: v >= 1, _POSITIVE),
    ("model.unet_layout_read", lambda v: v >= 0, _NON_NEGATIVE),
    ("flow.sigma_min", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("flow.cfg_indicator", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("flow.time_mean", lambda v: math.isfinite(v), "must be a finite number"),
    ("flow.time_std", lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"),
    ("train.steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.batch_size", lambda v: v >= 1, _POSITIVE),
    ("train.grad_accum", lambda v: v >= 1, _POSITIVE),
    ("train.min_lr", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.decay_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.lr", lambda v: v > 0, _POSITIVE),
    ("train.weight_decay", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.betas", lambda v: all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    ("train.warmup_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("train.grad_clip", lambda v: v is None or v > 0, "must be > 0, or null to disable"),
    ("train.ve_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.target_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("target.max_length", lambda v: v >= 2, "must be >= 2 (a caption needs its start and end tokens)"),
    ("target.latent_channels", lambda v: v >= 1, _POSITIVE),
    ("target.latent_size", lambda v: v >= 1, _POSITIVE),
    ("target.width", lambda v: v >= 1, _POSITIVE),
    ("target.depth", lambda v: v >= 1, _POSITIVE),
    ("target.decoder_depth", lambda v: v >= 1, _POSITIVE),
    ("target.heads", lambda v: v >= 1, _POSITIVE),
    ("target.ffn", lambda v: v >= 1, _POSITIVE),
    ("target.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("target.reduce_layers", lambda v: v >= 0, _NON_NEGATIVE),
    ("target.kl_weight", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.num_workers", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.checkpoint_every", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.keep_checkpoints", lambda v: v >= 1, _POSITIVE),
    ("train.sample_every", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.log_every", lambda v: v >= 1, _POSITIVE),
    ("sample.steps", lambda v: v >= 1, _POSITIVE),
    ("sample.batch_size", lambda v: v >= 1, _POSITIVE),
    ("sample.temperature", lambda v: 0 <= v < float("inf"), "must be a number >= 0 (1 = the trained z0)"),
)


def _check_ranges(recipe: Recipe) -> None:
    for key, ok, rule in _RANGES:
        section, name = key.split(".")
        part = getattr(recipe, section)
        if not hasattr(part, name):  # a key of another kind (e.g. source.factor of a text source)
            continue
        value = getattr(part, name)
        if not ok(value):
            raise RecipeError(f"{key}={value!r} {rule}")
    train = recipe.train
    if train.decay_steps and train.lr_schedule != "constant":
        raise RecipeError(
            f"train.decay_steps={train.decay_steps} is the tail of the constant schedule; "
            f"train.lr_schedule={train.lr_schedule} already decays: set one of them"
        )
    if train.decay_steps > train.steps:
        raise RecipeError(f"train.decay_steps={train.decay_steps} must be <= train.steps={train.steps}")
    model = recipe.model
    channels = list(model.unet_channels)
    if len(model.unet_attention) != len(channels):
        attention = "[" + ", ".join(str(a).lower() for a in model.unet_attention) + "]"
        raise RecipeError(
            f"model.unet_attention={attention} needs one true/false per level of "
            f"model.unet_channels={channels}"
        )
    for ch, attn in zip(channels, model.unet_attention):
        if attn and ch % model.unet_head_dim:
            raise RecipeError(
                f"model.unet_head_dim={model.unet_head_dim} does not divide the {ch} channels of a U-Net "
                "level with attention: change model.unet_head_dim or model.unet_channels"
            )
