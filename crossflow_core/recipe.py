"""Recipes: one YAML file per task and scale, loaded into frozen, typed dataclasses.

This module is the only YAML reader of the project (`yaml.safe_load`). Every component
receives its own section (`recipe.ve`, `recipe.model`, ...), never the whole recipe.

Loading is strict: an unknown key, a value of the wrong type or an invalid choice raises
`RecipeError` with one line naming the key and the value received. Overrides use dotted
keys, `section.key=value`, with the value parsed as YAML (`train.steps=3`, `train.betas=[0.9,0.99]`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from crossflow_core.errors import CrossflowError


class RecipeError(CrossflowError):
    """A recipe file or override is invalid."""


@dataclass(frozen=True)
class DataConfig:
    """Where training pairs come from and how `prepare` shards them."""

    source: Literal["shapes", "folder"] = "shapes"
    path: str | None = None  # a folder of images + captions when source == "folder"
    image_size: int = 32  # images are resized (shorter side) and centre-cropped to this
    num_samples: int = 4096  # shapes world: number of training samples to generate
    seed: int = 0
    shard_size: int = 1000  # samples per WebDataset tar
    precompute_text: bool = True  # store LM token embeddings (float16 .npy) in the shards
    precompute_latents: bool = False  # store image latents (float16 .npy) in the shards


@dataclass(frozen=True)
class TextEncoderConfig:
    """The frozen language model that turns captions into token embeddings."""

    name: str = "minilm"  # "minilm" (embedded default), a hub id, or a local directory
    max_length: int = 32  # tokens per caption (padded / truncated)
    embedding_scale: float = 1.0  # official code multiplies T5 embeddings by 10


@dataclass(frozen=True)
class LatentConfig:
    """The image latent space the flow targets."""

    kind: Literal["pixels", "vae"] = "pixels"
    vae: str | None = None  # diffusers AutoencoderKL hub id or local directory when kind == "vae"
    scale_factor: float | None = None  # None: the VAE config's own scaling_factor
    shift_factor: float | None = None  # None: the VAE config's own shift_factor (or 0)


@dataclass(frozen=True)
class VEConfig:
    """Text Variational Encoder: LM tokens -> (mu, log sigma^2) with the image-latent shape."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    ffn: int = 256
    dropout: float = 0.1
    reduce_layers: int = 2  # each halves the token width before flattening
    objective: Literal["image_text_contrastive", "text_text_contrastive", "text_reconstruction"] = (
        "image_text_contrastive"
    )
    enc_weight: float = 1.0  # weight of L_enc
    kl_weight: float = 0.01  # lambda of the KL term
    kl: Literal["standard", "official"] = "official"
    image_encoder_width: int = 64  # jointly trained image tower for the contrastive loss
    logit_scale_init: float = 2.659  # log(1/0.07), CLIP's initial temperature


@dataclass(frozen=True)
class ModelConfig:
    """The velocity network over image latents (no cross-attention, never sees text).

    arch "dit": the official DiT variant, a transformer over latent patches (size, patch_size,
    width, depth, heads, mlp_ratio, long_skips, final_conv). arch "unet": a convolutional U-Net
    with self-attention at its low resolutions (diffusers `UNet2DModel`; unet_* keys), a
    conv/transformer hybrid in the spirit of the official DiMR backbone, which learns shapes in
    far fewer steps at small scale (the CPU demo).
    """

    arch: Literal["dit", "unet"] = "dit"
    size: Literal["tiny", "small", "base", "large", "xl", "huge"] = "tiny"
    patch_size: int = 4
    width: int | None = None  # overrides the size's width
    depth: int | None = None  # overrides the size's depth
    heads: int | None = None  # overrides the size's heads
    mlp_ratio: float = 4.0
    long_skips: bool = False  # U-ViT long skips: block i feeds block depth-1-i (concat + linear)
    final_conv: bool = False  # a 3x3 conv on the unpatchified output, so patch borders agree
    unet_channels: tuple[int, ...] = (32, 64, 128)  # channels per resolution level (halving H, W)
    unet_layers: int = 1  # residual blocks per level on the way down (one more on the way up)
    unet_attention: tuple[bool, ...] = (False, False, True)  # self-attention at each level
    unet_head_dim: int = 32  # channels per attention head


@dataclass(frozen=True)
class FlowConfig:
    """The probability path, time sampling and the CFG indicator."""

    sigma_min: float = 1e-5
    time_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    cfg_indicator: float = 0.1  # probability that a training pair is made unconditional


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging."""

    steps: int = 2000
    batch_size: int = 64  # global batch, split across processes
    lr: float = 3e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.9, 0.9)
    warmup_steps: int = 100  # linear warm-up, then constant (so resuming with more steps is exact)
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0  # max global grad norm; null disables
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    stage: Literal["joint", "ve", "two_stage", "separate"] = "joint"
    ve_steps: int = 0  # two_stage / separate: steps of VE-only pretraining before the flow starts
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    sample_every: int = 500  # 0 disables periodic sample grids
    log_every: int = 10
    seed: int = 0


@dataclass(frozen=True)
class SampleConfig:
    """Defaults of `crossflow sample` and the periodic training grids."""

    steps: int = 50
    solver: Literal["euler", "heun"] = "euler"
    cfg_scale: float = 7.0
    batch_size: int = 64
    prompts: tuple[str, ...] = ()  # prompts of the periodic sample grids


@dataclass(frozen=True)
class Recipe:
    """A whole task recipe: one frozen section per component."""

    name: str = "custom"
    task: Literal["t2i"] = "t2i"
    data: DataConfig = field(default_factory=DataConfig)
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    latents: LatentConfig = field(default_factory=LatentConfig)
    ve: VEConfig = field(default_factory=VEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) that `from_dict` reads back to an equal recipe."""
        return _plain(dataclasses.asdict(self))

    def replace(self, overrides: list[str]) -> Recipe:
        """A copy with `section.key=value` overrides applied (validated like a file)."""
        data = self.to_dict()
        for item in overrides:
            _apply_override(data, item)
        return from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipes_dir() -> Path:
    """The folder of built-in recipes: $CROSSFLOW_RECIPES, else the checkout's `recipes/`."""
    env = os.environ.get("CROSSFLOW_RECIPES")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "recipes"


def available_recipes() -> list[str]:
    """Names of the built-in recipes."""
    folder = recipes_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """`shapes` -> recipes/shapes.yaml; an existing path is returned as is."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        if not path.is_file():
            raise RecipeError(f"recipe file {str(path)!r} does not exist")
        return path
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    names = ", ".join(available_recipes()) or "none found"
    raise RecipeError(f"unknown recipe {str(name_or_path)!r}: use a YAML path or one of: {names}")


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by name or path and apply `section.key=value` overrides."""
    path = resolve_recipe_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise RecipeError(f"recipe {path} is not valid YAML{where}: fix the syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    for item in overrides or []:
        _apply_override(data, item)
    return from_dict(data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(f"override {item!r} must look like section.key=value (e.g. train.steps=100)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise RecipeError(f"override {item!r}: value {raw!r} is not valid YAML") from None
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: depth + 1])
            raise RecipeError(f"override {item!r}: {where} is not a section")
        node = child
    node[parts[-1]] = value


def from_dict(data: dict[str, Any]) -> Recipe:
    """Build a `Recipe` from a plain mapping, checking every key, type, choice and range."""
    recipe = _build(Recipe, data, prefix="")
    _check_ranges(recipe)
    return recipe


_POSITIVE = "must be > 0"
_NON_NEGATIVE = "must be >= 0"
_RANGES: tuple[tuple[str, Any, str], ...] = (
    ("data.image_size", lambda v: v >= 16, "must be >= 16"),
    ("data.num_samples", lambda v: v >= 1, _POSITIVE),
    ("data.shard_size", lambda v: v >= 1, _POSITIVE),
    ("text_encoder.max_length", lambda v: v >= 1, _POSITIVE),
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
    ("flow.sigma_min", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("flow.cfg_indicator", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("train.steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.batch_size", lambda v: v >= 1, _POSITIVE),
    ("train.lr", lambda v: v > 0, _POSITIVE),
    ("train.weight_decay", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.betas", lambda v: all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    ("train.warmup_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.ema_decay", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("train.grad_clip", lambda v: v is None or v > 0, "must be > 0, or null to disable"),
    ("train.ve_steps", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.checkpoint_every", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.keep_checkpoints", lambda v: v >= 1, _POSITIVE),
    ("train.sample_every", lambda v: v >= 0, _NON_NEGATIVE),
    ("train.log_every", lambda v: v >= 1, _POSITIVE),
    ("sample.steps", lambda v: v >= 1, _POSITIVE),
    ("sample.batch_size", lambda v: v >= 1, _POSITIVE),
)


def _check_ranges(recipe: Recipe) -> None:
    for key, ok, rule in _RANGES:
        section, name = key.split(".")
        value = getattr(getattr(recipe, section), name)
        if not ok(value):
            raise RecipeError(f"{key}={value!r} {rule}")
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


def _build(cls: type, data: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{where} must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise RecipeError(
            f"unknown key {prefix + unknown[0]!r} (value {data[unknown[0]]!r}); "
            f"valid keys in {where}: {', '.join(sorted(names))}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{prefix}{name}")
    return cls(**kwargs)


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise RecipeError(
                f"{key}: invalid choice {value!r}; expected one of: {', '.join(map(str, choices))}"
            )
        return value
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{key}: expected a string, got {value!r}")
        return value
    raise RecipeError(f"{key}: unsupported type {tp!r}")  # a bug in the dataclasses, not the user
