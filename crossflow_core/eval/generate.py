"""Generate images from a model for evaluation, and move them to and from disk.

Shared by the CLIP score, GenEval, shapes and FID commands. Seeding rule (so a resumed or
partial run reproduces a full one exactly): with `n_per_prompt = n`, sample k of the prompt at
position i of the full prompt list uses seed `settings.seed + i * n + k`. This follows from the
pipeline's own contract (prompt j of one `generate` call uses seed `settings.seed + j`).

Images cross this module as float tensors [N, 3, H, W] in [0, 1] (model side) or uint8 arrays
[N, H, W, 3] (disk side); `to_uint8` is the single conversion between them. The image-file
helpers live in `crossflow_core.image_files` and prompt files in `crossflow_core.eval.prompts`;
they are re-exported here for older imports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.eval.prompts import read_prompt_file
from crossflow_core.image_files import (
    IMAGE_SUFFIXES,
    list_images,
    read_image,
    save_images,
    save_png,
    to_uint8,
)

if TYPE_CHECKING:  # imported lazily: the sampler pulls in the encoders, not needed to read images
    from crossflow_core.sample import SampleSettings

__all__ = [
    "IMAGE_SUFFIXES",
    "ImagePipeline",
    "LoadedModel",
    "Progress",
    "generate_images",
    "list_images",
    "load_pipeline",
    "model_name",
    "read_image",
    "read_prompt_file",
    "sample_settings",
    "SamplingOptions",
    "save_images",
    "save_png",
    "settings_record",
    "to_uint8",
]

Progress = Callable[[int, int], None]
"""progress(done, total), counted in images."""


class ImagePipeline(Protocol):
    """What evaluation needs from a text-to-image pipeline (`crossflow_core.sample.CrossFlowPipeline`)."""

    image_size: int

    def generate(
        self, prompts: list[str], settings: SampleSettings, progress: Progress | None = None
    ) -> torch.Tensor: ...

    def nfe(self, settings: SampleSettings) -> int: ...


def load_pipeline(model: str | Path, device: str | None = None) -> ImagePipeline:
    """Load the exported model of a run (RUN or RUN/model) for sampling (`crossflow_core.pipeline`)."""
    from crossflow_core.pipeline import load_pipeline as load

    pipeline = load(model, device)
    pipeline.require_source("text", "evaluating generated images from prompts")
    return pipeline


def model_name(model: str | Path) -> str:
    """The model reference stored in results: the resolved model folder when possible."""
    from crossflow_core.sample import resolve_model_dir

    try:
        return str(resolve_model_dir(model))
    except CrossflowError:
        return str(model)


def generate_images(
    pipeline: ImagePipeline,
    prompts: Sequence[str],
    settings: SampleSettings,
    n_per_prompt: int = 1,
    progress: Progress | None = None,
    start_index: int = 0,
) -> torch.Tensor:
    """Images for `prompts`, prompt-major: row i * n + k is sample k of prompt i.

    Returns float [len(prompts) * n, 3, H, W] in [0, 1]. `start_index` is the position of
    `prompts[0]` in the full list, so seeds match a run over the full list (module docstring).
    """
    if n_per_prompt < 1:
        raise CrossflowError(f"the number of samples per prompt must be >= 1, got {n_per_prompt}")
    if not prompts:
        return torch.empty(0, 3, pipeline.image_size, pipeline.image_size)
    repeated = [p for p in prompts for _ in range(n_per_prompt)]
    shifted = dataclasses.replace(settings, seed=settings.seed + start_index * n_per_prompt)
    images = pipeline.generate(repeated, shifted, progress=progress)
    if images.dim() != 4 or images.shape[0] != len(repeated) or images.shape[1] != 3:
        raise RuntimeError(
            f"pipeline returned images of shape {tuple(images.shape)}, expected [{len(repeated)}, 3, H, W]"
        )
    return images


def sample_settings(
    pipeline: ImagePipeline,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    solver: str | None = None,
    temperature: float | None = None,
) -> SampleSettings:
    """Settings for evaluation: given values, else the model recipe's `sample` section, else
    `SampleSettings` defaults (pipelines without a recipe, e.g. test doubles)."""
    from crossflow_core.sample import SampleSettings

    recipe = getattr(getattr(getattr(pipeline, "config", None), "recipe", None), "sample", None)
    base = recipe if isinstance(recipe, SampleSettings) else SampleSettings()
    return base.with_overrides(
        steps=steps,
        solver=solver,
        cfg_scale=cfg_scale,
        seed=int(seed),
        batch_size=int(batch_size),
        temperature=temperature,
    )


def settings_record(settings: SampleSettings, pipeline: ImagePipeline) -> dict[str, object]:
    """Sampling settings (and NFE per image) as stored with every metric of generated images."""
    return {**settings.settings(), "nfe": int(pipeline.nfe(settings))}


@dataclass(frozen=True)
class SamplingOptions:
    """How evaluation samples a model; None takes the model recipe's value (`sample_settings`)."""

    steps: int | None = None
    cfg_scale: float | None = None
    solver: str | None = None
    seed: int = 0
    batch_size: int = 64
    device: str | None = None
    temperature: float | None = None


@dataclass(frozen=True)
class LoadedModel:
    """A loaded pipeline with its resolved sampling settings and the name stored in results."""

    pipeline: ImagePipeline
    settings: SampleSettings
    name: str

    @classmethod
    def load(cls, model: str | Path, options: SamplingOptions | None = None) -> LoadedModel:
        o = options or SamplingOptions()
        pipeline = load_pipeline(model, o.device)
        settings = sample_settings(
            pipeline, o.steps, o.cfg_scale, o.seed, o.batch_size, o.solver, o.temperature
        )
        return cls(pipeline, settings, model_name(model))

    def images(
        self, prompts: Sequence[str], n_per_prompt: int = 1, progress: Progress | None = None
    ) -> np.ndarray:
        """uint8 [len(prompts) * n, H, W, 3], prompt-major, seeded as the module docstring says."""
        return to_uint8(generate_images(self.pipeline, prompts, self.settings, n_per_prompt, progress))

    def record(self) -> dict[str, object]:
        """`settings_record` of this model's settings."""
        return settings_record(self.settings, self.pipeline)

    def run_info(self, n_samples: int) -> dict[str, object]:
        """What determines a resumable image folder's content (the batch size does not)."""
        info = {k: v for k, v in dataclasses.asdict(self.settings).items() if k != "batch_size"}
        return {"model": self.name, **info, "n_samples": n_samples}

    def world_seed(self, given: int | None = None) -> int:
        """The shapes world seed: `given`, else the model recipe's `data.seed`, else 0."""
        if given is not None:
            return given
        data = getattr(getattr(getattr(self.pipeline, "config", None), "recipe", None), "data", None)
        return int(getattr(data, "seed", 0) or 0)
