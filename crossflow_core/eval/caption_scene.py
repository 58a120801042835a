"""Scene truth of shapes-world captions: parse a caption with the world's vocabulary and check it
against the rendered scene (what the image actually shows), beside the n-gram metrics.

The world's captions are few templates (`crossflow_core.data.shapes_vocab`): "a red circle",
"a circle and a square", "three triangles", "a red circle and a blue triangle", "a red circle to
the left of a blue square". `parse_caption` reads exactly that language (a/an/one..four, the six
colours, the three shapes, "and", the four relations; case and a final period ignored) and
returns None for anything else. `scene_truth` then judges each field of a caption against the
scene's objects (shape, colour, centre):

- shapes: the multiset of shapes the caption names (x its counts) equals the scene's;
- count: the number of objects it names equals the scene's;
- colours: every (colour, shape) it names is in the scene (with multiplicity), and it names at
  least as many colours as the world's own caption of that scene (so dropping the colours of
  "a red circle" is wrong, while "a circle and a square" for an uncoloured two-object scene is right);
- relation: a relation it states holds in the scene (some subject object and some target object
  matching the mentions, the centre offset along the relation's axis of the right sign and
  larger than the offset along the other axis); stating none is right only when the world's
  caption states none.

An unparsable caption fails every field. `all_correct` needs all four.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields

from crossflow_core.data.shapes_vocab import COLOURS, RELATION_PHRASES, SHAPES
from crossflow_core.errors import CrossflowError

_COUNTS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_PHRASE_TO_RELATION = {phrase: rel for rel, phrase in RELATION_PHRASES.items()}
_NOUN = re.compile(
    rf"(?:(?P<count>{'|'.join(_COUNTS)}) )?(?:(?P<colour>{'|'.join(COLOURS)}) )?"
    rf"(?P<shape>{'|'.join(SHAPES)})(?P<plural>s?)"
)
_RELATION = re.compile(
    rf"(?P<subject>.+?) (?P<phrase>{'|'.join(map(re.escape, _PHRASE_TO_RELATION))}) (?P<target>.+)"
)
FIELDS = ("shapes", "count", "colours", "relation")


@dataclass(frozen=True)
class Mention:
    """`count` objects of `shape`, of `colour` when the caption names one."""

    shape: str
    count: int
    colour: str | None = None


@dataclass(frozen=True)
class ParsedCaption:
    """The mentions of a caption and its relation (subject mention index, relation, target index)."""

    mentions: tuple[Mention, ...]
    relation: tuple[int, str, int] | None = None

    @property
    def coloured(self) -> int:
        """How many objects the caption gives a colour."""
        return sum(m.count for m in self.mentions if m.colour is not None)


@dataclass(frozen=True)
class SceneTruth:
    """Per-field correctness of one caption against one scene (see the module docstring)."""

    parsed: bool
    shapes: bool
    count: bool
    colours: bool
    relation: bool

    @property
    def all_correct(self) -> bool:
        return self.parsed and self.shapes and self.count and self.colours and self.relation


def _mention(text: str) -> Mention | None:
    m = _NOUN.fullmatch(text)
    if m is None:
        return None
    count = _COUNTS[m["count"]] if m["count"] else 0
    if count == 0 or (count == 1) == bool(m["plural"]):  # "circles" needs a number, "two circle" an s
        return None
    return Mention(m["shape"], count, m["colour"])


def parse_caption(text: str) -> ParsedCaption | None:
    """A caption in the shapes world's language -> its mentions and relation; None otherwise."""
    words = " ".join(text.lower().strip().rstrip(".").split())
    rel = _RELATION.fullmatch(words)
    if rel is not None:
        subject, target = _mention(rel["subject"]), _mention(rel["target"])
        if subject is None or target is None or subject.count != 1 or target.count != 1:
            return None
        return ParsedCaption((subject, target), (0, _PHRASE_TO_RELATION[rel["phrase"]], 1))
    mentions = [_mention(part) for part in words.split(" and ")]
    if not mentions or any(m is None for m in mentions):
        return None
    return ParsedCaption(tuple(mentions))  # type: ignore[arg-type]


def _holds(a, b, relation: str) -> bool:
    """Whether object a is `relation` of object b (centres; y grows downwards)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if relation in ("left of", "right of"):
        return (dx < 0 if relation == "left of" else dx > 0) and abs(dx) > abs(dy)
    return (dy < 0 if relation == "above" else dy > 0) and abs(dy) > abs(dx)


def _matches(mention: Mention, obj) -> bool:
    return obj.shape == mention.shape and (mention.colour is None or obj.colour == mention.colour)


def scene_truth(caption: str, scene, reference: str) -> SceneTruth:
    """Judge `caption` against `scene` (a `crossflow_core.data.shapes.Scene`); `reference` is the
    world's own caption of the scene (it sets how many colours and whether a relation are due)."""
    ref = parse_caption(reference)
    if ref is None:
        raise CrossflowError(
            f"the reference {reference!r} is not a shapes-world caption: use the shapes world's captions"
        )
    got = parse_caption(caption)
    if got is None:
        return SceneTruth(False, False, False, False, False)
    objects = scene.objects
    shapes = Counter({m.shape: 0 for m in got.mentions})
    for m in got.mentions:
        shapes[m.shape] += m.count
    scene_shapes = Counter(o.shape for o in objects)
    named = Counter()
    for m in got.mentions:
        if m.colour is not None:
            named[(m.colour, m.shape)] += m.count
    have = Counter((o.colour, o.shape) for o in objects)
    colours = all(have[k] >= n for k, n in named.items()) and got.coloured >= ref.coloured
    if got.relation is None:
        relation = ref.relation is None
    else:
        i, rel, j = got.relation
        relation = any(
            _holds(a, b, rel)
            for a in objects
            if _matches(got.mentions[i], a)
            for b in objects
            if b is not a and _matches(got.mentions[j], b)
        )
    return SceneTruth(
        parsed=True,
        shapes=+shapes == scene_shapes,
        count=sum(shapes.values()) == len(objects),
        colours=colours,
        relation=relation,
    )


def scene_accuracy(captions: Sequence[str], scenes: Sequence, references: Sequence[str]) -> dict[str, float]:
    """Fractions of captions whose parse / each field / all fields are right (`scene_truth`)."""
    if not (len(captions) == len(scenes) == len(references)) or not captions:
        raise CrossflowError(
            f"scene truth needs one scene and reference per caption, got {len(captions)} captions, "
            f"{len(scenes)} scenes, {len(references)} references"
        )
    truths = [scene_truth(c, s, r) for c, s, r in zip(captions, scenes, references, strict=True)]
    out = {
        name: sum(getattr(t, name) for t in truths) / len(truths)
        for name in [f.name for f in fields(SceneTruth)]
    }
    out["all_correct"] = sum(t.all_correct for t in truths) / len(truths)
    return out
