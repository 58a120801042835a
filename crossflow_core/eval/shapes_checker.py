"""GenEval-style scoring of shapes-world images, with no downloaded weights.

`detect` finds objects by colour unmixing against the shapes palette: every pixel is explained
as background (the median of the image's outer frame when near BACKGROUND) blended with one
palette colour, p = bg + alpha * (colour - bg), so anti-aliased and blurred edges keep their
colour and `alpha` measures coverage. Pixels with alpha >= 0.5 and a small residual form
4-connected components (a component holding two strong colours is split by colour);
components smaller than 1% of the image are dropped. Shape comes from the alpha map's
geometry: triangles by their vertical mass asymmetry (1/4 of the area in the upper half,
robust to blur), then squares and circles by the fill of the bounding box (1.0 vs 0.785).
The shape is then fitted (size from the area, centre from the centroid) and its soft IoU with
the alpha map is the detection's confidence; like GenEval's detector threshold, detections
below MIN_CONFIDENCE are not counted (uniform-noise blobs mostly score < 0.6; ground truth
blurred by 1 px scores > 0.69).

`score` follows GenEval's `evaluate` (github.com/djghosh13/geneval): each `include` needs
`count` detections of its class; a named colour must hold for those detections; a position is
judged on bounding-box centres with GenEval's margin (0.1 x the summed box sizes, then the
normalised offset must exceed 0.5 along the axis); extra objects are allowed except in
`counting`, where the count is exact (GenEval's `exclude` of count + 1). One deliberate
difference: GenEval takes the top-`count` detections by confidence before checking colour;
here detections of the requested colour are taken first (our confidence measures shape fit,
not class likelihood), so "a red circle" passes when any detected circle is red.

Images are uint8 [H, W, 3] arrays; `as_image` converts float [H, W, 3] / [3, H, W] in [0, 1]
(numpy or torch) and `evaluate` applies it to every input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from crossflow_core.data.shapes import BACKGROUND, CATEGORIES, COLOURS, PromptSpec, coverage
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.report import MetricResult

POSITION_THRESHOLD = 0.1  # GenEval's margin, a fraction of the summed box dimensions
MIN_AREA_FRACTION = 0.01  # components below this fraction of the image are noise
RESIDUAL_MAX = 90.0  # max distance (0..255 units) of a pixel from its bg-colour blend line
MIN_CONFIDENCE = 0.6  # soft IoU with the fitted shape; ground truth blurred by 1 px: > 0.69
UNKNOWN = "unknown"  # shape of a blob that matches no prototype; never counted

_NAMES = tuple(COLOURS)
_BG = np.asarray(BACKGROUND, np.float32)
_PALETTE = np.asarray([COLOURS[c] for c in _NAMES], np.float32)  # [K, 3]
_BG_TOLERANCE = 60.0  # a frame median this close to BACKGROUND is taken as the image's background
# Shape rule, calibrated on 7-10 px renders at 32x32 with Gaussian blur sigma <= 1 px and/or
# noise sigma <= 15: |asymmetry| of triangles 0.095-0.24, of circles and squares < 0.03; fill of
# squares 0.905-1.0, of circles 0.74-0.845.
_TRIANGLE_ASYM = 0.055
_SQUARE_FILL = 0.875
_ALPHA_LO, _ALPHA_HI = 0.05, 0.9  # alpha rescaled so noisy interiors read as full coverage
_RING_MIN = 0.15  # edge pixels fainter than this are dropped (noise would widen the box)
_MIN_FILL, _MAX_ASYM = 0.35, 0.4  # beyond these a blob is no shape of the world
_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class Detection:
    """One detected object: the fitted shape's box centre (cx, cy) and size (width = height
    unless UNKNOWN) in pixels, area in pixels, confidence = soft IoU with the fitted shape."""

    shape: str
    colour: str
    cx: float
    cy: float
    area: float
    width: float
    height: float
    confidence: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) as GenEval's detector reports it."""
        hw, hh = self.width / 2, self.height / 2
        return (self.cx - hw, self.cy - hh, self.cx + hw, self.cy + hh)


@dataclass(frozen=True)
class PromptScore:
    correct: bool
    reason: str
    category: str
    detections: tuple[Detection, ...] = ()


@dataclass(frozen=True)
class ShapesReport:
    """Accuracy per category and overall (mean over the categories present, as GenEval)."""

    overall: float
    per_category: dict[str, float]
    counts: dict[str, int]
    n: int
    scores: tuple[PromptScore, ...]

    def to_metric_results(self, model: str | None = None) -> list[MetricResult]:
        settings = {"checker": "shapes_checker", "position_threshold": POSITION_THRESHOLD}
        out = [MetricResult("shapes_geneval", self.overall, self.n, dict(settings), model)]
        for cat, acc in self.per_category.items():
            out.append(MetricResult(f"shapes_geneval/{cat}", acc, self.counts[cat], dict(settings), model))
        return out


def as_image(image) -> np.ndarray:
    """uint8 [H, W, 3] from uint8 [H, W, 3] or float [H, W, 3] / [3, H, W] in [0, 1]."""
    if hasattr(image, "detach"):  # a torch tensor
        image = image.detach().float().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise CrossflowError(f"expected an RGB image [H, W, 3] or [3, H, W], got {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise CrossflowError(f"expected uint8 or float images in [0, 1], got dtype {arr.dtype}")
    return np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)


def _unmix(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: best colour index, its alpha, its residual, and alpha on every colour."""
    h, w, _ = image.shape
    frame = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    bg = np.median(frame, axis=0)  # generated backgrounds may be slightly tinted
    if np.linalg.norm(bg - _BG) > _BG_TOLERANCE:
        bg = _BG
    direction = _PALETTE - bg  # [K, 3]
    norm2 = (direction * direction).sum(axis=1)  # [K]
    x = image.reshape(-1, 3).astype(np.float32) - bg  # [N, 3]
    proj = x @ direction.T  # [N, K]
    a = np.clip(proj / norm2, 0.0, 1.0)
    resid2 = (x * x).sum(axis=1, keepdims=True) - 2 * a * proj + a * a * norm2
    best = resid2.argmin(axis=1)
    rows = np.arange(best.size)
    alpha, resid = a[rows, best], np.sqrt(np.maximum(resid2[rows, best], 0.0))
    return best.reshape(h, w), alpha.reshape(h, w), resid.reshape(h, w), a.reshape(h, w, -1)


def _measure(alpha: np.ndarray, y0: int, x0: int) -> tuple[float, float, float, float, float, float]:
    """(cx, cy, width, height, fill, asymmetry) of a soft mask [h, w] placed at (y0, x0)."""
    area = float(alpha.sum())
    colp, rowp = alpha.max(axis=0), alpha.max(axis=1)
    width, height = float(colp.sum()), float(rowp.sum())
    cx = x0 + float((np.arange(colp.size) + 0.5) @ colp) / width
    cy = y0 + float((np.arange(rowp.size) + 0.5) @ rowp) / height
    rows = alpha.sum(axis=1)
    above = np.clip(cy - (y0 + np.arange(rows.size)), 0.0, 1.0)
    asym = float(rows @ above) / area - 0.5
    return cx, cy, width, height, area / (width * height), asym


def _classify(fill: float, asym: float) -> str:
    """Shape by the calibrated rule (asymmetry first, then fill), or UNKNOWN."""
    if fill < _MIN_FILL or abs(asym) > _MAX_ASYM:
        return UNKNOWN
    if abs(asym) >= _TRIANGLE_ASYM:
        return "triangle"
    return "square" if fill >= _SQUARE_FILL else "circle"


_AREA_PER_SIDE2 = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}


def _fit(amap: np.ndarray, y0: int, x0: int, colour: str) -> Detection:
    """Classify a soft mask [h, w] at (y0, x0) and fit its shape; confidence = soft IoU."""
    cx, cy, width, height, fill, asym = _measure(amap, y0, x0)
    shape = _classify(fill, asym)
    area = float(amap.sum())
    if shape == UNKNOWN:
        return Detection(shape, colour, cx, cy, area, width, height, 0.0)
    size = float(np.sqrt(area / _AREA_PER_SIDE2[shape]))
    ys, xs = np.arange(amap.shape[0]) + 0.5, np.arange(amap.shape[1]) + 0.5
    gx = x0 + float(amap.sum(axis=0) @ xs) / area  # centroid
    gy = y0 + float(amap.sum(axis=1) @ ys) / area
    if shape == "triangle":  # the centroid lies size/6 below the box centre
        gy -= np.sign(-asym) * size / 6
    tmpl = coverage(shape, gx, gy, size, y0, x0, *amap.shape)
    iou = float(np.minimum(amap, tmpl).sum() / np.maximum(amap, tmpl).sum())
    return Detection(shape, colour, gx, gy, area, size, size, iou)


def detect(image) -> list[Detection]:
    """Objects in an RGB image (see `as_image`), largest first."""
    img = as_image(image)
    h, w, _ = img.shape
    min_area = MIN_AREA_FRACTION * h * w
    best, alpha, resid, a_all = _unmix(img)
    strong = (alpha >= 0.5) & (resid <= RESIDUAL_MAX)
    labels, _ = ndimage.label(strong)
    found: list[Detection] = []
    for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        ys = slice(max(sl[0].start - 2, 0), min(sl[0].stop + 2, h))
        xs = slice(max(sl[1].start - 2, 0), min(sl[1].stop + 2, w))
        comp = labels[ys, xs] == lab
        colour_w = np.bincount(best[ys, xs][comp], alpha[ys, xs][comp], minlength=len(_NAMES))
        total = colour_w.sum()
        if total < min_area:
            continue
        present = [c for c in np.argsort(-colour_w) if colour_w[c] >= max(0.25 * total, min_area)]
        parts: list[tuple[np.ndarray, int]] = []
        if len(present) <= 1:
            parts.append((comp, int(colour_w.argmax())))
        else:  # two touching objects of different colours
            for c in present:
                sub, n_sub = ndimage.label(comp & (best[ys, xs] == c))
                parts.extend((sub == k, int(c)) for k in range(1, n_sub + 1))
        others = strong[ys, xs]
        for mask, c in parts:
            soft = ndimage.binary_dilation(mask, _EIGHT) & ~(others & ~mask)
            amap = np.where(soft, a_all[ys, xs, c], 0.0)
            amap[~mask & (amap < _RING_MIN)] = 0.0  # faint ring pixels are mostly noise
            amap = np.clip((amap - _ALPHA_LO) / (_ALPHA_HI - _ALPHA_LO), 0.0, 1.0)
            if amap.sum() < min_area:
                continue
            found.append(_fit(amap, ys.start, xs.start, _NAMES[c]))
    found.sort(key=lambda d: -d.area)
    return found


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of `a` to `b` by GenEval's rule on bounding-box centres and sizes."""
    offset = np.array([a.cx - b.cx, a.cy - b.cy])
    dims = np.array([a.width + b.width, a.height + b.height])
    revised = np.maximum(np.abs(offset) - threshold * dims, 0.0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def score(image, spec: PromptSpec) -> PromptScore:
    """Whether an image satisfies a prompt spec, with GenEval's rules (module docstring)."""
    dets = [d for d in detect(image) if d.shape != UNKNOWN and d.confidence >= MIN_CONFIDENCE]
    reasons: list[str] = []
    groups: list[list[Detection] | None] = []
    for req in spec.include:
        cands = sorted(
            (d for d in dets if d.shape == req.shape),
            key=lambda d: (req.colour is not None and d.colour != req.colour, -d.confidence),
        )
        found = cands[: req.count]
        name = f"{req.colour} {req.shape}" if req.colour else req.shape
        if len(found) < req.count:
            reasons.append(f"expected {req.shape}>={req.count}, found {len(found)}")
            groups.append(None)
        elif req.colour is not None and sum(d.colour == req.colour for d in found) < req.count:
            seen = ", ".join(sorted(d.colour for d in cands))
            reasons.append(f"expected {name}>={req.count}, found colours {seen}")
            groups.append(None)
        else:
            groups.append(found)
    if spec.relation is not None and groups[spec.relation[0]] is not None:
        i, rel, j = spec.relation
        if groups[j] is None:
            reasons.append(f"no target for {spec.include[i].shape} to be {rel}")
        else:
            for obj in groups[i]:
                for target in groups[j]:
                    true_rels = relative_position(obj, target)
                    if rel not in true_rels:
                        got = " and ".join(sorted(true_rels)) or "no clear relation to"
                        reasons.append(f"expected {spec.include[i].shape} {rel} target, found {got}")
                        break
    if spec.category == "counting":
        for req in spec.include:
            n = sum(d.shape == req.shape for d in dets)
            if n > req.count:
                reasons.append(f"expected {req.shape}<{req.count + 1}, found {n}")
    return PromptScore(not reasons, "; ".join(reasons), spec.category, tuple(dets))


def score_alone(image, spec: PromptSpec) -> PromptScore:
    """`score`, and nothing else in the image: every object `detect` finds (any shape, any
    confidence, unknown blobs included) must be one the spec asks for. A single-object prompt
    answered with two objects fails here, though GenEval's `colors` rule accepts it."""
    result = score(image, spec)
    found = detect(image)
    wanted = sum(req.count for req in spec.include)
    if len(found) <= wanted:
        return result
    extra = f"expected {wanted} object{'s' if wanted > 1 else ''} alone, found {len(found)}"
    reason = "; ".join(r for r in (result.reason, extra) if r)
    return PromptScore(False, reason, result.category, result.detections)


def evaluate(images, specs: list[PromptSpec]) -> ShapesReport:
    """Score images[i] against specs[i]; images: a list/array/tensor of images (`as_image`)."""
    images = list(images)
    if len(images) != len(specs):
        raise CrossflowError(f"got {len(images)} images for {len(specs)} prompts; pass one per prompt")
    if not specs:
        raise CrossflowError("no images to evaluate; pass at least one image and prompt")
    scores = tuple(score(img, spec) for img, spec in zip(images, specs, strict=True))
    per, counts = {}, {}
    for cat in CATEGORIES:
        hits = [s.correct for s in scores if s.category == cat]
        if hits:
            per[cat], counts[cat] = float(np.mean(hits)), len(hits)
    overall = float(np.mean(list(per.values())))
    return ShapesReport(overall, per, counts, len(scores), scores)
