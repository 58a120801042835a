"""The shapes world: the embedded default dataset (seeded, no downloads).

Small RGB images (default 32x32; any size >= 16) holding 1-3 flat objects (circle, square,
triangle) in six saturated colours on a near-white background, each with a caption and a
GenEval-style `PromptSpec` (the checker in `crossflow_core.eval.shapes_checker` scores images
against it). `ShapesWorld.sample(index, split)` is a pure function of
(seed, split, index, image_size); all geometry is proportional to the image size, so the
64x64 scene of an index is the 32x32 scene scaled by two.

Geometry: an object is its axis-aligned bounding square (`cx`, `cy`, `size`, in pixels at render
size; x to the right, y down). Circles fill it, squares are it, triangles point up (apex at the
top centre, base along the bottom edge). Objects lie fully inside the image (1/32 of the size
as border) and their squares are at least 0.09 * size apart, so they never touch. Sizes are
0.22-0.44 of the image (7-14 px at 32x32), smaller when there are more objects.

The vocabulary, prompt specs, captions and categories are in `shapes_vocab` (re-exported
here); this module places and renders scenes and defines the world.

Held-out split (compositional): the `train` split never contains, and every `test` scene
contains at least one of:
1. A colour-shape pair centred in its held-out image quadrant, `HELD_OUT_QUADRANT` (quadrant
   index = (colour index + shape index) mod 4 over COLOURS and SHAPES order, quadrants ordered
   top-left, top-right, bottom-left, bottom-right). E.g. a red circle never has its centre in
   the top-left quadrant during training. Every colour-shape pair still occurs in training
   (in the other three quadrants), so single-object prompts are never new words.
   Non-position test scenes put one object in its held-out quadrant.
2. A position prompt from `HELD_OUT_RELATIONS` (12 triples, each also blocked in its inverse
   phrasing: "a blue square to the right of a red circle"). Training position captions never
   use them; test position scenes always do (their quadrants are unconstrained).
`held_out_hits(spec, scene, image_size)` names the held-out combinations a sample contains.

Depth (the depth task's ground truth, an extra output: images, captions and specs are unchanged):
`ShapesWorld.depth(index, split)` is the metric depth map of the same scene, a ground plane seen
in perspective with the objects standing on it (camera and rules in `shapes_depth`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossflow_core.data.shapes_vocab import (  # noqa: F401 - re-exported: the world's vocabulary
    BACKGROUND,
    CATEGORIES,
    COLOURS,
    HELD_OUT_QUADRANT,
    HELD_OUT_RELATION_SET,
    HELD_OUT_RELATIONS,
    INVERSE_RELATION,
    MAX_OBJECTS,
    QUADRANTS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SPLITS,
    PromptSpec,
    Requirement,
    draw_spec,
)
from crossflow_core.errors import CrossflowError

_COLOUR_NAMES = tuple(COLOURS)
_SIZE_RANGE = {1: (0.25, 0.44), 2: (0.22, 0.36), 3: (0.22, 0.30), 4: (0.20, 0.26)}
_GAP = 0.09  # minimum distance between bounding squares, fraction of the image size
_BORDER = 1 / 32  # minimum distance to the image edge, fraction of the image size
_SS = 4  # supersampling factor per axis for anti-aliasing


@dataclass(frozen=True)
class ShapeObject:
    """One object: its bounding square centred at (cx, cy) with side `size`, in pixels."""

    shape: str
    colour: str
    cx: float
    cy: float
    size: float


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class ShapesSample:
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    spec: PromptSpec
    scene: Scene


def _check_size(image_size: int) -> None:
    if not isinstance(image_size, int | np.integer) or image_size < 16:
        raise CrossflowError(f"image_size must be an integer >= 16, got {image_size!r}")


def quadrant(obj: ShapeObject, image_size: int) -> str:
    """The image quadrant holding the object's centre."""
    half = image_size / 2
    return QUADRANTS[2 * int(obj.cy >= half) + int(obj.cx >= half)]


def held_out_hits(spec: PromptSpec, scene: Scene, image_size: int) -> tuple[str, ...]:
    """The held-out combinations a (spec, scene) contains; empty for every train sample."""
    hits = [
        f"{o.colour} {o.shape} in the {quadrant(o, image_size)} quadrant"
        for o in scene.objects
        if HELD_OUT_QUADRANT[(o.colour, o.shape)] == quadrant(o, image_size)
    ]
    if spec.category == "position" and spec.relation is not None:
        i, rel, j = spec.relation
        a, b = spec.include[i], spec.include[j]
        if ((a.colour, a.shape), rel, (b.colour, b.shape)) in HELD_OUT_RELATION_SET:
            hits.append(f"position prompt {spec.prompt!r}")
    return tuple(hits)


def coverage(shape: str, cx: float, cy: float, size: float, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Fraction of each pixel of the window [y0:y0+h, x0:x0+w] the shape covers: float32 [h, w]."""
    sub = (np.arange(_SS, dtype=np.float32) + 0.5) / _SS
    xs = (np.arange(x0, x0 + w, dtype=np.float32)[:, None] + sub).reshape(1, -1) - cx
    ys = (np.arange(y0, y0 + h, dtype=np.float32)[:, None] + sub).reshape(-1, 1) - cy
    half = size / 2
    if shape == "circle":
        inside = xs * xs + ys * ys <= half * half
    elif shape == "square":
        inside = (np.abs(xs) <= half) & (np.abs(ys) <= half)
    else:  # apex (0, -half), base y = +half; the half-width grows from 0 to half
        inside = (ys <= half) & (2 * np.abs(xs) <= ys + half)
    return inside.reshape(h, _SS, w, _SS).mean(axis=(1, 3), dtype=np.float32)


def render(scene: Scene, image_size: int) -> np.ndarray:
    """Anti-aliased rendering (4x4 supersampling, box filter): uint8 [H, W, 3]."""
    _check_size(image_size)
    bg = np.asarray(BACKGROUND, np.float32)
    img = np.empty((image_size, image_size, 3), np.float32)
    img[:] = bg
    for o in scene.objects:
        h = o.size / 2
        x0, x1 = max(int(np.floor(o.cx - h)), 0), min(int(np.ceil(o.cx + h)), image_size)
        y0, y1 = max(int(np.floor(o.cy - h)), 0), min(int(np.ceil(o.cy + h)), image_size)
        cov = coverage(o.shape, o.cx, o.cy, o.size, y0, x0, y1 - y0, x1 - x0)
        colour = np.asarray(COLOURS[o.colour], np.float32)
        img[y0:y1, x0:x1] += cov[..., None] * (colour - bg)
    return np.rint(img).astype(np.uint8)


def _relation_ok(a: np.ndarray, b: np.ndarray, rel: str) -> np.ndarray:
    """Whether centres a [..., 2] are clearly `rel` of centres b (2x dominant axis)."""
    dx, dy = a[..., 0] - b[..., 0], a[..., 1] - b[..., 1]
    if rel in ("left of", "right of"):
        sign = -1.0 if rel == "left of" else 1.0
        return (sign * dx > 0) & (np.abs(dx) >= 2 * np.abs(dy))
    sign = -1.0 if rel == "above" else 1.0
    return (sign * dy > 0) & (np.abs(dy) >= 2 * np.abs(dx))


def _layout(
    kinds: list[tuple[str, str]],
    rng: np.random.Generator,
    image_size: int,
    relation: tuple[int, str, int] | None = None,
    split: str | None = None,
) -> Scene:
    """Place objects (shape, colour) without overlap; `split` applies the held-out rule."""
    n, s = len(kinds), float(image_size)
    lo_size, hi_size = _SIZE_RANGE[n]
    gap, border = _GAP * s, _BORDER * s
    held = [QUADRANTS.index(HELD_OUT_QUADRANT[(c, sh)]) for sh, c in kinds]
    order = list(range(n))
    if relation is not None:  # the target first, then the subject relative to it
        order = [relation[2], relation[0]] + [k for k in order if k not in relation[::2]]
    forced = int(rng.integers(n)) if split == "test" else -1
    for _ in range(200):
        sizes = (lo_size + (hi_size - lo_size) * rng.random(n)) * s
        centres = np.zeros((n, 2))
        ok = True
        for k in order:
            half = sizes[k] / 2
            cand = border + half + rng.random((64, 2)) * (s - 2 * border - 2 * half)
            q = 2 * (cand[:, 1] >= s / 2) + (cand[:, 0] >= s / 2)
            valid = q != held[k] if split == "train" else np.ones(len(cand), bool)
            if k == forced:
                valid &= q == held[k]
            for m in order[: order.index(k)]:
                reach = (sizes[k] + sizes[m]) / 2 + gap
                valid &= np.abs(cand - centres[m]).max(axis=1) >= reach
            if relation is not None and k == relation[0]:
                valid &= _relation_ok(cand, centres[relation[2]], relation[1])
            hit = np.flatnonzero(valid)
            if hit.size == 0:
                ok = False
                break
            centres[k] = cand[hit[0]]
        if ok:
            return Scene(
                tuple(
                    ShapeObject(sh, c, float(centres[k, 0]), float(centres[k, 1]), float(sizes[k]))
                    for k, (sh, c) in enumerate(kinds)
                )
            )
    raise CrossflowError(f"could not place {n} objects in a {image_size}px image; use fewer")


def _kinds(
    spec: PromptSpec, rng: np.random.Generator
) -> tuple[list[tuple[str, str]], tuple[int, str, int] | None]:
    """Objects (shape, colour) a spec asks for, and its relation over object indices.

    A colour the spec leaves open is the one the prompt names before the shape ("a red
    circle" for `single_object`), else random.
    """
    kinds, first = [], []
    words = spec.prompt.lower().split()
    for req in spec.include:
        first.append(len(kinds))
        colour = req.colour
        if colour is None:
            pairs = zip(words, words[1:], strict=False)
            named = [w for w, nxt in pairs if w in COLOURS and nxt.startswith(req.shape)]
            colour = named[0] if len(set(named)) == 1 else None
        for _ in range(req.count):
            kinds.append((req.shape, colour or _COLOUR_NAMES[int(rng.integers(len(COLOURS)))]))
    if len(kinds) > MAX_OBJECTS:
        raise CrossflowError(f"{spec.prompt!r} needs {len(kinds)} objects; at most {MAX_OBJECTS}")
    if spec.relation is None:
        return kinds, None
    i, rel, j = spec.relation
    if spec.include[i].count != 1 or spec.include[j].count != 1:
        raise CrossflowError(f"relation in {spec.prompt!r} needs count 1 on both sides")
    return kinds, (first[i], rel, first[j])


def scene_for(spec: PromptSpec, rng: np.random.Generator, image_size: int) -> Scene:
    """A ground-truth scene for any spec: exactly the required objects (no held-out rule)."""
    _check_size(image_size)
    kinds, relation = _kinds(spec, rng)
    return _layout(kinds, rng, image_size, relation)


def scene_for_split(spec: PromptSpec, rng: np.random.Generator, image_size: int, split: str) -> Scene:
    """`scene_for` under the held-out rule of `split` (see the module docstring)."""
    _check_size(image_size)
    kinds, relation = _kinds(spec, rng)
    rule = None if split == "test" and spec.category == "position" else split
    return _layout(kinds, rng, image_size, relation, rule)


class ShapesWorld:
    """Seeded shapes dataset; sample k has category `categories[k % len(categories)]`."""

    def __init__(self, image_size: int = 32, seed: int = 0, categories: tuple[str, ...] = CATEGORIES) -> None:
        _check_size(image_size)
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise CrossflowError(f"seed must be a non-negative integer, got {seed!r}")
        categories = tuple(categories)
        bad = [c for c in categories if c not in CATEGORIES]
        if bad or not categories:
            raise CrossflowError(
                f"unknown or empty categories {bad or categories!r}; use some of {', '.join(CATEGORIES)}"
            )
        self.image_size, self.seed, self.categories = int(image_size), int(seed), categories

    def _spec_scene(self, index: int, split: str) -> tuple[PromptSpec, Scene]:
        if split not in SPLITS:
            raise CrossflowError(f"unknown split {split!r}; use 'train' or 'test'")
        if not isinstance(index, int | np.integer) or index < 0:
            raise CrossflowError(f"sample index must be a non-negative integer, got {index!r}")
        rng = np.random.default_rng([self.seed, SPLITS[split], int(index)])
        category = self.categories[int(index) % len(self.categories)]
        spec = draw_spec(category, split, rng)
        scene = scene_for_split(spec, rng, self.image_size, split)
        return spec, scene

    def sample(self, index: int, split: str = "train") -> ShapesSample:
        """Sample `index` of `split`; identical bytes for identical arguments."""
        spec, scene = self._spec_scene(index, split)
        return ShapesSample(render(scene, self.image_size), spec.prompt, spec, scene)

    def depth(self, index: int, split: str = "train") -> np.ndarray:
        """The depth map (metres, float32 [H, W]) of sample `index` of `split` (see `shapes_depth`)."""
        from crossflow_core.data.shapes_depth import render_depth

        return render_depth(self._spec_scene(index, split)[1], self.image_size)

    def test_prompts(self, per_category: int = 16) -> list[PromptSpec]:
        """The specs of the first `per_category` test samples of each category, grouped by
        category (deterministic; prompts may repeat with a different held-out scene)."""
        n = len(self.categories)
        return [self._spec_scene(ci + k * n, "test")[0] for ci in range(n) for k in range(per_category)]
