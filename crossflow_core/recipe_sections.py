"""The recipe's sections: frozen, typed dataclasses, one per component (the recipe's schema).

`crossflow_core.recipe` loads YAML into these (strictly) and re-exports them; every component
receives its own section, never the whole recipe. `source` and `target` are chosen by `kind`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class DataConfig:
    """Where training pairs come from and how `prepare` shards them."""

    source: Literal["shapes", "folder", "coco", "webdataset"] = "shapes"
    path: str | None = None  # folder of images (+ captions) | COCO captions JSON | .tar folder or glob
    images: str | None = None  # coco: the folder holding the images the annotations name
    coco_captions: Literal["all", "first"] = "all"  # coco: every caption a sample, or one per image
    workers: int = 1  # coco / webdataset: decoding processes (the output is the same for any number)
    image_size: int = 32  # images are resized (shorter side) and centre-cropped to this
    num_samples: int = 4096  # shapes world: number of training samples to generate
    # shapes world: sample k has category categories[k % len] (a repeat weights a category);
    # empty: every category once (single_object, two_object, counting, colors, position, color_attr)
    categories: tuple[str, ...] = ()
    seed: int = 0
    shard_size: int = 1000  # samples per WebDataset tar
    precompute_source: bool = True  # store the source codec's features (e.g. LM tokens) in the shards
    precompute_target: bool = False  # store the target codec's latents (e.g. VAE latents) in the shards
    depth_scale: float = 1000.0  # depth tasks: NAME.depth.png units per metre (1000: mm; KITTI: 256)


@dataclass(frozen=True)
class TextSourceConfig:
    """Source kind "text": a frozen language model turns captions into token embeddings [L, D]."""

    kind: Literal["text"] = "text"
    encoder: str = "minilm"  # "minilm" (embedded default), a hub id, or a local directory
    max_length: int = 32  # tokens per caption (padded / truncated)
    embedding_scale: float = 1.0  # official code multiplies T5 embeddings by 10


@dataclass(frozen=True)
class UpsampledSourceConfig:
    """Source kind "upsampled" (super-resolution): the high-res image downsampled by `factor`
    (anti-aliased bicubic), upsampled back (bicubic) and put in the target's latent space."""

    kind: Literal["upsampled"] = "upsampled"
    factor: int = 2  # high-res side / low-res side


@dataclass(frozen=True)
class ImageSourceConfig:
    """Source kind "image" (captioning, depth): the image itself, in pixels ([-1, 1]) or in the
    latent space of a frozen diffusers AutoencoderKL; an image VE maps it to the target's shape."""

    kind: Literal["image"] = "image"
    space: Literal["pixels", "vae"] = "pixels"
    vae: str | None = None  # space vae: hub id, "org/repo/subfolder" or a local directory
    scale_factor: float | None = None  # None: the VAE config's own scaling_factor
    shift_factor: float | None = None  # None: the VAE config's own shift_factor (or 0)


SourceConfig = TextSourceConfig | UpsampledSourceConfig | ImageSourceConfig


@dataclass(frozen=True)
class PixelTargetConfig:
    """Target kind "pixels": latents are the RGB pixels scaled to [-1, 1], [3, H, W]."""

    kind: Literal["pixels"] = "pixels"


@dataclass(frozen=True)
class VAETargetConfig:
    """Target kind "vae": latents of a frozen diffusers AutoencoderKL."""

    kind: Literal["vae"] = "vae"
    vae: str | None = None  # hub id, "org/repo/subfolder" or a local directory
    scale_factor: float | None = None  # None: the VAE config's own scaling_factor
    shift_factor: float | None = None  # None: the VAE config's own shift_factor (or 0)
    # training latents from stored moments: a fresh draw from q(z|x) every step (as the official
    # code), or its mode; prepare stores the moments (moments.npy) so both stay possible
    posterior: Literal["sample", "mode"] = "sample"


@dataclass(frozen=True)
class DepthTargetConfig:
    """Target kind "depth": a depth map in metres [H, W] <-> latent [1, H, W] in [-1, 1], linear in
    depth (or in log depth with `log`) over [min_depth, max_depth]; depths outside are clipped."""

    kind: Literal["depth"] = "depth"
    min_depth: float = 0.1  # metres, latent -1
    max_depth: float = 10.0  # metres, latent +1
    log: bool = False  # true: uniform in log depth (equal relative precision near and far)


@dataclass(frozen=True)
class TextAETargetConfig:
    """Target kind "text_ae" (captioning): captions -> the frozen LM's token embeddings -> a text
    encoder (the text VE's transformer, `width`/`depth`/`heads`/`ffn`/`reduce_layers`) -> a text
    latent [latent_channels, latent_size, latent_size] (shaped like a small latent image, so the
    flow networks run on it unchanged) -> a decoder (`decoder_depth` layers) -> token logits.
    Pretrained alone for `train.target_steps`, then frozen (crossflow_core/text_autoencoder.py)."""

    kind: Literal["text_ae"] = "text_ae"
    encoder: str = "minilm"  # the LM whose tokenizer and embeddings the autoencoder reads
    max_length: int = 16  # token positions per caption ([CLS] ... [SEP] + padding)
    embedding_scale: float = 1.0
    latent_channels: int = 8
    latent_size: int = 4
    width: int = 128
    depth: int = 2  # encoder layers
    decoder_depth: int = 2
    heads: int = 4
    ffn: int = 256
    dropout: float = 0.0
    reduce_layers: int = 2
    kl_weight: float = 1e-3  # KL of the latent (summed over it) against N(0, I)
    # full: logits over the tokenizer's whole vocabulary; data: over the ids the prepared training
    # captions use (+ the special tokens), recorded by prepare: far cheaper where captions use few
    vocab: Literal["full", "data"] = "full"


TargetConfig = PixelTargetConfig | VAETargetConfig | DepthTargetConfig | TextAETargetConfig


@dataclass(frozen=True)
class VEConfig:
    """The variational encoder between source and target: source -> z0 with the target's shape.

    kind "text": the Text VE (LM tokens -> mu, log sigma^2; the other keys configure it).
    kind "identity": no VE, z0 is the source itself (its shape already is the target's: SR).
    kind "noise_concat": the standard flow-matching baseline, z0 ~ N(0, I) and the source
    concatenated to the velocity network's input as conditioning (not CrossFlow).
    kind "image": the Image VE (an image [C, H, W] -> mu, log sigma^2 of the target's shape, a
    convolutional network; `width` = its base channels, `depth` = residual blocks per level)
    with objective image_reconstruction (decode z0 back to the image) or target_contrastive.
    """

    kind: Literal["text", "identity", "noise_concat", "image"] = "text"
    width: int = 128
    depth: int = 2
    heads: int = 4
    ffn: int = 256
    dropout: float = 0.1
    reduce_layers: int = 2  # each halves the token width before flattening
    # encoder: each stage is a post-LN encoder layer then a Linear halving the width (the official
    # TransEncoder); linear: a Linear + GELU per stage (models exported before `reduction` existed)
    reduction: Literal["encoder", "linear"] = "encoder"
    objective: Literal[
        "image_text_contrastive",
        "text_text_contrastive",
        "text_reconstruction",
        "image_reconstruction",
        "target_contrastive",
    ] = "image_text_contrastive"
    enc_weight: float = 1.0  # weight of L_enc
    kl_weight: float = 0.01  # lambda of the KL term
    kl: Literal["standard", "official"] = "official"
    image_encoder_width: int = 64  # jointly trained image tower for the contrastive loss
    logit_scale_init: float = 2.659  # log(1/0.07), CLIP's initial temperature
    # how the learned logit_scale multiplies the contrastive logits: exp (CLIP: exp(2.659) = 14.3
    # at init, capped at 100) or raw (the official CrossFlow code: the parameter itself, 2.659)
    logit_scale_form: Literal["exp", "raw"] = "exp"


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
    unet_global_read: bool = False  # a Linear over all of x_t added to the time embedding (unet.py)
    unet_layout_read: int = 0  # K > 0: a Linear over all of x_t to a K-channel layout map, as input (unet.py)
    # how the time (+ indicator, + global read) embedding enters each residual block: "add" a
    # per-channel bias, or "scale_shift" the normalised features (AdaGN)
    unet_time_modulation: Literal["add", "scale_shift"] = "add"


@dataclass(frozen=True)
class FlowConfig:
    """The probability path, time sampling and the CFG indicator."""

    sigma_min: float = 1e-5
    time_sampling: Literal["logit_normal", "uniform", "zero"] = "logit_normal"  # zero: regression baseline
    # logit-normal t = sigmoid(time_mean + time_std * n): the official (0, 1); a negative mean
    # trains more near the source (t = 0), a smaller std more in the middle of the path
    time_mean: float = 0.0
    time_std: float = 1.0
    cfg_indicator: float = 0.1  # probability that a training pair is made unconditional


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging."""

    steps: int = 2000
    batch_size: int = 64  # global batch per optimizer step, split across processes and micro-batches
    grad_accum: int = 1  # micro-batches per optimizer step: each is batch_size / (processes * grad_accum)
    lr: float = 3e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.9, 0.9)
    warmup_steps: int = 100  # linear warm-up, then lr_schedule
    # true: the warm-up starts again at each change of phase (e.g. when the flow joins after
    # two_stage's ve_steps), so a network that starts from scratch there is not hit by the full LR
    warmup_each_phase: bool = False
    # constant: raising train.steps never changes the past; cosine: decays to min_lr at train.steps
    # (so continuing a cosine run with more steps re-shapes the rest of its decay)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 0.0  # cosine: the LR reached at train.steps
    # constant: the last decay_steps steps bring the LR down linearly to min_lr at train.steps
    # (warm-up, stable, decay); 0 keeps it flat to the end
    decay_steps: int = 0
    # the EMA's decay at every step (the first update copies the weights). ema_warmup: true ramps it
    # as (1 + s) / (10 + s) up to ema_decay instead (diffusers' default, 0.991 at step 1000)
    ema_decay: float = 0.999
    ema_warmup: bool = False
    grad_clip: float | None = 1.0  # max global grad norm; null disables
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    stage: Literal["joint", "ve", "two_stage", "separate"] = "joint"
    ve_steps: int = 0  # two_stage / separate: steps of VE-only pretraining before the flow starts
    target_steps: int = 0  # a trainable target (text_ae): steps of its pretraining, first; then frozen
    # memory: every field the codecs read is loaded into RAM once (fastest for small datasets);
    # stream: read from the shards per batch by `num_workers` DataLoader workers (flat memory)
    loader: Literal["memory", "stream"] = "memory"
    num_workers: int = 0  # stream: DataLoader worker processes (0 = read in the training process)
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
    seed: int = 0  # input i of a call is drawn with seed + i
    # z0 = mu + temperature * sigma * eps: 1 draws from the distribution the flow was trained on;
    # lower trades the diversity of the outputs for fidelity to the input (0: z0 = mu)
    temperature: float = 1.0
    prompts: tuple[str, ...] = ()  # prompts of the periodic sample grids (text sources)

    def with_overrides(self, **values: Any) -> SampleConfig:
        """A copy with the given non-None values replaced, checked like a recipe."""
        from crossflow_core.recipe import check_section

        given = {k: v for k, v in values.items() if v is not None}
        out = dataclasses.replace(self, **given)
        check_section(out, "sample")
        return out

    def check(self) -> None:
        """Validate values set at run time (the recipe loader checks recipe files)."""
        self.with_overrides()

    def settings(self) -> dict[str, Any]:
        """The sampling settings as stored beside outputs (no grid prompts)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "prompts"}


@dataclass(frozen=True)
class TaskPreset:
    """What `task:` fills in when a recipe leaves a section's `kind` out."""

    source: str
    target: str
    ve: str


TASKS: dict[str, TaskPreset] = {
    "t2i": TaskPreset(source="text", target="pixels", ve="text"),
    "sr": TaskPreset(source="upsampled", target="pixels", ve="identity"),
    "caption": TaskPreset(source="image", target="text_ae", ve="image"),
    "depth": TaskPreset(source="image", target="depth", ve="image"),
}


@dataclass(frozen=True)
class Recipe:
    """A whole task recipe: one frozen section per component.

    `source` and `target` are the task's modality pair (each chosen by its `kind`); `ve` turns
    the source into the target's shape; `task` is a preset of the three kinds.
    """

    name: str = "custom"
    task: Literal["t2i", "sr", "caption", "depth"] = "t2i"
    data: DataConfig = field(default_factory=DataConfig)
    source: SourceConfig = field(default_factory=TextSourceConfig)
    target: TargetConfig = field(default_factory=PixelTargetConfig)
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
        from crossflow_core.recipe import _apply_override, from_dict

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
