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

Categories (GenEval tags) and what the checker requires:
- `single_object` "a red circle": one circle (the colour is named but, as in GenEval, not
  checked).
- `colors` "a red circle": one red circle (same template; class and colour checked).
- `two_object` "a circle and a square": two different shapes, random unnamed colours.
- `counting` "three triangles": exactly 2 or 3 objects of one shape, random colours.
- `position` "a red circle to the left of a blue square": the relation holds clearly (the
  centre offset along its axis is at least twice the offset along the other axis).
- `color_attr` "a red circle and a blue triangle": two shapes, two colours (binding).

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossflow_core.errors import CrossflowError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 0, 50),
    "orange": (255, 125, 0),
    "yellow": (215, 225, 0),
    "green": (0, 160, 60),
    "blue": (20, 90, 235),
    "purple": (150, 20, 170),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASES: dict[str, str] = {r: f"to the {r}" if r.endswith(" of") else r for r in RELATIONS}
INVERSE_RELATION: dict[str, str] = dict(
    zip(RELATIONS, ("right of", "left of", "below", "above"), strict=True)
)
QUADRANTS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
SPLITS: dict[str, int] = {"train": 0, "test": 1}

HELD_OUT_QUADRANT: dict[tuple[str, str], str] = {
    (c, s): QUADRANTS[(ci + si) % 4] for ci, c in enumerate(COLOURS) for si, s in enumerate(SHAPES)
}
# Canonical (subject, relation, target) triples; the inverse phrasing is held out too.
HELD_OUT_RELATIONS: tuple[tuple[tuple[str, str], str, tuple[str, str]], ...] = (
    (("red", "circle"), "left of", ("blue", "square")),
    (("green", "triangle"), "above", ("yellow", "circle")),
    (("purple", "square"), "left of", ("orange", "triangle")),
    (("blue", "circle"), "above", ("red", "triangle")),
    (("yellow", "square"), "left of", ("green", "circle")),
    (("orange", "circle"), "above", ("purple", "square")),
    (("green", "square"), "left of", ("red", "triangle")),
    (("purple", "triangle"), "above", ("blue", "circle")),
    (("orange", "square"), "left of", ("yellow", "triangle")),
    (("red", "square"), "above", ("green", "circle")),
    (("blue", "triangle"), "left of", ("purple", "circle")),
    (("yellow", "triangle"), "above", ("orange", "square")),
)
_HELD_REL_SET = frozenset(HELD_OUT_RELATIONS) | frozenset(
    (b, INVERSE_RELATION[r], a) for a, r, b in HELD_OUT_RELATIONS
)
_COLOUR_NAMES = tuple(COLOURS)
_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
_MAX_OBJECTS = 4
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
class Requirement:
    """GenEval `include` entry: `count` objects of `shape` (and `colour` when not None)."""

    shape: str
    count: int
    colour: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise CrossflowError(f"unknown shape {self.shape!r}; use one of {', '.join(SHAPES)}")
        if self.colour is not None and self.colour not in COLOURS:
            raise CrossflowError(f"unknown colour {self.colour!r}; use one of {', '.join(COLOURS)}")
        if not 1 <= self.count <= _MAX_OBJECTS:
            raise CrossflowError(f"count {self.count} out of range; use 1..{_MAX_OBJECTS}")


@dataclass(frozen=True)
class PromptSpec:
    """A prompt and what an image must show (GenEval semantics).

    `relation = (i, rel, j)`: include[i] is `rel` of include[j] (bounding-box centres).
    Counting prompts require the exact count (GenEval's `exclude` of count + 1).
    """

    prompt: str
    category: str
    include: tuple[Requirement, ...]
    relation: tuple[int, str, int] | None = None

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise CrossflowError(f"unknown category {self.category!r}; use one of {', '.join(CATEGORIES)}")
        if not self.include:
            raise CrossflowError(f"prompt {self.prompt!r} requires no object; add an include")
        if self.relation is not None:
            i, rel, j = self.relation
            n = len(self.include)
            if rel not in RELATIONS or not (0 <= i < n and 0 <= j < n) or i == j:
                raise CrossflowError(
                    f"bad relation {self.relation!r}; use (i, one of {RELATIONS}, j) with i != j"
                )

    def to_geneval(self) -> dict:
        """GenEval `evaluation_metadata.jsonl` record (position target listed before subject)."""
        order = list(range(len(self.include)))
        if self.relation is not None:
            i, _, j = self.relation
            if i < j:  # GenEval resolves the target from earlier groups only
                order.remove(i)
                order.insert(order.index(j) + 1, i)
        rank = {old: new for new, old in enumerate(order)}
        include = []
        for old in order:
            req = self.include[old]
            entry: dict = {"class": req.shape, "count": req.count}
            if req.colour is not None:
                entry["color"] = req.colour
            if self.relation is not None and self.relation[0] == old:
                entry["position"] = [self.relation[1], rank[self.relation[2]]]
            include.append(entry)
        record: dict = {"tag": self.category, "include": include, "prompt": self.prompt}
        if self.category == "counting":
            record["exclude"] = [{"class": r.shape, "count": r.count + 1} for r in self.include]
        return record

    @classmethod
    def from_geneval(cls, record: dict) -> PromptSpec:
        """Inverse of `to_geneval` (the counting `exclude` is implied by the tag)."""
        try:
            include, relation = [], None
            for k, entry in enumerate(record["include"]):
                include.append(Requirement(entry["class"], int(entry["count"]), entry.get("color")))
                if entry.get("position"):
                    rel, target = entry["position"]
                    relation = (k, str(rel), int(target))
            return cls(str(record["prompt"]), str(record["tag"]), tuple(include), relation)
        except (KeyError, TypeError, ValueError) as exc:
            raise CrossflowError(
                f"malformed GenEval record {record!r} ({exc}); need tag, prompt and include"
            ) from None


@dataclass(frozen=True)
class ShapesSample:
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    spec: PromptSpec
    scene: Scene


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(colour: str | None, shape: str) -> str:
    words = f"{colour} {shape}" if colour else shape
    return f"{_article(words)} {words}"


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
        if ((a.colour, a.shape), rel, (b.colour, b.shape)) in _HELD_REL_SET:
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
    if len(kinds) > _MAX_OBJECTS:
        raise CrossflowError(f"{spec.prompt!r} needs {len(kinds)} objects; at most {_MAX_OBJECTS}")
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


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _two(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """Two distinct indices in range(n), uniformly."""
    a = int(rng.integers(n))
    return a, (a + 1 + int(rng.integers(n - 1))) % n


def _spec(category: str, split: str, rng: np.random.Generator) -> PromptSpec:
    """Draw the prompt of one sample (position prompts obey the held-out relations)."""
    colours = _COLOUR_NAMES
    if category in ("single_object", "colors"):
        c, sh = _pick(rng, colours), _pick(rng, SHAPES)
        req = Requirement(sh, 1, c if category == "colors" else None)
        return PromptSpec(_noun(c, sh), category, (req,))
    if category == "two_object":
        a, b = _two(rng, len(SHAPES))
        reqs = (Requirement(SHAPES[a], 1), Requirement(SHAPES[b], 1))
        return PromptSpec(f"{_noun(None, reqs[0].shape)} and {_noun(None, reqs[1].shape)}", category, reqs)
    if category == "counting":
        n, sh = 2 + int(rng.integers(2)), _pick(rng, SHAPES)
        return PromptSpec(f"{_NUMBERS[n]} {sh}s", category, (Requirement(sh, n),))
    if category == "color_attr":
        a, b = _two(rng, len(SHAPES))
        ca, cb = _two(rng, len(colours))
        reqs = (Requirement(SHAPES[a], 1, colours[ca]), Requirement(SHAPES[b], 1, colours[cb]))
        prompt = f"{_noun(reqs[0].colour, reqs[0].shape)} and {_noun(reqs[1].colour, reqs[1].shape)}"
        return PromptSpec(prompt, category, reqs)
    # position: include = (target, subject), relation = (1, rel, 0) as GenEval stores it
    while True:
        if split == "test":
            subj, rel, targ = _pick(rng, HELD_OUT_RELATIONS)
            if rng.random() < 0.5:
                subj, rel, targ = targ, INVERSE_RELATION[rel], subj
        else:
            ia, ib = _two(rng, len(_PAIRS))
            subj, targ, rel = _PAIRS[ia], _PAIRS[ib], _pick(rng, RELATIONS)
            if (subj, rel, targ) in _HELD_REL_SET:
                continue
        prompt = f"{_noun(*subj)} {RELATION_PHRASES[rel]} {_noun(*targ)}"
        reqs = (Requirement(targ[1], 1, targ[0]), Requirement(subj[1], 1, subj[0]))
        return PromptSpec(prompt, "position", reqs, (1, rel, 0))


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
        spec = _spec(category, split, rng)
        scene = scene_for_split(spec, rng, self.image_size, split)
        return spec, scene

    def sample(self, index: int, split: str = "train") -> ShapesSample:
        """Sample `index` of `split`; identical bytes for identical arguments."""
        spec, scene = self._spec_scene(index, split)
        return ShapesSample(render(scene, self.image_size), spec.prompt, spec, scene)

    def test_prompts(self, per_category: int = 16) -> list[PromptSpec]:
        """The specs of the first `per_category` test samples of each category, grouped by
        category (deterministic; prompts may repeat with a different held-out scene)."""
        n = len(self.categories)
        return [self._spec_scene(ci + k * n, "test")[0] for ci in range(n) for k in range(per_category)]
