"""The shapes world: determinism, geometry, held-out split, captions, GenEval records."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from crossflow_core.data import shapes as sh
from crossflow_core.data.shapes import (
    BACKGROUND,
    CATEGORIES,
    COLOURS,
    HELD_OUT_QUADRANT,
    HELD_OUT_RELATIONS,
    SHAPES,
    PromptSpec,
    Requirement,
    Scene,
    ShapeObject,
    ShapesWorld,
    held_out_hits,
    quadrant,
    render,
    scene_for,
)
from crossflow_core.errors import CrossflowError

W32 = ShapesWorld(32)


@pytest.fixture(scope="module")
def train_samples():
    return [W32.sample(i, "train") for i in range(3000)]


@pytest.fixture(scope="module")
def test_samples():
    return [W32.sample(i, "test") for i in range(1200)]


def test_same_args_same_bytes_and_order_independent():
    a = [ShapesWorld(32, seed=3).sample(i, "train").image.tobytes() for i in (7, 2, 7)]
    fresh = ShapesWorld(32, seed=3)
    b = fresh.sample(7, "train").image.tobytes()
    assert a[0] == a[2] == b
    assert a[0] != a[1]  # different index
    assert ShapesWorld(32, seed=4).sample(7).image.tobytes() != b  # different seed
    assert ShapesWorld(32, seed=3).sample(7, "test").image.tobytes() != b  # different split


def test_different_indices_differ(train_samples):
    digests = {s.image.tobytes() for s in train_samples[:500]}
    assert len(digests) == 500


def test_categories_cycle_and_captions_follow_templates(train_samples):
    colour = "(?:" + "|".join(COLOURS) + ")"
    shape = "(?:" + "|".join(SHAPES) + ")"
    noun = rf"an? {colour} {shape}"
    patterns = {
        "single_object": rf"{noun}",
        "colors": rf"{noun}",
        "two_object": rf"an? {shape} and an? {shape}",
        "counting": rf"(two|three) {shape}s",
        "position": rf"{noun} (to the left of|to the right of|above|below) {noun}",
        "color_attr": rf"{noun} and {noun}",
    }
    for k, s in enumerate(train_samples[:600]):
        assert s.spec.category == CATEGORIES[k % len(CATEGORIES)]
        assert s.caption == s.spec.prompt
        assert re.fullmatch(patterns[s.spec.category], s.caption), s.caption
        assert not re.search(r"\ba [aeiou]", s.caption), s.caption


def test_scene_matches_spec(train_samples, test_samples):
    for s in train_samples[:1200] + test_samples[:600]:
        objs, spec = s.scene.objects, s.spec
        want = sorted(r.shape for r in spec.include for _ in range(r.count))
        # exactly the required objects, required colours honoured, named colours rendered
        assert sorted(o.shape for o in objs) == want
        for req in spec.include:
            n = sum(o.shape == req.shape and (req.colour in (None, o.colour)) for o in objs)
            assert n == req.count, (s.caption, objs)
        if spec.category == "single_object":
            assert (
                s.caption
                == f"{'an' if objs[0].colour[0] in 'aeiou' else 'a'} {objs[0].colour} {objs[0].shape}"
            )
        if spec.category in ("two_object", "color_attr"):
            assert objs[0].shape != objs[1].shape
        if spec.category == "color_attr":
            assert objs[0].colour != objs[1].colour


def _check_geometry(scene: Scene, size: int) -> None:
    objs = scene.objects
    for o in objs:
        h = o.size / 2
        assert 0.22 * size - 1e-6 <= o.size <= 0.44 * size + 1e-6
        assert min(o.cx - h, o.cy - h) >= size / 32 - 1e-6
        assert max(o.cx + h, o.cy + h) <= size - size / 32 + 1e-6
    for i, a in enumerate(objs):
        for b in objs[i + 1 :]:
            sep = max(abs(a.cx - b.cx), abs(a.cy - b.cy)) - (a.size + b.size) / 2
            assert sep >= 0.09 * size - 1e-6, (a, b)


def test_objects_inside_and_apart(train_samples, test_samples):
    for s in train_samples + test_samples:
        _check_geometry(s.scene, 32)
        assert 1 <= len(s.scene.objects) <= 3


def test_position_relation_clearly_holds(train_samples, test_samples):
    n = 0
    for s in train_samples + test_samples:
        if s.spec.category != "position":
            continue
        i, rel, j = s.spec.relation
        a, b = s.scene.objects[i], s.scene.objects[j]
        dx, dy = a.cx - b.cx, a.cy - b.cy
        along, other = (dx, dy) if rel in ("left of", "right of") else (dy, dx)
        sign = -1 if rel in ("left of", "above") else 1
        assert sign * along > 0 and abs(along) >= 2 * abs(other), s.caption
        n += 1
    assert n >= 500


def test_held_out_rule(train_samples, test_samples):
    for s in train_samples:
        assert held_out_hits(s.spec, s.scene, 32) == (), s.caption
    for s in test_samples:
        assert held_out_hits(s.spec, s.scene, 32), s.caption
    # every colour-shape pair still occurs in training, in its three other quadrants
    seen = {(o.colour, o.shape, quadrant(o, 32)) for s in train_samples for o in s.scene.objects}
    for (c, shape), q in HELD_OUT_QUADRANT.items():
        others = {(c, shape, q2) for q2 in sh.QUADRANTS if q2 != q}
        assert others <= seen and (c, shape, q) not in seen
    train_rel = {s.caption for s in train_samples if s.spec.category == "position"}
    assert len(train_rel) > 300
    for (ca, sa), rel, (cb, sb) in HELD_OUT_RELATIONS:
        inverse = sh.INVERSE_RELATION[rel]
        for text in (
            f"{ca} {sa} {sh.RELATION_PHRASES[rel]} {'an' if cb[0] in 'aeiou' else 'a'} {cb} {sb}",
            f"{cb} {sb} {sh.RELATION_PHRASES[inverse]} {'an' if ca[0] in 'aeiou' else 'a'} {ca} {sa}",
        ):
            assert not any(t.endswith(text) for t in train_rel), text


def test_image_size_scales_the_same_scene():
    w64 = ShapesWorld(64)
    for i in range(60):
        a, b = W32.sample(i).scene.objects, w64.sample(i).scene.objects
        np.testing.assert_allclose(
            [(o.cx * 2, o.cy * 2, o.size * 2) for o in a], [(o.cx, o.cy, o.size) for o in b], rtol=1e-9
        )
        s = w64.sample(i, "test")
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        _check_geometry(s.scene, 64)


def test_render_areas_and_colours():
    bg = np.asarray(BACKGROUND, float)
    for name, area in (("square", 100.0), ("circle", np.pi * 25), ("triangle", 50.0)):
        img = render(Scene((ShapeObject(name, "blue", 16.3, 15.7, 10.0),)), 32)
        colour = np.asarray(COLOURS["blue"], float)
        alpha = ((img - bg) @ (colour - bg)) / ((colour - bg) @ (colour - bg))
        assert alpha.sum() == pytest.approx(area, rel=0.03)  # 4x4 supersampling error
        assert np.all(img[16, 16] == COLOURS["blue"])
    # pixel-aligned square: exactly 8x8 pixels of the colour, the rest background
    img = render(Scene((ShapeObject("square", "red", 12.0, 20.0, 8.0),)), 32)
    inside = np.all(img == COLOURS["red"], axis=-1)
    assert inside.sum() == 64 and inside[16:24, 8:16].all()
    assert np.all(img[~inside] == BACKGROUND)


def test_test_prompts_deterministic_and_grouped():
    p1, p2 = W32.test_prompts(8), ShapesWorld(32).test_prompts(8)
    assert p1 == p2 and len(p1) == 8 * len(CATEGORIES)
    assert [p.category for p in p1] == [c for c in CATEGORIES for _ in range(8)]
    held = {(a, r, b) for a, r, b in HELD_OUT_RELATIONS}
    held |= {(b, sh.INVERSE_RELATION[r], a) for a, r, b in held}
    for p in p1:
        if p.category == "position":
            i, rel, j = p.relation
            a, b = p.include[i], p.include[j]
            assert ((a.colour, a.shape), rel, (b.colour, b.shape)) in held


def test_scene_for_any_spec():
    rng = np.random.default_rng(0)
    spec = PromptSpec("four squares", "counting", (Requirement("square", 4),))
    scene = scene_for(spec, rng, 32)
    assert [o.shape for o in scene.objects] == ["square"] * 4
    spec = PromptSpec(
        "x", "position", (Requirement("circle", 1, "red"), Requirement("square", 1)), (0, "below", 1)
    )
    scene = scene_for(spec, rng, 48)
    a, b = scene.objects
    assert a.colour == "red" and a.cy > b.cy
    _check_geometry(scene, 48)


def test_geneval_round_trip(train_samples):
    specs = W32.test_prompts(16) + [s.spec for s in train_samples[:300]]
    for spec in specs:
        record = json.loads(json.dumps(spec.to_geneval()))
        assert PromptSpec.from_geneval(record) == spec
        assert record["tag"] == spec.category and record["prompt"] == spec.prompt
    rec = next(s.spec for s in train_samples if s.spec.category == "position").to_geneval()
    assert "position" not in rec["include"][0] and rec["include"][1]["position"][1] == 0
    rec = next(s.spec for s in train_samples if s.spec.category == "counting").to_geneval()
    assert rec["exclude"] == [{"class": rec["include"][0]["class"], "count": rec["include"][0]["count"] + 1}]
    # a relation whose target comes later is reordered so GenEval can resolve it
    spec = PromptSpec(
        "a", "position", (Requirement("circle", 1, "red"), Requirement("square", 1)), (0, "above", 1)
    )
    rec = spec.to_geneval()
    assert [e["class"] for e in rec["include"]] == ["square", "circle"]
    assert rec["include"][1]["position"] == ["above", 0]


@pytest.mark.parametrize(
    "make",
    [
        lambda: W32.sample(0, "val"),
        lambda: W32.sample(-1),
        lambda: ShapesWorld(8),
        lambda: ShapesWorld(32, categories=("counting", "shapes")),
        lambda: ShapesWorld(32, categories=()),
        lambda: ShapesWorld(32, seed=-1),
        lambda: Requirement("hexagon", 1),
        lambda: Requirement("circle", 1, "pink"),
        lambda: Requirement("circle", 0),
        lambda: PromptSpec("a", "weird", (Requirement("circle", 1),)),
        lambda: PromptSpec("a", "position", (Requirement("circle", 1),), (0, "above", 0)),
        lambda: PromptSpec(
            "a", "position", (Requirement("circle", 1), Requirement("square", 1)), (0, "near", 1)
        ),
        lambda: PromptSpec.from_geneval({"tag": "colors", "prompt": "x"}),
        lambda: render(Scene(()), 10),
        lambda: scene_for(
            PromptSpec("a", "counting", (Requirement("circle", 3), Requirement("square", 2))),
            np.random.default_rng(0),
            32,
        ),
    ],
)
def test_bad_arguments_raise_one_line(make):
    with pytest.raises(CrossflowError) as err:
        make()
    assert "\n" not in str(err.value) and str(err.value)


def test_sampling_is_fast():
    world = ShapesWorld(32, seed=1)
    start = time.perf_counter()
    for i in range(1000):
        world.sample(i)
    rate = 1000 / (time.perf_counter() - start)
    assert rate > 500, f"{rate:.0f} samples/s"  # ~5000/s on one idle core; lenient for shared CI
