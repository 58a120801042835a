"""Evaluation tasks as the `crossflow eval` commands run them, one function per metric.

Each task takes a typed request (what to evaluate: a model to sample, or saved images; the
sampling options; where to save images) and returns `MetricResult`s stamped with the model,
the git commit and the settings. The evaluated images come from one place per task: generated
by `LoadedModel.images` (seeds: `generate`'s module docstring) or read from disk, so a saved
folder scored again gives the same numbers. Progress reaches the caller as
`progress(stage, done, total)`; `total` is None for a stage without a count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossflow_core.atomic import write_text
from crossflow_core.errors import CrossflowError
from crossflow_core.eval import geneval
from crossflow_core.eval.generate import LoadedModel, Progress, SamplingOptions
from crossflow_core.eval.prompts import read_prompt_file
from crossflow_core.eval.report import MetricResult, stamp
from crossflow_core.image_files import list_images, read_image, save_images

StageProgress = Callable[[str, int, "int | None"], None]
"""progress(stage, done, total): `total` None while a stage has no count (loading, scoring)."""


def _stage(progress: StageProgress | None, stage: str) -> None:
    if progress is not None:
        progress(stage, 0, None)


def _counted(progress: StageProgress | None, stage: str) -> Progress | None:
    return None if progress is None else lambda done, total: progress(stage, done, total)


def _load(model: str | Path, sampling: SamplingOptions, progress: StageProgress | None) -> LoadedModel:
    _stage(progress, "loading model")
    return LoadedModel.load(model, sampling)


# ----------------------------------------------------------------------------- CLIP score


class PromptFileNeeded(CrossflowError):
    """Images without their own prompts (not a GenEval layout) need a prompt file."""


class PromptFileUnused(CrossflowError):
    """A prompt file was given for a GenEval layout, which carries its own prompts."""


@dataclass(frozen=True)
class ClipRequest:
    """CLIP score of `model`'s images for `prompts`, or of saved `images` (exactly one of the two).

    `images` is a GenEval layout (prompts from its metadata; then no `prompts`) or a folder whose
    i-th image in natural name order pairs with prompt i."""

    clip: str
    prompts: Path | None = None
    images: Path | None = None
    model: str | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    save_images: Path | None = None


def _saved_pairs(images: Path, texts: list[str], layout: bool) -> tuple[list[np.ndarray], list[str], str]:
    """Saved images with their prompts, and how they were paired."""
    if layout:
        pixels, records = geneval.layout_images(geneval.read_layout(images))
        return pixels, [r["prompt"] for r in records], "GenEval layout metadata"
    files = list_images(images)
    if len(files) != len(texts):
        raise CrossflowError(
            f"{len(files)} images in {images} but {len(texts)} prompts; image i pairs with prompt i"
        )
    return [read_image(f) for f in files], texts, "image i (natural name order) <-> prompt i"


def evaluate_clip(request: ClipRequest, progress: StageProgress | None = None) -> list[MetricResult]:
    """`clip_cosine` (the paper's raw mean cosine) and `clip_score_x100` (torchmetrics')."""
    from crossflow_core.eval.clip_score import clip_cosines, load_clip

    if (request.model is None) == (request.images is None):
        raise ValueError("ClipRequest needs exactly one of model and images")
    layout = request.images is not None and geneval.is_layout(request.images)
    if layout and request.prompts is not None:
        raise PromptFileUnused(f"{request.images} is a GenEval layout with its own prompts")
    if not layout and request.prompts is None:
        raise PromptFileNeeded("a prompt file is needed: one prompt per line, or a GenEval .jsonl")
    texts = [] if request.prompts is None else read_prompt_file(request.prompts)
    _stage(progress, "loading CLIP")
    scorer = load_clip(request.clip, request.sampling.device)  # first: fail fast when it is missing
    name, extra = None, {"clip": request.clip}
    if request.images is not None:
        extra["images"] = str(request.images)
        pixels, texts, extra["pairing"] = _saved_pairs(request.images, texts, layout)
    else:
        model = _load(request.model, request.sampling, progress)
        pixels, name = model.images(texts, 1, _counted(progress, "generating")), model.name
        extra.update(model.record())
        if request.save_images is not None:
            save_images(pixels, request.save_images)
            write_text(request.save_images / "prompts.txt", "".join(t + "\n" for t in texts))
    _stage(progress, "CLIP features")
    scores = clip_cosines(scorer, pixels, texts, batch_size=request.sampling.batch_size)
    results = [
        MetricResult("clip_cosine", scores.clip_cosine, scores.n),
        MetricResult("clip_score_x100", scores.clip_score_x100, scores.n, {"convention": "torchmetrics"}),
    ]
    return stamp(results, name, extra)


# ----------------------------------------------------------------------------- GenEval


@dataclass(frozen=True)
class GenevalRequest:
    """GenEval images of `model` for a metadata file into `out` (resumable); scored on request
    with the official scorer (its repository clone and detector weights folder)."""

    model: str
    metadata: Path
    out: Path
    n_samples: int = 4
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    grid: bool = True
    score: bool = False
    geneval_repo: Path | None = None
    detector: Path | None = None


@dataclass(frozen=True)
class GenevalOutcome:
    """What `run_geneval` did: the generation, and the scores (empty without scoring) with the
    file they belong in; `scorer_missing` is the install hint when the scorer is absent."""

    generation: geneval.GenerationSummary
    results: list[MetricResult]
    scores_file: Path | None
    scorer_missing: str | None


def run_geneval(request: GenevalRequest, progress: StageProgress | None = None) -> GenevalOutcome:
    """Generate the layout (skipping complete folders), then score it when asked.

    Checks everything scoring needs before generating: MissingResourceError when the scorer's
    packages are absent, `geneval.ScorerPathsMissing` without the repository or detector."""
    from crossflow_core.errors import MissingResourceError

    records = geneval.read_metadata(request.metadata)
    missing = geneval.scorer_missing()
    if request.score:
        if missing is not None:
            raise MissingResourceError(missing)
        if request.geneval_repo is None or request.detector is None:
            raise geneval.ScorerPathsMissing(
                "scoring needs the official GenEval repository clone and its detector weights folder"
            )
    model = _load(request.model, request.sampling, progress)
    run = model.run_info(request.n_samples)
    summary = geneval.generate_geneval(
        model.pipeline, records, request.out, model.settings, request.n_samples, request.grid,
        _counted(progress, "generating"), run,
    )  # fmt: skip
    if not request.score:
        return GenevalOutcome(summary, [], None, missing)
    _stage(progress, "GenEval scorer (official)")
    out = Path(request.out)
    result_file = geneval.run_official_scorer(
        out, request.geneval_repo, request.detector, out / "results.jsonl"
    )
    extra = {**model.record(), "n_samples": request.n_samples, "metadata": str(request.metadata)}
    results = stamp(geneval.summarize_results(result_file, extra, model.name), model.name)
    return GenevalOutcome(summary, results, out / "scores.json", None)


# ----------------------------------------------------------------------------- shapes world


def write_shapes_metadata(path: Path, per_category: int = 16, world_seed: int = 0) -> int:
    """Write the shapes world's held-out test prompts as GenEval metadata; returns their count."""
    from crossflow_core.data.shapes import ShapesWorld

    if per_category < 1:
        raise CrossflowError(f"the number of prompts per category must be >= 1, got {per_category}")
    specs = ShapesWorld(seed=world_seed).test_prompts(per_category)
    geneval.write_metadata([s.to_geneval() for s in specs], path)
    return len(specs)


@dataclass(frozen=True)
class ShapesRequest:
    """Shapes-checker accuracy of `model` on the held-out test prompts, or of a saved GenEval
    layout `images` of shapes prompts (exactly one of the two)."""

    model: str | None = None
    images: Path | None = None
    per_category: int = 16
    n_samples: int = 1
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    world_seed: int | None = None
    save_images: Path | None = None  # a GenEval layout


def _shapes_generated(request: ShapesRequest, model: LoadedModel, specs: Sequence[Any], progress) -> list:
    """uint8 images [H, W, 3] of `specs`, n per prompt, through a saved layout when asked."""
    n, prompts = request.n_samples, [s.prompt for s in specs]
    if request.save_images is None:
        return list(model.images(prompts, n, _counted(progress, "generating")))
    lines = [json.dumps(s.to_geneval()) for s in specs]
    geneval.generate_layout(
        model.pipeline, lines, request.save_images, model.settings, n, True,
        _counted(progress, "generating"), run=model.run_info(n),
    )  # fmt: skip
    pixels = geneval.layout_images(geneval.read_layout(request.save_images))[0]
    if len(pixels) != len(prompts) * n:
        raise CrossflowError(f"{request.save_images} holds other images; save them to an empty folder")
    return pixels


def evaluate_shapes(request: ShapesRequest, progress: StageProgress | None = None) -> list[MetricResult]:
    """GenEval-style accuracy per category and overall (`shapes_geneval`), no downloads."""
    from crossflow_core.data.shapes import PromptSpec, ShapesWorld
    from crossflow_core.eval.shapes_checker import evaluate

    if (request.model is None) == (request.images is None):
        raise ValueError("ShapesRequest needs exactly one of model and images")
    name, extra = None, {}
    if request.images is not None:
        pixels, records = geneval.layout_images(geneval.read_layout(request.images))
        specs = [PromptSpec.from_geneval(r) for r in records]
        extra["images"] = str(request.images)
    else:
        if request.per_category < 1 or request.n_samples < 1:
            raise CrossflowError("the prompts per category and the samples per prompt must be >= 1")
        model = _load(request.model, request.sampling, progress)
        name, wseed = model.name, model.world_seed(request.world_seed)
        world = ShapesWorld(image_size=model.pipeline.image_size, seed=wseed)
        prompt_specs = world.test_prompts(request.per_category)
        pixels = _shapes_generated(request, model, prompt_specs, progress)
        specs = [s for s in prompt_specs for _ in range(request.n_samples)]
        extra.update(model.record())
        extra.update(
            {"n_samples": request.n_samples, "per_category": request.per_category, "world_seed": wseed}
        )
    _stage(progress, "scoring")
    return stamp(evaluate(pixels, specs).to_metric_results(name), name, extra)


# ----------------------------------------------------------------------------- FD-shapes


@dataclass(frozen=True)
class FdShapesRequest:
    """FD-shapes of source `a` against `b` (folders, GenEval layouts, `shapes:train|test`), or of
    `model`'s images for shapes:test captions against the reference `b` (default shapes:test)."""

    a: str | None = None
    b: str | None = None
    model: str | None = None
    n: int = 2000
    image_size: int = 32
    weights: Path | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    world_seed: int | None = None
    save_images: Path | None = None


def evaluate_fd_shapes(request: FdShapesRequest, progress: StageProgress | None = None) -> list[MetricResult]:
    """The one `fd_shapes` result (not FID: a shapes-trained CNN's feature space)."""
    from crossflow_core.data.shapes import ShapesWorld
    from crossflow_core.eval import fd_shapes

    if request.n < 2:
        raise CrossflowError(f"FD-shapes needs at least 2 images per side, got n = {request.n}")
    fnet = fd_shapes.load_feature_net(request.weights)
    name, n = None, request.n
    if request.model is not None:
        ref = request.a or request.b or "shapes:test"
        model = _load(request.model, request.sampling, progress)
        name, wseed, size = model.name, model.world_seed(request.world_seed), model.pipeline.image_size
        world = ShapesWorld(image_size=size, seed=wseed)
        images_a = model.images(
            [world.sample(i, "test").caption for i in range(n)], 1, _counted(progress, "generating")
        )
        if request.save_images is not None:
            save_images(images_a, request.save_images)
        images_b = fd_shapes.load_source(ref, n, size, wseed)
        extra = {**model.record(), "source_a": f"{name} on shapes:test captions", "source_b": str(ref)}
    else:
        if request.a is None or request.b is None:
            raise ValueError("FdShapesRequest needs a model or both image sources")
        wseed = request.world_seed or 0
        images_a = fd_shapes.load_source(request.a, n, request.image_size, wseed)
        images_b = fd_shapes.load_source(request.b, n, request.image_size, wseed)
        extra = {"source_a": request.a, "source_b": request.b}
    _stage(progress, "FD-shapes features")
    return [fd_shapes.fd_shapes_result(images_a, images_b, fnet, {**extra, "world_seed": wseed}, name)]


# ----------------------------------------------------------------------------- FID


@dataclass(frozen=True)
class FidRequest:
    """FID / KID / IS of `a` (a folder or shard directory; or, with `model` and `prompts`, the
    model's images, `a` None) against the reference `b`. See `fid.compute_metrics`."""

    b: Path
    a: Path | None = None
    weights: Path | None = None
    metrics: tuple[str, ...] = ("fid", "kid", "isc")
    batch_size: int = 16
    kid_subset_size: int = 1000
    feature_layer: str = "2048"
    nfe: int | None = None
    cache: bool = True
    model: str | None = None
    prompts: Path | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    save_images: Path | None = None


def evaluate_fid(request: FidRequest, progress: StageProgress | None = None) -> list[MetricResult]:
    """`fid.compute_metrics` of the request's two sides; generated images are scored in memory."""
    import torch

    from crossflow_core.eval.fid import TensorImages, compute_metrics

    a: Any = request.a
    nfe, name = request.nfe, request.model
    if request.model is not None and request.prompts is not None:
        model = _load(request.model, request.sampling, progress)
        texts = read_prompt_file(request.prompts)
        pixels = model.images(texts, 1, _counted(progress, f"generating {len(texts)} images"))
        if request.save_images is not None:
            save_images(pixels, request.save_images)
        label = f"{request.model} on {request.prompts}"
        a = TensorImages.of(torch.from_numpy(pixels).permute(0, 3, 1, 2), label=label)
        nfe, name = model.pipeline.nfe(model.settings), model.name
    if a is None:
        raise ValueError("FidRequest needs the evaluated images a, or a model and prompts")

    def features(label: str, done: int, total: int) -> None:
        if progress is not None:
            progress(f"inception features {label.upper()}", done, total)

    return compute_metrics(
        a, request.b, weights=request.weights, metrics=request.metrics, batch_size=request.batch_size,
        use_cache=request.cache, kid_subset_size=request.kid_subset_size,
        feature_layer=request.feature_layer, nfe=nfe, model=name, progress=features,
    )  # fmt: skip
