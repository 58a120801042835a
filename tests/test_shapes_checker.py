"""The GenEval-style shapes checker: accurate on ground truth, robust, and fails wrong images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from crossflow_core.data.shapes import (
    BACKGROUND,
    CATEGORIES,
    COLOURS,
    SHAPES,
    PromptSpec,
    Requirement,
    Scene,
    ShapeObject,
    ShapesWorld,
    render,
    scene_for,
)
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.shapes_checker import (
    Detection,
    as_image,
    detect,
    evaluate,
    relative_position,
    score,
)

W32, W64 = ShapesWorld(32), ShapesWorld(64)


def _blur(img, sigma):
    return np.clip(ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)), 0, 255).astype(
        np.uint8
    )


def _noise(img, sigma, rng):
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _jitter(img, amount, rng):
    fg = (np.abs(img.astype(int) - np.asarray(BACKGROUND)).sum(-1) > 30)[..., None]
    return np.clip(img + rng.uniform(-amount, amount, 3) * fg, 0, 255).astype(np.uint8)


def _assert_per_category(report, floor):
    assert set(report.per_category) == set(CATEGORIES)
    for cat, acc in report.per_category.items():
        assert acc >= floor, (cat, acc, [s.reason for s in report.scores if not s.correct][:3])


@pytest.mark.parametrize("world", [W32, W64], ids=["32px", "64px"])
def test_ground_truth_of_test_prompts_scores_correct(world):
    rng = np.random.default_rng(0)
    specs = world.test_prompts(24)
    images = [render(scene_for(s, rng, world.image_size), world.image_size) for s in specs]
    _assert_per_category(evaluate(images, specs), 0.98)


@pytest.mark.parametrize("split", ["train", "test"])
def test_ground_truth_samples_score_correct(split):
    samples = [W32.sample(i, split) for i in range(240)]
    report = evaluate([s.image for s in samples], [s.spec for s in samples])
    _assert_per_category(report, 0.98)
    assert report.n == 240 and all(n == 40 for n in report.counts.values())


@pytest.mark.parametrize("kind", ["blur", "noise", "jitter", "all"])
def test_robust_to_mild_degradation(kind):
    rng = np.random.default_rng(1)
    samples = [W32.sample(i, "test") for i in range(180)]
    ops = {
        "blur": lambda im: _blur(im, 0.7),
        "noise": lambda im: _noise(im, 10, rng),
        "jitter": lambda im: _jitter(im, 20, rng),
        "all": lambda im: _jitter(_noise(_blur(im, 0.5), 6, rng), 10, rng),
    }
    report = evaluate([ops[kind](s.image) for s in samples], [s.spec for s in samples])
    _assert_per_category(report, 0.9)


def test_detections_locate_objects():
    scene = Scene(
        (
            ShapeObject("circle", "red", 8.4, 9.1, 10.0),
            ShapeObject("square", "blue", 24.0, 8.7, 9.0),
            ShapeObject("triangle", "yellow", 16.2, 24.5, 11.0),
        )
    )
    dets = detect(render(scene, 32))
    assert len(dets) == 3
    for o in scene.objects:
        d = min(dets, key=lambda d: (d.cx - o.cx) ** 2 + (d.cy - o.cy) ** 2)
        assert (d.shape, d.colour) == (o.shape, o.colour)
        assert abs(d.cx - o.cx) < 0.3 and abs(d.cy - o.cy) < 0.3 and abs(d.width - o.size) < 0.5
        assert d.confidence > 0.9


def test_touching_objects_of_different_colours_are_split():
    scene = Scene(
        (ShapeObject("square", "red", 10.0, 16.0, 10.0), ShapeObject("square", "green", 20.0, 16.0, 10.0))
    )
    dets = detect(render(scene, 32))
    assert sorted((d.shape, d.colour) for d in dets) == [("square", "green"), ("square", "red")]


def _gt(spec, seed=0, size=32):
    return scene_for(spec, np.random.default_rng(seed), size)


def _first(category, world=W32):
    return next(p for p in world.test_prompts(4) if p.category == category)


def _with(scene, k, **changes):
    objs = list(scene.objects)
    objs[k] = dataclasses.replace(objs[k], **changes)
    return Scene(tuple(objs))


def _other(options, value):
    return next(o for o in options if o != value)


def test_wrong_colour_fails():
    for category in ("colors", "color_attr", "position"):
        spec = _first(category)
        scene = _gt(spec)
        assert score(render(scene, 32), spec).correct
        bad = _with(scene, 0, colour=_other(COLOURS, scene.objects[0].colour))
        result = score(render(bad, 32), spec)
        assert not result.correct and result.reason, category
    # attribute binding: both colours present but on the wrong shapes
    spec = _first("color_attr")
    scene = _gt(spec)
    a, b = scene.objects
    swapped = Scene((dataclasses.replace(a, colour=b.colour), dataclasses.replace(b, colour=a.colour)))
    assert not score(render(swapped, 32), spec).correct


def test_single_object_checks_the_class_only():
    spec = _first("single_object")
    scene = _gt(spec)
    recoloured = _with(scene, 0, colour=_other(COLOURS, scene.objects[0].colour))
    assert score(render(recoloured, 32), spec).correct  # GenEval: colour not required
    reshaped = _with(scene, 0, shape=_other(SHAPES, scene.objects[0].shape))
    assert not score(render(reshaped, 32), spec).correct


def test_wrong_shape_fails():
    for category in CATEGORIES:
        spec = _first(category)
        scene = _gt(spec)
        others = [s for s in SHAPES if s not in {r.shape for r in spec.include}]
        new = others[0] if others else _other(SHAPES, scene.objects[0].shape)
        bad = _with(scene, 0, shape=new)
        assert not score(render(bad, 32), spec).correct, category


def test_missing_object_fails():
    for category in CATEGORIES:
        spec = _first(category)
        scene = _gt(spec)
        for k in range(len(scene.objects)):
            dropped = Scene(scene.objects[:k] + scene.objects[k + 1 :])
            assert not score(render(dropped, 32), spec).correct, category
    blank = render(Scene(()), 32)
    assert not any(score(blank, s).correct for s in W32.test_prompts(2))


def test_wrong_relation_fails():
    rels = 0
    for spec in (p for p in W32.test_prompts(24) if p.category == "position"):
        scene = _gt(spec)
        assert score(render(scene, 32), spec).correct
        horizontal = spec.relation[1] in ("left of", "right of")
        mirrored = Scene(
            tuple(
                dataclasses.replace(o, cx=32 - o.cx) if horizontal else dataclasses.replace(o, cy=32 - o.cy)
                for o in scene.objects
            )
        )
        result = score(render(mirrored, 32), spec)
        assert not result.correct and "expected" in result.reason
        rels += 1
    assert rels == 24


def test_counting_is_exact_but_other_extras_are_allowed():
    two = PromptSpec("two circles", "counting", (Requirement("circle", 2),))
    three = PromptSpec("three circles", "counting", (Requirement("circle", 3),))
    img3 = render(_gt(three), 32)
    assert score(img3, three).correct
    assert not score(img3, two).correct  # too many
    assert not score(render(_gt(two), 32), three).correct  # too few
    # two_object (GenEval has no exclude there): an extra circle does not hurt
    pair = PromptSpec(
        "a circle and a square", "two_object", (Requirement("circle", 1), Requirement("square", 1))
    )
    scene = _gt(PromptSpec("x", "counting", (Requirement("circle", 2), Requirement("square", 1))))
    assert score(render(scene, 32), pair).correct


def test_noise_images_fail():
    rng = np.random.default_rng(0)
    specs = W32.test_prompts(8)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in specs]
    assert evaluate(images, specs).overall == 0.0


def test_relative_position_follows_geneval():
    def box(cx, cy, s=8.0):
        return Detection("square", "red", cx, cy, s * s, s, s, 1.0)

    assert relative_position(box(5, 16), box(25, 16)) == {"left of"}
    assert relative_position(box(25, 16), box(5, 16)) == {"right of"}
    assert relative_position(box(16, 4), box(16, 28)) == {"above"}
    assert relative_position(box(5, 5), box(27, 27)) == {"left of", "above"}
    assert relative_position(box(16, 16), box(17.5, 16)) == set()  # inside the 0.1 margin
    # margin: offset 3.0 minus 0.1 * 16 = 1.4 along x, 1.0 along y -> 1.4 / |(3, 1)| = 0.44 < 0.5
    assert relative_position(box(13, 16), box(16, 17)) == set()


def test_float_tensors_and_arrays_are_accepted():
    sample = W32.sample(5, "test")
    chw = torch.from_numpy(sample.image).permute(2, 0, 1).float() / 255
    assert np.array_equal(as_image(chw), sample.image)
    assert np.array_equal(as_image(sample.image.astype(np.float64) / 255), sample.image)
    report = evaluate(torch.stack([chw, chw]), [sample.spec, sample.spec])
    assert report.overall == 1.0
    with pytest.raises(CrossflowError):
        as_image(np.zeros((32, 32), np.uint8))
    with pytest.raises(CrossflowError):
        evaluate([sample.image], [sample.spec, sample.spec])


def test_report_is_mean_over_categories():
    samples = [W32.sample(i, "test") for i in range(12)]
    images = [s.image for s in samples]
    images[0] = render(Scene(()), 32)  # one wrong single_object of two
    report = evaluate(images, [s.spec for s in samples])
    assert report.per_category["single_object"] == 0.5
    assert report.overall == pytest.approx(np.mean(list(report.per_category.values())))
    assert report.overall == pytest.approx(11 / 12)
    metrics = report.to_metric_results(model="gt")
    assert metrics[0].metric == "shapes_geneval" and metrics[0].value == report.overall
    assert {m.metric for m in metrics[1:]} == {f"shapes_geneval/{c}" for c in CATEGORIES}


def test_geneval_record_scores_like_spec():
    spec = _first("position")
    image = render(_gt(spec), 32)
    assert score(image, PromptSpec.from_geneval(spec.to_geneval())) == score(image, spec)


def test_tinted_background_is_tolerated():
    samples = [W32.sample(i, "test") for i in range(60)]
    tint = np.array([-25, -10, 15])
    images = [np.clip(s.image.astype(int) + tint, 0, 255).astype(np.uint8) for s in samples]
    assert evaluate(images, [s.spec for s in samples]).overall >= 0.95
