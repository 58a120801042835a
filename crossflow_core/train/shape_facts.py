"""The shape facts a dry run needs without loading any weights: the LM's token width and the
VAE's latent channels and downsampling, from an explicit value, a local config.json, or a small
table of known encoders."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import Recipe

# Token width of known text encoders (the LM's hidden size), for hub ids not on disk.
KNOWN_TOKEN_DIMS: dict[str, int] = {
    "minilm": 384,
    "sentence-transformers/all-MiniLM-L6-v2": 384,
    "openai/clip-vit-base-patch32": 512,
    "openai/clip-vit-base-patch16": 512,
    "openai/clip-vit-large-patch14": 768,
    "openai/clip-vit-large-patch14-336": 768,
    "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": 1280,
    "google/t5-v1_1-base": 768,
    "google/t5-v1_1-large": 1024,
    "google/t5-v1_1-xl": 2048,
    "google/t5-v1_1-xxl": 4096,
    "google/flan-t5-xxl": 4096,
    "t5-base": 768,
    "t5-large": 1024,
}
# (latent channels, spatial downsampling) of known VAEs; other VAEs are taken as SD-style.
KNOWN_VAES: dict[str, tuple[int, int]] = {
    "stabilityai/sd-vae-ft-ema": (4, 8),
    "stabilityai/sd-vae-ft-mse": (4, 8),
    "stabilityai/sdxl-vae": (4, 8),
    "madebyollin/sdxl-vae-fp16-fix": (4, 8),
    "black-forest-labs/FLUX.1-dev/vae": (16, 8),
    "black-forest-labs/FLUX.1-schnell/vae": (16, 8),
    "stabilityai/stable-diffusion-3-medium-diffusers/vae": (16, 8),
}
SD_STYLE_VAE = (4, 8)
ASSUMABLE = ("token_dim", "latent_channels", "downsample")
BYTES_FP32 = 4
_HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class UnknownShapeError(CrossflowError):
    """A shape fact the dry run cannot know without loading weights; `key` names it."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def parse_assumptions(items: list[str] | None) -> dict[str, int]:
    """["token_dim=4096", ...] -> {"token_dim": 4096}; keys are those of `ASSUMABLE`."""
    out: dict[str, int] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in ASSUMABLE or not value.strip().isdigit() or int(value) < 1:
            raise CrossflowError(
                f"cannot read the shape fact {item!r}: write KEY=N with KEY one of {', '.join(ASSUMABLE)}"
            )
        out[key] = int(value)
    return out


@dataclass(frozen=True)
class ShapeFacts:
    """What the system is built from: the source's `spec`, the target's latent shape, and how
    each fact was found (`notes`, one line each)."""

    spec: dict[str, int]
    latent_shape: tuple[int, int, int]
    notes: tuple[str, ...] = ()


def _local_config(name: str, subfolder: str | None = None) -> tuple[dict[str, Any], str] | None:
    """config.json of a local folder (or its `subfolder`), else of the hub id in the local HF cache."""
    path = Path(name).expanduser()
    if path.is_dir():
        for folder in (path, path / subfolder) if subfolder else (path,):
            if (folder / "config.json").is_file():
                return json.loads((folder / "config.json").read_text()), str(folder / "config.json")
        return None
    parts = name.split("/")
    if len(parts) == 3 and all(parts):  # org/repo/subfolder
        name, subfolder = "/".join(parts[:2]), parts[2]
    elif len(parts) != 2 or not all(parts):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, "config.json", subfolder=subfolder)
    except Exception:  # an odd name is simply not in the cache
        return None
    if isinstance(found, str) and Path(found).is_file():
        return json.loads(Path(found).read_text()), f"the Hugging Face cache ({name})"
    return None


def token_dim_of(encoder: str, assume: Mapping[str, int]) -> tuple[int, str]:
    """The text encoder's token width without loading it, and where it came from."""
    if "token_dim" in assume:
        return assume["token_dim"], f"token_dim={assume['token_dim']} as given"
    found = _local_config(encoder)
    if found is not None:
        config, where = found
        config = config.get("text_config") or config  # CLIP: the text tower's width
        dim = config.get("hidden_size") or config.get("d_model")
        if dim:
            return int(dim), f"token_dim={dim} from {where}"
    if encoder in KNOWN_TOKEN_DIMS:
        dim = KNOWN_TOKEN_DIMS[encoder]
        return dim, f"token_dim={dim} for {encoder} (table of known encoders)"
    raise UnknownShapeError(
        f"the token width of text encoder {encoder!r} is unknown without loading it (no local "
        "config.json, not a known encoder): give token_dim explicitly",
        key="token_dim",
    )


def vae_geometry(vae: str | None, assume: Mapping[str, int]) -> tuple[int, int, str]:
    """(latent channels, downsampling) of a VAE without loading it, and where they came from."""
    if not vae:
        raise CrossflowError(
            "target.kind=vae needs target.vae: a diffusers AutoencoderKL hub id or local folder"
        )
    channels, down, where = *SD_STYLE_VAE, "assumed SD-style (not a known VAE, no local config.json)"
    found = _local_config(vae, subfolder="vae")
    if found is not None and "latent_channels" in found[0]:
        config, source = found
        channels, where = int(config["latent_channels"]), f"from {source}"
        down = 2 ** (len(config.get("block_out_channels", [0] * 4)) - 1)
    elif vae in KNOWN_VAES:
        (channels, down), where = KNOWN_VAES[vae], "(table of known VAEs)"
    channels, down = assume.get("latent_channels", channels), assume.get("downsample", down)
    if {"latent_channels", "downsample"} & set(assume):
        where = "as given"
    return channels, down, f"VAE {vae}: {channels} latent channels, downsampling {down} {where}"


def shape_facts(recipe: Recipe, assume: Mapping[str, int] | None = None) -> ShapeFacts:
    """The source spec and target latent shape the recipe's system is built from, nothing loaded."""
    assume = dict(assume or {})
    size, notes = recipe.data.image_size, []
    if recipe.target.kind == "vae":
        channels, down, note = vae_geometry(recipe.target.vae, assume)
        latent_shape, notes = (channels, _divided(size, down), _divided(size, down)), [note]
    else:  # pixels, depth, text_ae: their codecs know their latent shape without loading weights
        from crossflow_core.codecs import build_target

        latent_shape = tuple(build_target(recipe.target).latent_shape(size))
    source = recipe.source
    if source.kind == "text":
        dim, note = token_dim_of(source.encoder, assume)
        spec = {"num_tokens": source.max_length, "token_dim": dim}
        notes.append(note)
    elif source.kind == "image":
        channels, down = 3, 1
        if source.space == "vae":
            channels, down, note = vae_geometry(source.vae, assume)
            notes.append(f"source {note}")
        spec = {"space": source.space, "channels": channels, "size": _divided(size, down)}
    else:
        spec = {"factor": source.factor}
    return ShapeFacts(spec, latent_shape, tuple(notes))  # type: ignore[arg-type]


def _divided(size: int, down: int) -> int:
    if size % down:
        raise CrossflowError(
            f"image size {size} is not divisible by the VAE's downsampling factor {down}: "
            f"use a multiple of {down}"
        )
    return size // down
