"""Where (image, caption) pairs come from before `prepare` shards them.

A source yields `SourceRecord`s in a deterministic order, knows how many it will yield at most
(`len`, for progress bars), counts what it skipped (`skipped`) and describes itself (`describe`).

- `ShapesSource`: the built-in shapes world (seeded, no downloads).
- `FolderSource`: a user's folder of images with captions, in any of these layouts:
  1. a sidecar text file per image: ``cat.png`` + ``cat.txt`` (same folder, same stem);
  2. ``captions.jsonl``: one ``{"file_name" | "image" | "file" | "path": ..., "caption" | "text": ...}``
     per line, paths relative to the jsonl's folder;
  3. Hugging Face ImageFolder's ``metadata.jsonl`` (``file_name`` + ``text``), same rules.
  Folders may nest and mix layouts. A jsonl entry wins over a sidecar; an image listed on several
  lines (or with a list of captions) gives one record per caption. Images without a caption,
  empty captions, captions whose image is missing and unreadable images are skipped and counted
  (a warning is logged); a malformed jsonl line is an error naming file:line.
  For a depth task (`require_depth`) every image needs a depth sidecar, ``NAME.depth.png`` (16-bit,
  `data.depth_scale` units per metre, millimetres by default) or ``NAME.depth.npy`` (float metres),
  and captions are optional; a missing, corrupt or wrongly sized depth map is an error naming the
  file (`crossflow_core.depth_files`: the image and its depth are resized and cropped alike).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from crossflow_core.depth_files import SIDECAR_HELP, fit_image_and_depth, is_depth_file, sidecar_of
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
CAPTION_FILES = ("metadata.jsonl", "captions.jsonl")
IMAGE_KEYS = ("file_name", "image", "file", "path")
CAPTION_KEYS = ("text", "caption")
LAYOUTS = ("IMAGE.txt sidecars beside each image, captions.jsonl, or metadata.jsonl "
           '({"file_name": ..., "text": ...} per line)')
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class SourceRecord:
    """One training pair. image: uint8 [H, W, 3] array or an RGB PIL image of the target size."""

    key: str  # WebDataset-safe: [A-Za-z0-9_-] only, unique within a source
    image: np.ndarray | Image.Image
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    depth: np.ndarray | None = None  # depth tasks: float32 metres [H, W] of the target size, 0 = unknown


def safe_key(text: str, limit: int = 60) -> str:
    """A WebDataset-safe key fragment: no dots or slashes ([A-Za-z0-9_-] only)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")
    return slug[:limit] or "x"


def clean_caption(text: str) -> str:
    """Collapse whitespace (newlines, tabs, runs of spaces) to single spaces."""
    return " ".join(text.split())


class ShapesSource:
    """`num_samples` samples of the shapes world; meta holds the GenEval spec and the scene."""

    def __init__(
        self, image_size: int, num_samples: int, seed: int, split: str = "train", with_depth: bool = False,
        categories: tuple[str, ...] = (),
    ) -> None:
        from crossflow_core.data.shapes import CATEGORIES, ShapesWorld

        if num_samples < 1:
            raise CrossflowError(f"data.num_samples must be >= 1, got {num_samples}")
        self.categories = tuple(categories) or CATEGORIES
        self.world = ShapesWorld(image_size=image_size, seed=seed, categories=self.categories)
        self.image_size, self.num_samples, self.seed, self.split = image_size, num_samples, seed, split
        self.with_depth = with_depth
        self.skipped: dict[str, int] = {}

    def __len__(self) -> int:
        return self.num_samples

    def describe(self) -> dict[str, Any]:
        from crossflow_core.data.shapes import CATEGORIES

        out = {"kind": "shapes", "split": self.split, "seed": self.seed,
               "num_samples": self.num_samples, "image_size": self.image_size}
        if self.categories != CATEGORIES:
            out["categories"] = list(self.categories)  # absent for the default mix, as before
        return out

    def __iter__(self) -> Iterator[SourceRecord]:
        from crossflow_core.data.shapes_depth import render_depth

        for index in range(self.num_samples):
            s = self.world.sample(index, self.split)
            meta = {"index": index, "split": self.split, "category": s.spec.category,
                    "geneval": s.spec.to_geneval(), "objects": [dict(vars(o)) for o in s.scene.objects]}
            depth = render_depth(s.scene, self.image_size) if self.with_depth else None
            yield SourceRecord(f"{self.split}-{index:08d}", s.image, s.caption, meta, depth)


def load_rgb(path: Path, image_size: int) -> Image.Image:
    """Open an image file as RGB, EXIF orientation applied, resized (shorter side) + centre-cropped.

    Alpha is composited on white; 16-bit greyscale is scaled to 8 bits. Raises OSError (and the
    other errors PIL raises) for unreadable files.
    """
    with Image.open(path) as im:
        if im.format == "JPEG":
            im.draft(None, (image_size, image_size))  # DCT downscaling, still >= image_size per side
        im.load()
        im = ImageOps.exif_transpose(im)
        im = _to_rgb(im)
    return ImageOps.fit(im, (image_size, image_size), method=Image.Resampling.LANCZOS)


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I") or mode == "F":  # 16/32-bit integer or float greyscale
        arr = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" or mode == "PA":
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im).convert("RGB")
    return im if mode == "RGB" else im.convert("RGB")


@dataclass(frozen=True)
class _Pair:
    image: Path
    rel: str  # image path relative to the root, '/'-separated
    caption: str
    origin: str  # which layout gave the caption
    depth: Path | None = None  # its depth sidecar (depth tasks)


class FolderSource:
    """A folder of images + captions (see the module docstring for the accepted layouts)."""

    def __init__(self, root: Path, image_size: int, workers: int = 4, require_captions: bool = True,
                 require_depth: bool = False, depth_scale: float = 1000.0) -> None:
        self.root = Path(os.path.abspath(Path(root).expanduser()))
        self.image_size = image_size
        self.require_captions = require_captions
        self.require_depth, self.depth_scale = require_depth, depth_scale
        self.workers = workers
        if not self.root.is_dir():
            raise CrossflowError(f"source folder {self.root} does not exist or is not a folder: "
                                 f"pass a folder of images with captions ({LAYOUTS})")
        self.skipped: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.layouts: Counter[str] = Counter()
        self.pairs = self._scan()
        self._depths = {p.image: p.depth for p in self.pairs}
        if not self.pairs and not require_captions:
            raise CrossflowError(f"no image in {self.root}: expected files ending in "
                                 f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
        if not self.pairs:
            raise CrossflowError(f"no usable image + caption pair in {self.root}: "
                                 f"accepted layouts are {LAYOUTS}")

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self) -> dict[str, Any]:
        out = {"kind": "folder", "path": str(self.root), "image_size": self.image_size,
               "pairs": len(self.pairs), "layouts": dict(sorted(self.layouts.items())),
               "skipped_examples": {k: list(v) for k, v in sorted(self.examples.items())}}
        if self.require_depth:
            out["depth"] = {"png_units_per_metre": self.depth_scale, "resize": "nearest"}
        return out

    def _skip(self, reason: str, what: str) -> None:
        self.skipped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(what)

    def _scan(self) -> list[_Pair]:
        images: list[Path] = []
        sidecars: dict[Path, Path] = {}  # image path without suffix -> .txt path
        jsonls: list[Path] = []
        for path in sorted(self._walk(self.root)):
            suffix = path.suffix.lower()
            if self.require_depth and is_depth_file(path):
                continue  # a depth sidecar, not an image
            if suffix in IMAGE_EXTENSIONS:
                images.append(path)
            elif path.name in CAPTION_FILES:
                jsonls.append(path)
            elif suffix == ".txt":
                sidecars[path.with_suffix("")] = path
        listed: dict[Path, list[tuple[str, str]]] = {}
        for jsonl in jsonls:
            for image, caption in self._read_jsonl(jsonl):
                listed.setdefault(image, []).append((caption, jsonl.name))
        image_set = set(images)
        for image in sorted(set(listed) - image_set):
            self._skip("caption_without_image", self._rel(image))
        pairs: list[_Pair] = []
        used_sidecars: set[Path] = set()
        for image in images:
            entries = listed.get(image)
            if entries is None:
                sidecar = sidecars.get(image.with_suffix(""))
                if sidecar is None and not self.require_captions:  # a task that reads no text
                    self.layouts["no_caption"] += 1
                    pairs.append(_Pair(image, self._rel(image), "", "no_caption"))
                    continue
                if sidecar is None:
                    self._skip("image_without_caption", self._rel(image))
                    continue
                used_sidecars.add(sidecar)
                entries = [(self._read_text(sidecar), "sidecar_txt")]
            for caption, origin in entries:
                caption = clean_caption(caption)
                if not caption and not self.require_captions:
                    self.layouts[origin] += 1
                    pairs.append(_Pair(image, self._rel(image), "", origin))
                    continue
                if not caption:
                    self._skip("empty_caption", self._rel(image))
                    continue
                self.layouts[origin] += 1
                pairs.append(_Pair(image, self._rel(image), caption, origin))
        stems = {image.with_suffix("") for image in images}
        for stem, sidecar in sorted(sidecars.items()):
            if sidecar not in used_sidecars and stem not in stems:
                self._skip("caption_without_image", self._rel(sidecar))
        return [self._with_depth(p) for p in pairs] if self.require_depth else pairs

    def _with_depth(self, pair: _Pair) -> _Pair:
        depth = sidecar_of(pair.image)
        if depth is None:
            raise CrossflowError(f"image {pair.image} has no depth map: {SIDECAR_HELP}, or remove the image")
        return _Pair(pair.image, pair.rel, pair.caption, pair.origin, depth)

    @staticmethod
    def _walk(root: Path) -> Iterator[Path]:
        """Files under root, skipping hidden entries and macOS resource folders."""
        for path in root.rglob("*"):
            parts = path.relative_to(root).parts
            if any(p.startswith(".") or p == "__MACOSX" for p in parts):
                continue
            if path.is_file():
                yield path

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _read_text(self, path: Path) -> str:
        data = path.read_bytes()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError:
            return data.decode("latin-1")

    def _read_jsonl(self, jsonl: Path) -> Iterator[tuple[Path, str]]:
        where = self._rel(jsonl)
        for lineno, line in enumerate(self._read_text(jsonl).splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CrossflowError(f"{jsonl}:{lineno}: invalid JSON ({exc.msg}): "
                                     "fix or remove the line") from None
            if not isinstance(entry, dict):
                raise CrossflowError(f"{jsonl}:{lineno}: expected a JSON object, got {type(entry).__name__}")
            name = next((entry[k] for k in IMAGE_KEYS if k in entry), None)
            caption = next((entry[k] for k in CAPTION_KEYS if k in entry), None)
            if not isinstance(name, str) or not name:
                raise CrossflowError(f"{jsonl}:{lineno}: no image file name: use one of the keys "
                                     f"{', '.join(IMAGE_KEYS)} with a relative path")
            captions = caption if isinstance(caption, list) else [caption]
            if caption is None or not all(isinstance(c, str) for c in captions):
                raise CrossflowError(f"{jsonl}:{lineno}: no caption string: use the key "
                                     f"{' or '.join(CAPTION_KEYS)} (a string or a list of strings)")
            image = Path(os.path.normpath(jsonl.parent / name))
            if not captions:
                self._skip("empty_caption", where + f":{lineno}")
            for text in captions:
                yield image, text

    def __iter__(self) -> Iterator[SourceRecord]:
        """Decode in a small thread pool (PIL releases the GIL), yield in sorted order.

        An image with several captions is decoded once per chunk; unreadable images are
        skipped and counted in ``skipped["unreadable_image"]``.
        """
        self.skipped.pop("unreadable_image", None)
        self.examples.pop("unreadable_image", None)
        chunk = max(32, 16 * self.workers)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for start in range(0, len(self.pairs), chunk):
                batch = self.pairs[start:start + chunk]
                unique = list(dict.fromkeys(p.image for p in batch))
                loaded = dict(zip(unique, pool.map(self._load, unique), strict=True))
                for offset, pair in enumerate(batch):
                    image, depth = loaded[pair.image], None
                    if isinstance(image, CrossflowError):  # a bad depth map: the pair cannot be used
                        raise image
                    if isinstance(image, tuple):
                        image, depth = image
                    if isinstance(image, Exception):
                        self._skip("unreadable_image", pair.rel)
                        log.debug("skipping %s: %s", pair.image, image)
                        loaded[pair.image] = None  # count an image once, not once per caption
                    if image is None or isinstance(image, Exception):
                        continue
                    key = f"{start + offset:08d}_{safe_key(pair.rel.rsplit('.', 1)[0])}"
                    meta = {"file": pair.rel, "caption_from": pair.origin}
                    yield SourceRecord(key, image, pair.caption, meta, depth)

    def _load(self, path: Path) -> Image.Image | tuple[Image.Image, np.ndarray] | Exception:
        depth = self._depths.get(path) if self.require_depth else None
        try:
            if depth is not None:
                return fit_image_and_depth(path, depth, self.image_size, self.depth_scale)
            return load_rgb(path, self.image_size)
        except Exception as exc:  # untrusted files fail in many ways; never crash mid-shard
            return exc


def build_source(data: DataConfig, source_dir: Path | None = None, require_captions: bool = True,
                 require_depth: bool = False) -> ShapesSource | FolderSource:
    """The source a recipe's ``data`` section names; ``source_dir`` forces a folder source.
    Without `require_captions` (a task that reads no text) a folder's images need no captions;
    with `require_depth` every record carries its depth map."""
    depth = {"require_depth": require_depth, "depth_scale": data.depth_scale}
    if source_dir is not None:
        return FolderSource(Path(source_dir), data.image_size, require_captions=require_captions, **depth)
    if data.source == "folder":
        if not data.path:
            raise CrossflowError("data.source=folder needs a folder: set data.path=FOLDER")
        return FolderSource(Path(data.path), data.image_size, require_captions=require_captions, **depth)
    if data.source in ("coco", "webdataset"):  # streamed sources, decoded by data.workers processes
        if require_depth:
            raise CrossflowError(
                f"data.source={data.source} has no depth maps: use a folder with depth sidecars"
            )
        from crossflow_core.data.source_coco import CocoSource
        from crossflow_core.data.source_webdataset import WebDatasetSource

        kind = CocoSource if data.source == "coco" else WebDatasetSource
        return kind.from_config(data, require_captions=require_captions)  # type: ignore[return-value]
    return ShapesSource(
        data.image_size, data.num_samples, data.seed, with_depth=require_depth, categories=data.categories
    )


def warn_skipped(skipped: dict[str, int], where: str) -> None:
    """Log one warning line for the skipped counts of a source (nothing when none)."""
    if any(skipped.values()):
        parts = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()) if v)
        log.warning("%s: skipped %s (details in manifest.json)", where, parts)
