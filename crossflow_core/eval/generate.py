"""Generate images from a model for evaluation, and move them to and from disk.

Shared by the CLIP score, GenEval, shapes and FID commands. Seeding rule (so a resumed or
partial run reproduces a full one exactly): with `n_per_prompt = n`, sample k of the prompt at
position i of the full prompt list uses seed `settings.seed + i * n + k`. This follows from the
pipeline's own contract (prompt j of one `generate` call uses seed `settings.seed + j`).

Images cross this module as float tensors [N, 3, H, W] in [0, 1] (model side) or uint8 arrays
[N, H, W, 3] (disk side); `to_uint8` is the single conversion between them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from PIL import Image

from crossflow_core.errors import CrossflowError

if TYPE_CHECKING:  # imported lazily: the sampler pulls in the encoders, not needed to read images
    from crossflow_core.sample import SampleSettings

Progress = Callable[[int, int], None]
"""progress(done, total), counted in images."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImagePipeline(Protocol):
    """What evaluation needs from a text-to-image pipeline (`crossflow_core.sample.CrossFlowPipeline`)."""

    image_size: int

    def generate(
        self, prompts: list[str], settings: SampleSettings, progress: Progress | None = None
    ) -> torch.Tensor: ...

    def nfe(self, settings: SampleSettings) -> int: ...


def load_pipeline(model: str | Path, device: str | None = None) -> ImagePipeline:
    """Load the exported model of a run (RUN or RUN/model) for sampling."""
    from crossflow_core.sample import CrossFlowPipeline, resolve_model_dir

    return CrossFlowPipeline.load(resolve_model_dir(model), device=device)


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
        raise CrossflowError(f"--n-samples must be >= 1, got {n_per_prompt}")
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


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float [N, 3, H, W] in [0, 1] (or uint8 [N, H, W, 3] already) -> uint8 [N, H, W, 3]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        return images
    if images.dtype == torch.uint8:
        return images.permute(0, 2, 3, 1).cpu().numpy() if images.shape[1] == 3 else images.cpu().numpy()
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: np.ndarray, path: Path) -> Path:
    """Write one uint8 [H, W, 3] image as PNG atomically (temp file in the folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_images(
    images: torch.Tensor | np.ndarray, directory: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Save images (float [N, 3, H, W] in [0, 1] or uint8 [N, H, W, 3]) as PNGs, atomically.

    Default names are `00000.png`, `00001.png`, ... in order; returns the written paths.
    """
    arr = to_uint8(images)
    names = list(names) if names is not None else [f"{i:05d}.png" for i in range(len(arr))]
    if len(names) != len(arr):
        raise ValueError(f"{len(names)} names for {len(arr)} images")
    directory = Path(directory)
    return [save_png(img, directory / name) for img, name in zip(arr, names, strict=True)]


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_images(directory: str | Path) -> list[Path]:
    """Image files directly in `directory`, in natural order (`2.png` before `10.png`); hidden skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CrossflowError(f"image folder {directory} does not exist; pass a folder of PNG/JPEG images")
    files = [
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(files, key=_natural_key)


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 [H, W, 3] (RGB)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise CrossflowError(f"cannot read image {path}: {exc}; replace or remove the file") from None


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a text file (one per non-empty line) or a GenEval jsonl (`.jsonl`: its "prompt")."""
    path = Path(path)
    if not path.is_file():
        raise CrossflowError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
    if path.suffix.lower() == ".jsonl":
        from crossflow_core.eval.geneval import read_metadata

        return [record.prompt for record in read_metadata(path)]
    prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise CrossflowError(f"prompt file {path} has no prompts; write one prompt per line")
    return prompts


def sample_settings(
    pipeline: ImagePipeline,
    steps: int | None = None,
    cfg_scale: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    solver: str | None = None,
) -> SampleSettings:
    """Settings for evaluation: given values, else the model recipe's `sample` section, else
    `SampleSettings` defaults (pipelines without a recipe, e.g. test doubles)."""
    from crossflow_core.sample import SampleSettings

    base = SampleSettings()
    recipe = getattr(getattr(getattr(pipeline, "config", None), "recipe", None), "sample", None)
    pick = lambda given, key: given if given is not None else getattr(recipe, key, getattr(base, key))  # noqa: E731
    settings = SampleSettings(
        steps=int(pick(steps, "steps")),
        solver=str(pick(solver, "solver")),
        cfg_scale=float(pick(cfg_scale, "cfg_scale")),
        seed=int(seed),
        batch_size=int(batch_size),
    )
    settings.check()
    return settings


def settings_record(settings: SampleSettings, pipeline: ImagePipeline) -> dict[str, object]:
    """Sampling settings (and NFE per image) as stored with every metric of generated images."""
    return {**dataclasses.asdict(settings), "nfe": int(pipeline.nfe(settings))}
