"""Depth maps from a depth model: images in, 16-bit depth PNGs + colour previews + a JSON record out.

The model takes images of its training size S x S (its image VE and flow are built for it); other
sizes are refused, or, with `fit`, resized (shorter side) and centre-cropped to S x S exactly as
`prepare` does (the outputs are then of that crop). Every input is read and checked before any
file is written. Image i (in argument order) is drawn with seed `settings.seed + i`.

Outputs per input `STEM`: `OUT/STEM.depth.png`, the depth as a 16-bit greyscale PNG of integer
units, `depth_scale` per metre (default: the model recipe's `data.depth_scale`, 1000 = millimetres;
depths beyond 65535 units are clipped there, e.g. > 65.5 m in millimetres), and
`OUT/STEM.preview.png`, a colour map of inverse depth (near red, far blue; per-image 2nd-98th
percentile range); then `OUT/depth.json`, the record (settings, NFE, units, per-output depth range).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from crossflow_core.atomic import write_text
from crossflow_core.codecs.depth import DepthTarget
from crossflow_core.depth_files import colorize, is_depth_file, save_depth_png
from crossflow_core.errors import CrossflowError
from crossflow_core.image_files import IMAGE_SUFFIXES, list_images, read_image, save_png
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import SampleConfig
from crossflow_core.upscale import collect_inputs

RECORD = "depth.json"


def depth_target_of(pipe: CrossFlowPipeline) -> DepthTarget:
    """The model's depth codec; a model of another task is refused in one line."""
    kind = pipe.config.target.get("kind")
    if kind != "depth" or not isinstance(pipe.target, DepthTarget):
        raise CrossflowError(
            f"the model is a {pipe.config.recipe.task} model (target {kind}), not a depth one: "
            "pass a run trained with a depth recipe (task: depth)"
        )
    return pipe.target


def collect_images(paths: list[Path]) -> list[Path]:
    """Images named directly, or found directly inside named folders (depth sidecars skipped)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = [f for f in list_images(path) if not is_depth_file(f)]
            if not found:
                raise CrossflowError(f"folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif is_depth_file(path):
            raise CrossflowError(f"{path} is a depth map, not an image: pass its image")
        else:
            files.append(path)
    return collect_inputs(files)


def read_inputs(pipe: CrossFlowPipeline, files: list[Path], fit: bool = False) -> list[np.ndarray]:
    """uint8 [S, S, 3] per file, S the model's size; another size is refused unless `fit`."""
    from crossflow_core.data.sources import load_rgb

    size, images = pipe.image_size, []
    for f in files:
        if fit:
            try:
                images.append(np.asarray(load_rgb(f, size), np.uint8))
            except OSError as exc:
                raise CrossflowError(f"cannot read image {f}: {exc}; replace or remove the file") from None
            continue
        image = read_image(f)
        h, w = image.shape[:2]
        if (h, w) != (size, size):
            raise CrossflowError(
                f"{f} is {w}x{h}, but this depth model takes {size}x{size} images (its training size): "
                "resize or crop it (or fit it as prepare does)"
            )
        images.append(image)
    return images


def predict_depth(
    pipe: CrossFlowPipeline,
    images: list[np.ndarray],
    settings: SampleConfig,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """uint8 images [S, S, 3] -> depth metres [N, S, S] float32; image i uses seed settings.seed + i."""
    depth_target_of(pipe)
    if not images:
        return torch.empty(0, pipe.image_size, pipe.image_size)
    return pipe.translate(images, settings, progress)[:, 0].float()


def depth_files(
    pipe: CrossFlowPipeline,
    paths: list[Path],
    out_dir: Path,
    settings: SampleConfig,
    fit: bool = False,
    depth_scale: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Predict the depth of every input into `out_dir` (module docstring); returns the files written."""
    target = depth_target_of(pipe)
    scale = float(depth_scale if depth_scale is not None else pipe.config.recipe.data.depth_scale)
    if not scale > 0:
        raise CrossflowError(f"the depth PNG scale must be > 0 units per metre, got {scale}")
    files = collect_images(paths)
    images = read_inputs(pipe, files, fit)
    depth = predict_depth(pipe, images, settings, progress).numpy()
    out_dir, written, outputs = Path(out_dir), [], []
    for i, (f, d) in enumerate(zip(files, depth)):
        written.append(save_depth_png(d, out_dir / f"{f.stem}.depth.png", scale))
        written.append(save_png(colorize(d), out_dir / f"{f.stem}.preview.png"))
        outputs.append(
            {
                "input": str(f),
                "depth": f"{f.stem}.depth.png",
                "preview": f"{f.stem}.preview.png",
                "seed": settings.seed + i,
                "min_m": round(float(d.min()), 4),
                "max_m": round(float(d.max()), 4),
            }
        )
    record = {
        "task": "depth",
        "depth_png": f"16-bit greyscale, {scale:g} units per metre (1000 = millimetres), clipped to 1..65535",
        "depth_scale": scale,
        "range_m": [target.lo, target.hi],
        "fit": "resized (shorter side) + centre-cropped like prepare" if fit else "none (model size)",
        "settings": settings.settings(),
        "nfe": pipe.nfe(settings),
        "outputs": outputs,
    }
    write_text(out_dir / RECORD, json.dumps(record, indent=2))
    return written
