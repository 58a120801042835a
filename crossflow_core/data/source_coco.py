"""COCO captions as a `prepare` source: ``captions_*.json`` + the folder of its images.

The annotations file is a JSON object with ``images`` (``{"id", "file_name", ...}``) and
``annotations`` (``{"id", "image_id", "caption"}``) lists, as in COCO 2014/2017 captions. Images
keep the file's order; each image's captions keep theirs. ``captions="all"`` makes every caption
its own sample (COCO has about 5 per image; the image is decoded once for all of them);
``"first"`` keeps one per image, the first non-empty one.

Skipped and counted (`skipped`, the manifest): ``empty_caption`` (captions, with "first" images
whose captions are all empty), ``image_without_caption`` (images no caption names),
``caption_without_image`` (captions of an image id not listed), ``missing_image`` (listed files
not on disk) and ``unreadable_image`` (files that do not decode); image reasons count images.
A file that is not COCO captions JSON is a `CrossflowError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossflow_core.data.source_decode import DecodePool, SkipLog
from crossflow_core.data.sources import SourceRecord, clean_caption, safe_key
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig

log = logging.getLogger(__name__)
CAPTION_MODES = ("all", "first")
COCO_HELP = 'a COCO captions file is a JSON object with "images" and "annotations" lists (captions_*.json)'


@dataclass(frozen=True)
class _Candidate:
    """One sample to be: its image (index into `CocoSource.files`), key, caption and meta."""

    image: int
    key: str
    caption: str
    meta: dict[str, Any]


def read_coco(path: Path) -> dict[str, Any]:
    """Load and check a COCO captions JSON file; one-line `CrossflowError` when it is not one."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CrossflowError(f"{path} is not valid JSON ({exc}): {COCO_HELP}") from None
    except OSError as exc:
        why = exc.strerror or exc
        raise CrossflowError(f"cannot read {path} ({why}): pass a readable captions file") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise CrossflowError(f"{path} is not COCO captions JSON: {COCO_HELP}")
    anns = data["annotations"]
    if anns and isinstance(anns[0], dict) and "caption" not in anns[0]:
        raise CrossflowError(f"{path} holds COCO annotations without captions (an instances or keypoints "
                             "file?): pass the captions_*.json of the same split")
    return data


class CocoSource:
    """COCO captions (see the module docstring); yields records in a deterministic order."""

    def __init__(self, annotations: Path, images: Path, image_size: int, captions: str = "all",
                 workers: int = 1, require_captions: bool = True) -> None:
        self.annotations = Path(os.path.abspath(Path(annotations).expanduser()))
        self.images = Path(os.path.abspath(Path(images).expanduser()))
        if captions not in CAPTION_MODES:
            raise CrossflowError(f"data.coco_captions must be all or first, got {captions!r}")
        if not self.annotations.is_file():
            raise CrossflowError(f"COCO annotations {self.annotations} do not exist: "
                                 "pass a captions_*.json file")
        if not self.images.is_dir():
            raise CrossflowError(f"COCO image folder {self.images} does not exist: pass the folder "
                                 "holding the annotations' file_name entries (e.g. coco/train2017)")
        self.image_size, self.captions, self.workers = image_size, captions, workers
        self.require_captions = require_captions
        self.scan = SkipLog()  # skipped while reading the annotations
        self.run = SkipLog()  # skipped while decoding (restored from a cursor)
        self.files: list[Path] = []
        self._signature = hashlib.sha256()
        self.candidates = self._scan(read_coco(self.annotations))
        self._position = 0  # candidates consumed
        if not self.candidates:
            raise CrossflowError(f"no usable image + caption in {self.annotations} with images in "
                                 f"{self.images} (skipped: {self._skipped_text()}): check the image folder")

    # ------------------------------------------------------------------ reading the annotations

    def _scan(self, data: dict[str, Any]) -> list[_Candidate]:
        where = self.annotations.name
        captions: dict[Any, list[tuple[Any, str]]] = {}
        for i, ann in enumerate(data["annotations"]):
            if not (isinstance(ann, dict) and "image_id" in ann and isinstance(ann.get("caption"), str)):
                raise CrossflowError(f"{self.annotations}: annotations[{i}] needs an image_id and a caption "
                                     "string: fix or remove it")
            captions.setdefault(_hashable(ann["image_id"]), []).append((ann.get("id", i), ann["caption"]))
        listed: set[Any] = set()
        out: list[_Candidate] = []
        for i, image in enumerate(data["images"]):
            if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
                raise CrossflowError(f"{self.annotations}: images[{i}] needs an id and a file_name: "
                                     "fix or remove it")
            image_id = _hashable(image["id"])
            if image_id in listed:
                raise CrossflowError(f"{self.annotations}: image id {image['id']!r} is listed twice: "
                                     "fix the file")
            listed.add(image_id)
            out.extend(self._candidates(image, captions.get(image_id, []), len(out), where))
        for image_id in sorted(set(captions) - listed, key=str):
            n = len(captions[image_id]) if self.captions == "all" else 1
            self.scan.add("caption_without_image", f"{where}: image_id {image_id}", n)
        return out

    def _candidates(self, image: dict[str, Any], caps: list[tuple[Any, str]], start: int,
                    where: str) -> list[_Candidate]:
        name = image["file_name"]
        texts = [(ann_id, clean_caption(text)) for ann_id, text in caps]
        kept = [(a, t) for a, t in texts if t]
        if self.require_captions:
            if not caps:
                self.scan.add("image_without_caption", name)
                return []
            empty = len(texts) - len(kept) if self.captions == "all" else int(not kept)
            if empty:
                self.scan.add("empty_caption", name, empty)
        if self.captions == "first":
            kept = kept[:1]
        if not kept and not self.require_captions:  # a task that reads no text: the image alone
            kept = [(texts[0][0] if texts else None, "")]
        if not kept:
            return []
        path = self.images / name
        try:
            st = path.stat()
        except OSError:
            self.scan.add("missing_image", name)
            return []
        self._signature.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        index = len(self.files)
        self.files.append(path)
        image_key = safe_key(str(image["id"]), 30)
        return [
            _Candidate(index, f"{start + j:08d}_{image_key}_{safe_key(str(ann_id), 30)}", text,
                       {"file": name, "image_id": image["id"], "caption_id": ann_id, "caption_from": where})
            for j, (ann_id, text) in enumerate(kept)
        ]

    # ------------------------------------------------------------------ the source protocol

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.scan.counts + self.run.counts)

    def _skipped_text(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "nothing"

    def describe(self) -> dict[str, Any]:
        both = self.scan.merged(self.run)
        return {"kind": "coco", "path": str(self.annotations), "images": str(self.images),
                "captions": self.captions, "image_size": self.image_size, "candidates": len(self.candidates),
                "image_files": len(self.files),
                "skipped_examples": {k: list(v) for k, v in sorted(both.examples.items())}}

    def input_signature(self) -> str:
        """sha256 of the annotations' and every image's path, size and mtime (a resume's check)."""
        st = self.annotations.stat()
        head = f"{st.st_size}\0{st.st_mtime_ns}\0".encode()
        return hashlib.sha256(head + self._signature.digest()).hexdigest()

    def cursor(self) -> dict[str, Any]:
        """JSON state after the last record yielded; `iter_from` continues from it."""
        return {"position": self._position, **self.run.state()}

    def __iter__(self) -> Iterator[SourceRecord]:
        return self.iter_from(None)

    def iter_from(self, cursor: dict[str, Any] | None) -> Iterator[SourceRecord]:
        """Records after `cursor` (None: from the start); unreadable images are counted in order."""
        self.run = SkipLog.from_state(cursor)
        self._position = int(cursor["position"]) if cursor else 0
        return self._records(self._position)

    def _groups(self, start: int) -> Iterator[tuple[tuple[int, list[_Candidate]], str]]:
        """Consecutive candidates of one image, from candidate `start`, with the image's path."""
        group: list[_Candidate] = []
        first = start
        for i in range(start, len(self.candidates)):
            c = self.candidates[i]
            if group and c.image != group[0].image:
                yield (first, group), str(self.files[group[0].image])
                group, first = [], i
            group.append(c)
        if group:
            yield (first, group), str(self.files[group[0].image])

    def _records(self, start: int) -> Iterator[SourceRecord]:
        with DecodePool(self.workers, self.image_size) as pool:
            for (first, group), image in pool.decode(self._groups(start)):
                if isinstance(image, str):
                    self.run.add("unreadable_image", group[0].meta["file"])
                    log.debug("skipping %s: %s", group[0].meta["file"], image)
                    self._position = first + len(group)
                    continue
                for j, c in enumerate(group):
                    self._position = first + j + 1
                    yield SourceRecord(c.key, image, c.caption, dict(c.meta))

    @classmethod
    def from_config(cls, data: DataConfig, require_captions: bool = True) -> CocoSource:
        if not data.path:
            raise CrossflowError("data.source=coco needs its annotations: set data.path=captions_*.json")
        if not data.images:
            raise CrossflowError("data.source=coco needs the folder of its images: set data.images=DIR")
        return cls(Path(data.path), Path(data.images), data.image_size, data.coco_captions,
                   data.workers, require_captions)


def _hashable(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
