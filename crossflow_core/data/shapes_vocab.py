"""The shapes world's language: its vocabulary, GenEval-style prompt specs and captions.

`PromptSpec` is what an image must show for a prompt (GenEval semantics; `to_geneval` and
`from_geneval` convert to and from GenEval's metadata records). `draw_spec(category, split, rng)`
draws the prompt of one sample. Scenes, rendering and the world itself are in
`crossflow_core.data.shapes`, which re-exports every name here.

Categories (GenEval tags) and what the checker requires:
- `single_object` "a red circle": one circle (the colour is named but, as in GenEval, not
  checked).
- `colors` "a red circle": one red circle (same template; class and colour checked).
- `two_object` "a circle and a square": two different shapes, random unnamed colours.
- `counting` "three triangles": exactly 2 or 3 objects of one shape, random colours.
- `position` "a red circle to the left of a blue square": the relation holds clearly (the
  centre offset along its axis is at least twice the offset along the other axis).
- `color_attr` "a red circle and a blue triangle": two shapes, two colours (binding).

Held-out combinations (the `test` split; `crossflow_core.data.shapes` applies them to scenes):
`HELD_OUT_QUADRANT` names each colour-shape pair's held-out image quadrant, and
`HELD_OUT_RELATIONS` the 12 position triples (each also blocked in its inverse phrasing) that
training position captions never use and test position prompts always do.
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
HELD_OUT_RELATION_SET = frozenset(HELD_OUT_RELATIONS) | frozenset(
    (b, INVERSE_RELATION[r], a) for a, r, b in HELD_OUT_RELATIONS
)
_COLOUR_NAMES = tuple(COLOURS)
_PAIRS = tuple((c, s) for c in COLOURS for s in SHAPES)
_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
MAX_OBJECTS = 4


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
        if not 1 <= self.count <= MAX_OBJECTS:
            raise CrossflowError(f"count {self.count} out of range; use 1..{MAX_OBJECTS}")


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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun(colour: str | None, shape: str) -> str:
    words = f"{colour} {shape}" if colour else shape
    return f"{_article(words)} {words}"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def _two(rng: np.random.Generator, n: int) -> tuple[int, int]:
    """Two distinct indices in range(n), uniformly."""
    a = int(rng.integers(n))
    return a, (a + 1 + int(rng.integers(n - 1))) % n


def draw_spec(category: str, split: str, rng: np.random.Generator) -> PromptSpec:
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
            if (subj, rel, targ) in HELD_OUT_RELATION_SET:
                continue
        prompt = f"{_noun(*subj)} {RELATION_PHRASES[rel]} {_noun(*targ)}"
        reqs = (Requirement(targ[1], 1, targ[0]), Requirement(subj[1], 1, subj[0]))
        return PromptSpec(prompt, "position", reqs, (1, rel, 0))
