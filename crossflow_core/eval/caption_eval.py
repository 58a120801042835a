"""Captioning evaluation (`crossflow eval caption`): a model's captions, and two baselines', scored
with the COCO caption metrics (`caption_metrics.score_captions`: BLEU-1..4, METEOR, ROUGE-L,
CIDEr; SPICE unavailable offline) and, on the shapes world, against the rendered scenes
(`caption_scene.scene_accuracy`).

Evaluation sets (`CaptionSet`):
- `shapes_set`: samples of the built-in shapes world (default: its held-out `test` split, whose
  scenes hold colour-shape placements and position triples that training never shows), one
  reference each (the world's caption), with their scenes;
- `folder_set`: the images a reference file names (`read_references`: sidecar .txt files, a
  captions.jsonl / metadata.jsonl, or a COCO captions JSON), read from a folder.

Baselines, from the training captions (`TrainingPairs`; the shapes world regenerates its train
split from the recipe; another dataset is read from its prepared folder):
- most_frequent: the training caption that occurs most often, for every image;
- nearest_neighbour: the caption of the training image closest in 16x16 pixels (the images
  area-downsampled to 16x16 RGB in [0, 1], Euclidean distance; ties: the first).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossflow_core.errors import CrossflowError
from crossflow_core.eval.caption_metrics import CaptionScores, score_captions
from crossflow_core.eval.caption_references import read_references
from crossflow_core.eval.caption_scene import scene_accuracy
from crossflow_core.eval.report import MetricResult, git_commit
from crossflow_core.image_files import IMAGE_SUFFIXES

NN_SIDE = 16
METHODS = ("crossflow", "most_frequent", "nearest_neighbour")
Progress = Callable[[str, int, int | None], None]


@dataclass(frozen=True)
class CaptionSet:
    """Images to caption (uint8 [size, size, 3], in `names` order), their reference captions, and
    for the shapes world their scenes (`crossflow_core.data.shapes.Scene`)."""

    names: tuple[str, ...]
    images: list[np.ndarray]
    references: dict[str, list[str]]
    scenes: tuple[Any, ...] | None = None
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class TrainingPairs:
    """Training images uint8 [N, size, size, 3] and their captions (N), for the baselines."""

    images: np.ndarray
    captions: list[str]
    description: dict[str, Any] = field(default_factory=dict)


def shapes_set(image_size: int, seed: int = 0, split: str = "test", count: int = 500) -> CaptionSet:
    """`count` samples of the shapes world's `split`, with their captions and scenes."""
    from crossflow_core.data.shapes import ShapesWorld

    if count < 1:
        raise CrossflowError(f"the evaluation needs at least one image, got a count of {count}")
    world = ShapesWorld(image_size=image_size, seed=seed)
    samples = [world.sample(i, split) for i in range(count)]
    names = tuple(f"{split}-{i:05d}" for i in range(count))
    return CaptionSet(
        names,
        [s.image for s in samples],
        {n: [s.caption] for n, s in zip(names, samples, strict=True)},
        tuple(s.scene for s in samples),
        {"kind": "shapes", "split": split, "seed": seed, "count": count, "image_size": image_size},
    )


def folder_set(folder: Path, image_size: int, references: Path | None = None) -> CaptionSet:
    """The images of `folder` that the references name (default: the folder's own sidecars or jsonl)."""
    from crossflow_core.caption import read_for_model

    folder = Path(folder)
    if not folder.is_dir():
        raise CrossflowError(f"image folder {folder} does not exist: give a folder of images with captions")
    refs = read_references(references if references is not None else folder)
    files = {p.stem: p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [stem for stem in refs if stem not in files]
    if missing:
        raise CrossflowError(
            f"{len(missing)} images named by the references are not in {folder} (e.g. {missing[0]!r}): "
            "point at the folder that holds them"
        )
    names = tuple(refs)
    images = [read_for_model(files[n], image_size) for n in names]
    return CaptionSet(names, images, refs, None, {"kind": "folder", "path": str(folder), "count": len(names)})


def shapes_training(image_size: int, seed: int, num_samples: int) -> TrainingPairs:
    """The shapes world's train split as a recipe with these data settings prepares it."""
    from crossflow_core.data.shapes import ShapesWorld

    world = ShapesWorld(image_size=image_size, seed=seed)
    samples = [world.sample(i, "train") for i in range(num_samples)]
    return TrainingPairs(
        np.stack([s.image for s in samples]),
        [s.caption for s in samples],
        {"kind": "shapes", "split": "train", "seed": seed, "num_samples": num_samples},
    )


def prepared_training(data_dir: Path) -> TrainingPairs:
    """Training images and captions of a prepared dataset folder (its png and txt fields)."""
    from crossflow_core.data.arrays import load_training_arrays

    arrays = load_training_arrays(Path(data_dir), ("png", "txt"))
    images = arrays["png"].permute(0, 2, 3, 1).numpy()
    return TrainingPairs(images, list(arrays["txt"]), {"kind": "prepared", "path": str(data_dir)})


def most_frequent_caption(captions: list[str]) -> str:
    """The most frequent caption (ties: the one seen first)."""
    if not captions:
        raise CrossflowError("no training captions for the baselines")
    return Counter(captions).most_common(1)[0][0]


def pixel_features(images: np.ndarray | list[np.ndarray], side: int = NN_SIDE) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float [N, 3 * side * side]: area-downsampled RGB in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float() / 255.0
    return F.adaptive_avg_pool2d(x, side).flatten(1)


def nearest_neighbour_captions(
    train: TrainingPairs, images: list[np.ndarray], side: int = NN_SIDE, chunk: int = 256
) -> list[str]:
    """The caption of each image's nearest training image in `pixel_features` (Euclidean)."""
    if not train.captions:
        raise CrossflowError("no training captions for the baselines")
    if train.images.shape[1:3] != images[0].shape[:2]:
        train_feats = pixel_features([_resize(im, images[0].shape[0]) for im in train.images], side)
    else:
        train_feats = pixel_features(train.images, side)
    query = pixel_features(images, side)
    out: list[str] = []
    for start in range(0, len(query), chunk):
        nearest = torch.cdist(query[start : start + chunk], train_feats).argmin(1)
        out += [train.captions[int(i)] for i in nearest]
    return out


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image, ImageOps

    return np.asarray(ImageOps.fit(Image.fromarray(image), (size, size), method=Image.Resampling.LANCZOS))


def score_method(
    method: str, captions: list[str], data: CaptionSet, settings: dict[str, Any], model: str | None = None
) -> list[MetricResult]:
    """The caption metrics (and, with scenes, the scene truth) of one method's captions."""
    predictions = dict(zip(data.names, captions, strict=True))
    scores: CaptionScores = score_captions(predictions, data.references)
    base = {"method": method, "tokenizer": scores.tokenizer, "data": data.description, **settings}
    commit = git_commit()
    results = []
    for name in ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider", "spice"):
        s = dict(base)
        if name in scores.unavailable:
            s["unavailable"] = scores.unavailable[name]
        results.append(MetricResult(name, getattr(scores, name), scores.n_images, s, model, commit))
    if data.scenes is not None:
        refs = [data.references[n][0] for n in data.names]
        truth = scene_accuracy(captions, data.scenes, refs)
        for name, value in truth.items():
            results.append(MetricResult(f"scene_{name}", value, len(captions), base, model, commit))
    return results


def evaluate_captioning(
    data: CaptionSet,
    model_captions: list[str] | None,
    train: TrainingPairs | None,
    settings: dict[str, Any] | None = None,
    model: str | None = None,
) -> list[MetricResult]:
    """Results of the model's captions (when given) and, with `train`, of both baselines."""
    settings = dict(settings or {})
    results: list[MetricResult] = []
    if model_captions is not None:
        results += score_method("crossflow", model_captions, data, settings, model)
    if train is not None:
        base = {"train": train.description, "n_train": len(train.captions)}
        common = most_frequent_caption(train.captions)
        results += score_method("most_frequent", [common] * len(data), data, {**base, "caption": common})
        nn = nearest_neighbour_captions(train, data.images)
        feature = f"{NN_SIDE}x{NN_SIDE} area-downsampled RGB in [0, 1], Euclidean"
        results += score_method("nearest_neighbour", nn, data, {**base, "features": feature})
    return results


@dataclass(frozen=True)
class CaptionEvalRequest:
    """What `crossflow eval caption` evaluates. `data`: "shapes" (the shapes world, `split`,
    `count` samples, the model recipe's world seed) or an image folder (`references`: its
    reference captions, default the folder itself). `baselines` None: run them when training
    captions are at hand (the shapes world, or `train_data`, a prepared dataset folder)."""

    model: str | Path
    data: str | Path
    references: Path | None = None
    split: str = "test"
    count: int = 500
    train_data: Path | None = None
    baselines: bool | None = None
    device: str | None = None
    sample: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CaptionEvalReport:
    """The results (every method, `MetricResult.settings["method"]`) and the model's captions."""

    results: list[MetricResult]
    data: CaptionSet
    captions: list[str]


def run_caption_eval(request: CaptionEvalRequest, progress: Progress | None = None) -> CaptionEvalReport:
    """Load the model, build the evaluation set and the training pairs, caption and score."""
    from crossflow_core.caption import caption_images, require_captioner
    from crossflow_core.pipeline import load_pipeline

    pipe = load_pipeline(request.model, request.device)
    require_captioner(pipe)
    settings = pipe.defaults.with_overrides(**request.sample)
    world = str(request.data) == "shapes"
    d = pipe.config.recipe.data
    if world:
        data = shapes_set(pipe.image_size, d.seed, request.split, request.count)
    else:
        data = folder_set(Path(request.data), pipe.image_size, request.references)
    train = None
    if request.baselines is not False:
        if request.train_data is not None:
            train = prepared_training(request.train_data)
        elif world:
            train = shapes_training(pipe.image_size, d.seed, d.num_samples)
        elif request.baselines:
            raise CrossflowError(
                "the baselines need the training captions: give the prepared training dataset folder"
            )
    report = None if progress is None else (lambda done, total: progress("captioning", done, total))
    captions = caption_images(pipe, data.images, settings, report)
    extra = {**settings.settings(), "nfe": pipe.nfe(settings)}
    return CaptionEvalReport(
        evaluate_captioning(data, captions, train, extra, str(request.model)), data, captions
    )


def write_predictions(report: CaptionEvalReport, path: Path) -> Path:
    """The model's captions beside their references, one JSON object per line (atomically)."""
    import json

    from crossflow_core.atomic import write_text

    lines = [
        json.dumps({"name": n, "caption": c, "references": report.data.references[n]})
        for n, c in zip(report.data.names, report.captions, strict=True)
    ]
    return write_text(path, "".join(line + "\n" for line in lines))
