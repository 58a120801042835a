"""`crossflow eval depth`: AbsRel, delta1, RMSE (and SqRel, RMSE-log, delta2/3) of depth predictions,
raw (metric) and after per-image least-squares scale-and-shift alignment (Marigold's protocol),
with the metrics of `crossflow_core.eval.depth_metrics` (per image, then averaged over images).

References (ground truth), each at the predictor's size S x S:
- a folder of images with depth sidecars (`NAME.depth.png` 16-bit, `depth_scale` units per metre,
  or `NAME.depth.npy` metres), read and fitted exactly as `prepare` reads them (FolderSource:
  shorter side resized, centre crop; nearest-neighbour depth); pixels without depth (0) are masked;
- a prepared dataset (its `png` + `depth.npy`; holes were filled at prepare time);
- the shapes world's held-out `test` split, rendered at S.
Valid pixels: depth_range[0] < gt < depth_range[1], by default the model's [min_depth, max_depth];
predictions (raw and aligned) are clipped to that range, as Marigold clips to the dataset's.

Predictors: a depth model (CrossFlow, or the regression baseline, `flow.time_sampling=zero`,
`sample.steps=1`, which is just another run) or the mean-depth baseline: the per-pixel mean depth
map of a prepared training set (every image gets the same map).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.eval.depth_metrics import depth_metrics
from crossflow_core.eval.report import MetricResult, stamp

ALIGNMENTS = {"none": "", "scale_shift": "_aligned"}  # metric suffix per alignment


@dataclass(frozen=True)
class DepthReferences:
    """images uint8 [N, S, S, 3], depth float32 metres [N, S, S] (0 = no depth), one name each."""

    images: np.ndarray
    depth: np.ndarray
    names: tuple[str, ...]
    source: dict[str, Any]

    def __len__(self) -> int:
        return len(self.names)


def folder_references(folder: Path, size: int, depth_scale: float = 1000.0) -> DepthReferences:
    """Images + depth sidecars of `folder` (nested allowed), fitted to `size` as prepare does."""
    from crossflow_core.data.sources import FolderSource

    source = FolderSource(
        Path(folder), size, require_captions=False, require_depth=True, depth_scale=depth_scale
    )
    records = list(source)
    if not records:
        raise CrossflowError(f"no readable image with a depth map in {folder}: check the files")
    images = np.stack([np.asarray(r.image, np.uint8) for r in records])
    depth = np.stack([r.depth for r in records]).astype(np.float32)
    return DepthReferences(images, depth, tuple(r.meta["file"] for r in records), source.describe())


def prepared_references(data_dir: Path) -> DepthReferences:
    """The `png` + `depth.npy` of a prepared dataset."""
    from crossflow_core.data.arrays import load_training_arrays
    from crossflow_core.data.manifest import Manifest

    manifest = Manifest.load(data_dir)
    if "depth.npy" not in manifest.fields:
        raise CrossflowError(
            f"{data_dir} holds no depth maps (no depth.npy): prepare it with a depth recipe, "
            "or pass a folder of images with depth sidecars"
        )
    arrays = load_training_arrays(data_dir, ("png", "depth.npy"))
    images = arrays["png"].permute(0, 2, 3, 1).numpy()
    names = tuple(f"{i:06d}" for i in range(len(images)))
    return DepthReferences(
        images, arrays["depth.npy"].float().numpy(), names, {"kind": "prepared", "path": str(data_dir)}
    )


def shapes_references(n: int, size: int, seed: int = 0) -> DepthReferences:
    """The first `n` samples of the shapes world's held-out test split at `size`."""
    from crossflow_core.data.shapes import ShapesWorld

    if n < 1:
        raise CrossflowError(f"the number of shapes test images must be >= 1, got {n}")
    world = ShapesWorld(image_size=size, seed=seed)
    images = np.stack([world.sample(i, "test").image for i in range(n)])
    depth = np.stack([world.depth(i, "test") for i in range(n)])
    names = tuple(f"test-{i:05d}" for i in range(n))
    return DepthReferences(images, depth, names, {"kind": "shapes", "split": "test", "seed": seed, "n": n})


def load_references(
    data: Path | None, shapes: int | None, size: int, depth_scale: float, seed: int = 0
) -> DepthReferences:
    """A folder with sidecars, a prepared dataset, or (`shapes` = n) the shapes test split."""
    if (data is None) == (shapes is None):
        raise CrossflowError(
            "give the references: a folder with depth sidecars or a prepared dataset, "
            "or a number of shapes test images (one of the two)"
        )
    if shapes is not None:
        return shapes_references(shapes, size, seed)
    data = Path(data)
    if not data.is_dir():
        raise CrossflowError(f"{data} is not a folder: pass images with depth sidecars or a prepared dataset")
    refs = (
        prepared_references(data)
        if (data / "manifest.json").is_file()
        else folder_references(data, size, depth_scale)
    )
    if refs.images.shape[1:3] != (size, size):
        raise CrossflowError(
            f"{data} holds {refs.images.shape[2]}x{refs.images.shape[1]} images, but the "
            f"predictor takes {size}x{size}: prepare it at that size or pass its folder"
        )
    return refs


def mean_depth_map(data_dir: Path) -> np.ndarray:
    """The per-pixel mean depth map (metres, float32 [S, S]) of a prepared training set."""
    return prepared_references(data_dir).depth.astype(np.float64).mean(axis=0).astype(np.float32)


def score_depth(pred: Any, gt: Any, depth_range: tuple[float, float]) -> list[MetricResult]:
    """Every metric, raw and aligned: `abs_rel`, `delta1`, ..., `abs_rel_aligned`, ..."""
    results = []
    for align, suffix in ALIGNMENTS.items():
        scores = depth_metrics(pred, gt, align=align, depth_range=depth_range)  # type: ignore[arg-type]
        settings = {"alignment": align, "depth_range_m": list(depth_range), "n_pixels": scores.n_pixels}
        results += [
            MetricResult(f"{k}{suffix}", v, scores.n_images, settings) for k, v in scores.as_dict().items()
        ]
    return results


@dataclass(frozen=True)
class DepthEval:
    results: list[MetricResult]
    pred: torch.Tensor  # metres [N, S, S]
    refs: DepthReferences


def evaluate_depth(
    model: str | Path | None = None,
    mean_of: Path | None = None,
    data: Path | None = None,
    shapes: int | None = None,
    *,
    depth_range: tuple[float | None, float | None] = (None, None),
    depth_scale: float | None = None,
    world_seed: int | None = None,
    settings: dict[str, Any] | None = None,
    device: str | None = None,
) -> DepthEval:
    """Score a depth model (`model`) or the mean-depth baseline of a prepared set (`mean_of`)."""
    if (model is None) == (mean_of is None):
        raise CrossflowError(
            "give one predictor: a depth model, or a prepared training set for the mean depth"
        )
    extra: dict[str, Any] = {}
    if model is not None:
        from crossflow_core.depth_predict import depth_target_of, predict_depth
        from crossflow_core.pipeline import load_pipeline

        pipe = load_pipeline(model, device)
        target, recipe = depth_target_of(pipe), pipe.config.recipe
        size, lo, hi = pipe.image_size, target.lo, target.hi
        sample = pipe.defaults.with_overrides(**(settings or {}))
        refs = load_references(
            data,
            shapes,
            size,
            depth_scale or recipe.data.depth_scale,
            recipe.data.seed if world_seed is None else world_seed,
        )
        pred = predict_depth(pipe, list(refs.images), sample)
        extra = {"predictor": "model", **sample.settings(), "nfe": pipe.nfe(sample)}
    else:
        from crossflow_core.data.manifest import Manifest

        mean = torch.from_numpy(mean_depth_map(Path(mean_of)))  # type: ignore[arg-type]
        latent = Manifest.load(Path(mean_of)).latent  # type: ignore[arg-type]
        size, lo, hi = mean.shape[-1], latent.get("min_depth", 1e-3), latent.get("max_depth", 80.0)
        refs = load_references(data, shapes, size, depth_scale or 1000.0, world_seed or 0)
        pred = mean.expand(len(refs), size, size).clone()
        extra = {"predictor": "mean_depth", "mean_of": str(mean_of), "mean": "per-pixel mean map", "nfe": 0}
    rng = (
        depth_range[0] if depth_range[0] is not None else lo,
        depth_range[1] if depth_range[1] is not None else hi,
    )
    results = stamp(
        score_depth(pred, refs.depth, rng),
        str(model) if model else None,
        {**extra, "references": refs.source, "n_images": len(refs)},
    )
    return DepthEval(results, pred, refs)
