"""Captioning files with a captioning model (`task: caption`): images in, one caption per image out.

Inputs are collected exactly as `crossflow upscale` collects them (`collect_inputs`: files, or the
images directly inside folders, in order); every input is read before anything is captioned (an
unreadable file -> one `CrossflowError`, nothing written). Each image is brought to the model's
training size as `prepare` does (`load_rgb`: EXIF orientation, alpha on white, shorter side
resized with Lanczos, centre crop), so a prepared-size image gives exactly the training pixels.
Image i (in argument order) is captioned with seed `settings.seed + i` (the image VE's
eps); captions are the flow's latent decoded by the model's text autoencoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossflow_core.atomic import write_text
from crossflow_core.data.sources import load_rgb
from crossflow_core.errors import CrossflowError
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import SampleConfig
from crossflow_core.upscale import collect_inputs

CAPTION_TARGETS = ("text_ae",)


@dataclass(frozen=True)
class Caption:
    """One input image, its caption and the seed it was drawn with."""

    path: Path
    caption: str
    seed: int

    def to_json(self) -> dict:
        return {"file": str(self.path), "name": self.path.name, "caption": self.caption, "seed": self.seed}


def require_captioner(pipe: CrossFlowPipeline) -> None:
    """Refuse (one line) a model that does not produce captions (depth, SR, text -> image)."""
    kind = pipe.config.target.get("kind")
    if kind not in CAPTION_TARGETS:
        raise CrossflowError(
            f"this is a {pipe.config.recipe.task} model (target {kind}), not a captioning model: "
            "pass a run trained with a captioning recipe (task: caption)"
        )


def read_for_model(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 [size, size, 3], prepared as the training images were."""
    try:
        return np.asarray(load_rgb(path, size), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's errors for truncated or foreign files
        raise CrossflowError(f"cannot read image {path}: {exc}; replace or remove the file") from None


def caption_images(
    pipe: CrossFlowPipeline,
    images: list[np.ndarray],
    settings: SampleConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """uint8 images [size, size, 3] -> captions; image i uses seed settings.seed + i."""
    require_captioner(pipe)
    return list(pipe.translate(images, settings, progress))


def caption_files(
    pipe: CrossFlowPipeline,
    paths: list[Path],
    settings: SampleConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[Caption]:
    """Caption every input image (see the module docstring)."""
    require_captioner(pipe)
    files = collect_inputs(paths)
    images = [read_for_model(f, pipe.image_size) for f in files]
    captions = caption_images(pipe, images, settings, progress)
    return [Caption(f, c, settings.seed + i) for i, (f, c) in enumerate(zip(files, captions, strict=True))]


def format_captions(captions: list[Caption], json_lines: bool = False) -> str:
    """One line per image: `name<TAB>caption`, or a JSON object per line."""
    if json_lines:
        return "".join(json.dumps(c.to_json()) + "\n" for c in captions)
    return "".join(f"{c.path.name}\t{c.caption}\n" for c in captions)


def write_captions(captions: list[Caption], out: Path, json_lines: bool = False) -> Path:
    """Write `format_captions` to `out` atomically."""
    if out.is_dir():
        raise CrossflowError(f"{out} is a folder: give a file path for the captions")
    return write_text(out, format_captions(captions, json_lines))
