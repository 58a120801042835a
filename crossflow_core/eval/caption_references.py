"""Reference captions for caption evaluation, from any of the layouts users have.

`read_references(path)`: a folder of images with sidecar `.txt` files (one caption per line), a
`captions.jsonl` / `metadata.jsonl` (the file, or a folder holding it), or a COCO captions JSON;
returns image stem -> list of captions.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from crossflow_core.data.sources import CAPTION_KEYS, IMAGE_EXTENSIONS, IMAGE_KEYS, clean_caption
from crossflow_core.errors import CrossflowError

log = logging.getLogger(__name__)

REFERENCE_FILES = ("captions.jsonl", "metadata.jsonl")


def read_references(path: str | Path) -> dict[str, list[str]]:
    """Reference captions by image stem, from any of these layouts:

    1. a folder of images, each with a sidecar ``IMAGE.txt`` (one or more captions, one a line);
    2. ``captions.jsonl`` (or ``metadata.jsonl``; the file itself, or a folder holding it): one
       ``{"file_name" | "image": ..., "caption" | "text": str | [str, ...]}`` per line, several
       lines per image allowed;
    3. a COCO captions JSON: ``{"images": [{"id", "file_name"}], "annotations":
       [{"image_id", "caption"}]}``.

    Captions have their whitespace collapsed; blank ones are dropped. Raises CrossflowError for a
    missing path, an image without captions, two images with the same stem, or a malformed file.
    """
    root = Path(path).expanduser()
    if root.is_dir():
        for name in REFERENCE_FILES:
            if (root / name).is_file():
                return _read_jsonl(root / name)
        return _read_sidecars(root)
    if not root.is_file():
        raise CrossflowError(
            f"reference captions {root} do not exist: give a folder of images with .txt "
            "captions, a captions.jsonl or a COCO captions .json"
        )
    if root.suffix.lower() == ".jsonl":
        return _read_jsonl(root)
    if root.suffix.lower() == ".json":
        return _read_coco(root)
    raise CrossflowError(f"reference captions {root}: expected a folder, a .jsonl or a COCO .json file")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _add(
    out: dict[str, list[str]], origin: dict[str, str], stem: str, name: str, captions: list[str]
) -> None:
    if origin.setdefault(stem, name) != name:
        raise CrossflowError(
            f"images {origin[stem]!r} and {name!r} have the same stem {stem!r}: "
            "references are keyed by stem, rename one"
        )
    out.setdefault(stem, []).extend(c for c in map(clean_caption, captions) if c)


def _require_captions(out: dict[str, list[str]], where: Path) -> dict[str, list[str]]:
    if not out:
        raise CrossflowError(f"no reference captions found in {where}")
    for stem, captions in out.items():
        if not captions:
            raise CrossflowError(f"image {stem!r} has no reference caption in {where}")
    return out


def _read_sidecars(root: Path) -> dict[str, list[str]]:
    images = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not images:
        raise CrossflowError(f"no images with .txt captions, captions.jsonl or metadata.jsonl in {root}")
    out: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for image in images:
        sidecar = image.with_suffix(".txt")
        rel = image.relative_to(root).as_posix()
        if not sidecar.is_file():
            raise CrossflowError(f"image {rel} has no caption file {sidecar.name} beside it")
        _add(out, origin, image.stem, rel, _read_text(sidecar).splitlines())
    return _require_captions(out, root)


def _read_jsonl(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CrossflowError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise CrossflowError(f"{path}:{lineno}: expected a JSON object, got {type(entry).__name__}")
        name = next((entry[k] for k in IMAGE_KEYS if k in entry), None)
        caption = next((entry[k] for k in CAPTION_KEYS if k in entry), None)
        if not isinstance(name, str) or not name:
            raise CrossflowError(f"{path}:{lineno}: no image file name (keys {', '.join(IMAGE_KEYS)})")
        captions = caption if isinstance(caption, list) else [caption]
        if caption is None or not all(isinstance(c, str) for c in captions):
            raise CrossflowError(
                f"{path}:{lineno}: no caption string (key {' or '.join(CAPTION_KEYS)}: "
                "a string or a list of strings)"
            )
        _add(out, origin, Path(name).stem, name, captions)
    return _require_captions(out, path)


def _read_coco(path: Path) -> dict[str, list[str]]:
    try:
        data: Any = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise CrossflowError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise CrossflowError(f'{path}: not a COCO captions file (expected "images" and "annotations" lists)')
    names: dict[Any, str] = {}
    out: dict[str, list[str]] = {}
    origin: dict[str, str] = {}
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            raise CrossflowError(f'{path}: images[{i}] needs an "id" and a "file_name"')
        names[image["id"]] = image["file_name"]
        _add(out, origin, Path(image["file_name"]).stem, image["file_name"], [])
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise CrossflowError(f'{path}: annotations[{i}] needs a "caption" string')
        name = names.get(ann.get("image_id"))
        if name is None:
            raise CrossflowError(
                f'{path}: annotations[{i}] names image_id {ann.get("image_id")!r}, which is not in "images"'
            )
        _add(out, origin, Path(name).stem, name, [ann["caption"]])
    return _require_captions(out, path)
