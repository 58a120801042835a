"""Upscaling files with a super-resolution model: low-res images in, upscaled PNGs out.

Every input is read and checked before anything is written (an unreadable file, an image smaller
than the model's low-res size, a size the network cannot take -> one `CrossflowError`, nothing
written). Images are grouped by size and batched; image i (in argument order) is drawn with seed
`settings.seed + i`. Outputs keep the input's stem: `OUT/STEM.png`, plus `upscale.json`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.image_files import IMAGE_SUFFIXES, list_images, read_image
from crossflow_core.outputs import save_outputs
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import SampleConfig


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Image files named directly, or found directly inside named folders, in order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = list_images(path)
            if not found:
                raise CrossflowError(f"folder {path} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise CrossflowError(f"input {path} does not exist")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise CrossflowError(f"{stems[f.stem]} and {f} would both be written as {f.stem}.png: rename one")
        stems[f.stem] = f
    if not files:
        raise CrossflowError("no input images given")
    return list(dict.fromkeys(files))


def factor_of(pipe: CrossFlowPipeline) -> int:
    factor = pipe.config.source.get("spec", {}).get("factor")
    if not factor:
        raise CrossflowError(
            f"the model is a {pipe.config.recipe.task} model, not a super-resolution one: "
            "pass a run trained with a super-resolution recipe (task: sr)"
        )
    return int(factor)


def check_image(pipe: CrossFlowPipeline, path: Path, image: np.ndarray, factor: int) -> None:
    h, w = image.shape[:2]
    low = pipe.image_size // factor
    if min(h, w) < low:
        raise CrossflowError(
            f"{path} is {w}x{h}, smaller than the model's low-res size {low}x{low}: "
            f"pass images of at least {low}x{low} pixels"
        )
    down = int(pipe.target.identity().get("downsample", 1))
    if (h * factor) % down or (w * factor) % down:
        raise CrossflowError(
            f"{path}: {w}x{h} upscaled x{factor} is not divisible by the latent space's "
            f"downsampling {down}: crop it"
        )
    why = pipe.flow.accepts(h * factor // down, w * factor // down) if hasattr(pipe.flow, "accepts") else None
    if why:
        raise CrossflowError(
            f"{path} is {w}x{h}; upscaled x{factor} it cannot pass the network: {why}; crop or pad it"
        )


def upscale_files(
    pipe: CrossFlowPipeline,
    paths: list[Path],
    out_dir: Path,
    settings: SampleConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Upscale every input image by the model's factor into `out_dir` (see the module docstring)."""
    factor = factor_of(pipe)
    files = collect_inputs(paths)
    images = [read_image(f) for f in files]
    for f, image in zip(files, images):
        check_image(pipe, f, image, factor)
    by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        by_size[image.shape[:2]].append(i)
    outputs: list[torch.Tensor | None] = [None] * len(images)
    done = 0
    for indices in by_size.values():
        for start in range(0, len(indices), settings.batch_size):
            chunk = indices[start : start + settings.batch_size]
            enc = pipe.encode([images[i] for i in chunk], [settings.seed + i for i in chunk])
            result = pipe.generate_from_z0(enc.z0, settings, enc.cond)
            for i, image in zip(chunk, result):
                outputs[i] = image
            done += len(chunk)
            if progress is not None:
                progress(done, len(images))
    record = {
        "factor": factor,
        "settings": settings.settings(),
        "nfe": pipe.nfe(settings),
        "outputs": [
            {"input": str(f), "file": f"{f.stem}.png", "seed": settings.seed + i} for i, f in enumerate(files)
        ],
    }
    names = [f"{f.stem}.png" for f in files]
    written: list[Path] = []
    for size_indices in by_size.values():  # save_outputs' grid needs one size; write per size group
        written += save_outputs(
            torch.stack([outputs[i] for i in size_indices]),
            out_dir,
            [names[i] for i in size_indices],
            record,
            "upscale.json",
            grid=None,
        )
    return written
