"""WebDataset tar shards as a `prepare` source (the layout img2dataset writes).

`path` is a folder (its ``*.tar`` files), one ``.tar`` file, or a pattern: shell globs
(``shards/*.tar``) and WebDataset braces (``shards/{00000..00099}.tar``, ``{a,b}``). Tars are read
in sorted name order with `tarfile` (nothing is unpickled). A sample is the run of adjacent members
sharing a key (the member name up to the first dot of its base name): an image ``KEY.jpg`` /
``.jpeg`` / ``.png`` / ``.webp`` and its caption, ``KEY.txt`` or else the ``"caption"`` string of
``KEY.json`` (img2dataset writes both). ``KEY.json``'s ``url`` is kept in the sample's meta.

Skipped and counted (`skipped`, the manifest): ``image_without_caption``, ``empty_caption``,
``caption_without_image``, ``unreadable_image`` (samples) and ``truncated_tar`` / ``unreadable_tar``
(tars; a truncated tar's whole samples before the cut are kept). Every tar must end with the two
zero blocks of a complete archive, so a cut at any byte is seen.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossflow_core.data.source_decode import DecodePool, SkipLog
from crossflow_core.data.sources import SourceRecord, clean_caption, safe_key
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")
TAR_SUFFIXES = (".tar",)
_BRACE = re.compile(r"\{([^{}]*)\}")
_END = bytes(1024)  # the two zero blocks that end a tar archive


def _expand_braces(pattern: str) -> list[str]:
    """WebDataset brace notation: ``{000..012}`` (zero padding kept) and ``{a,b}``."""
    match = _BRACE.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end():]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [p for option in options for p in _expand_braces(head + option + tail)]


def expand_shards(path: str) -> list[Path]:
    """The tar files `path` names (a folder, a file or a pattern), sorted; error when none."""
    here = Path(os.path.expanduser(path))
    if here.is_dir():
        tars = [p for p in here.iterdir() if p.is_file() and p.name.endswith(TAR_SUFFIXES)]
    elif here.is_file():
        tars = [here]
    else:
        tars = [Path(p) for pattern in _expand_braces(str(here)) for p in glob.glob(pattern)]
        tars = [p for p in tars if p.is_file()]
    tars = sorted({Path(os.path.abspath(p)) for p in tars})
    if not tars:
        raise CrossflowError(f"no .tar file at {path}: pass a folder of WebDataset .tar shards, a .tar "
                             "file or a pattern such as shards/{00000..00009}.tar")
    return tars


@dataclass(frozen=True)
class _Item:
    """One step of the stream: a sample to decode, or something to count as skipped."""

    position: tuple[int, int]  # (tar index, sample index in the tar) after this item
    key: str = ""
    caption: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    skip: str | None = None
    what: str = ""


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _split(name: str) -> tuple[str, str]:
    base = name.rsplit("/", 1)[-1]
    stem, _, ext = base.partition(".")
    return name[: len(name) - len(base)] + stem, ext.lower()


class WebDatasetSource:
    """WebDataset / img2dataset tar shards (see the module docstring)."""

    def __init__(self, path: str, image_size: int, workers: int = 1, require_captions: bool = True) -> None:
        self.tars = expand_shards(path)
        self.pattern = path
        self.image_size, self.workers, self.require_captions = image_size, workers, require_captions
        self.run = SkipLog()
        self._position = (0, 0)
        self.total = self._expected()

    def _expected(self) -> int | None:
        """img2dataset's ``NNNNN_stats.json`` ``successes`` summed (progress only); None without."""
        total = 0
        for tar in self.tars:
            stats = tar.with_name(tar.name[: -len(".tar")] + "_stats.json")
            try:
                total += int(json.loads(stats.read_text(encoding="utf-8"))["successes"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return total

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self.run.counts)

    def describe(self) -> dict[str, Any]:
        return {"kind": "webdataset", "path": self.pattern, "tars": len(self.tars),
                "first_tar": str(self.tars[0]), "image_size": self.image_size,
                "skipped_examples": {k: list(v) for k, v in sorted(self.run.examples.items())}}

    def input_signature(self) -> str:
        """sha256 of every tar's path, size and mtime (a resume's check)."""
        digest = hashlib.sha256()
        for tar in self.tars:
            st = tar.stat()
            digest.update(f"{tar}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    def cursor(self) -> dict[str, Any]:
        """JSON state after the last record yielded; `iter_from` continues from it."""
        return {"position": list(self._position), **self.run.state()}

    def __iter__(self) -> Iterator[SourceRecord]:
        return self.iter_from(None)

    def iter_from(self, cursor: dict[str, Any] | None) -> Iterator[SourceRecord]:
        """Records after `cursor` (None: from the start); skips are counted in stream order."""
        self.run = SkipLog.from_state(cursor)
        self._position = tuple(cursor["position"]) if cursor else (0, 0)  # type: ignore[assignment]
        return self._records(*self._position)

    def _records(self, tar_index: int, sample_index: int) -> Iterator[SourceRecord]:
        with DecodePool(self.workers, self.image_size) as pool:
            for item, image in pool.decode(self._items(tar_index, sample_index)):
                self._position = item.position
                if item.skip is None and isinstance(image, str):
                    log.debug("skipping %s: %s", item.what, image)
                    self.run.add("unreadable_image", item.what)
                elif item.skip is not None:
                    self.run.add(item.skip, item.what)
                else:
                    yield SourceRecord(item.key, image, item.caption, item.meta)

    def _items(self, tar_index: int, sample_index: int) -> Iterator[tuple[_Item, bytes | None]]:
        for ti in range(tar_index, len(self.tars)):
            skip = sample_index if ti == tar_index else 0
            yield from self._tar_items(ti, skip)

    def _tar_items(self, ti: int, skip: int) -> Iterator[tuple[_Item, bytes | None]]:
        tar_path = self.tars[ti]
        opened = False
        try:
            with tarfile.open(tar_path, mode="r:*") as tar:
                opened = True
                for si, key, files, last in _samples(tar, skip):
                    if last:  # whole only if the archive ends properly after it
                        _check_end(tar)
                    yield self._item((ti, si + 1), tar_path.name, key, files)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            reason = "truncated_tar" if opened else "unreadable_tar"
            log.debug("%s %s: %s", reason, tar_path, exc)
            yield _Item((ti + 1, 0), skip=reason, what=tar_path.name), None

    def _item(self, position: tuple[int, int], tar: str, key: str,
              files: dict[str, bytes]) -> tuple[_Item, bytes | None]:
        what = f"{tar}:{key}"
        image_ext = next((e for e in IMAGE_EXTS if e in files), None)
        info: dict[str, Any] = {}
        if "json" in files:
            try:
                info = json.loads(files["json"])
            except (json.JSONDecodeError, UnicodeDecodeError):
                info = {}
            info = info if isinstance(info, dict) else {}
        caption = _text(files["txt"]) if "txt" in files else info.get("caption")
        caption = clean_caption(caption) if isinstance(caption, str) else None
        origin = "txt" if "txt" in files else "json" if caption is not None else "none"
        if image_ext is None:
            return _Item(position, skip="caption_without_image", what=what), None
        if self.require_captions and caption is None:
            return _Item(position, skip="image_without_caption", what=what), None
        if self.require_captions and not caption:
            return _Item(position, skip="empty_caption", what=what), None
        meta: dict[str, Any] = {"tar": tar, "key": key, "caption_from": origin}
        if isinstance(info.get("url"), str):
            meta["url"] = info["url"]
        out_key = f"{position[0]:05d}_{position[1] - 1:07d}_{safe_key(key, 40)}"
        return _Item(position, out_key, caption or "", meta, what=what), files[image_ext]

    @classmethod
    def from_config(cls, data: DataConfig, require_captions: bool = True) -> WebDatasetSource:
        if not data.path:
            raise CrossflowError("data.source=webdataset needs its shards: set data.path=FOLDER_OR_PATTERN")
        return cls(data.path, data.image_size, data.workers, require_captions)


def _samples(tar: tarfile.TarFile, skip: int) -> Iterator[tuple[int, str, dict[str, bytes], bool]]:
    """(index, key, {ext: bytes}, last) of each run of adjacent members sharing a key, from index
    `skip` (members of earlier samples are passed over unread); `last` marks the final sample,
    read before the archive's end was checked. Samples with none of the image or caption
    extensions are passed over; a read error propagates and drops the sample it was reading."""
    index, key, files = -1, None, {}
    for member in tar:
        if not member.isfile():
            continue
        name, ext = _split(member.name)
        if name != key:
            if key is not None and index >= skip and files:
                yield index, key, files, False
            key, files = name, {}
            index += 1
        if index >= skip and ext in IMAGE_EXTS + TEXT_EXTS:
            handle = tar.extractfile(member)
            assert handle is not None
            files[ext] = handle.read()
    if key is not None and index >= skip and files:
        yield index, key, files, True
    else:
        _check_end(tar)


def _check_end(tar: tarfile.TarFile) -> None:
    """Raise `tarfile.ReadError` unless two zero blocks follow the last member (a whole archive)."""
    assert tar.fileobj is not None
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(len(_END)) != _END:
        raise tarfile.ReadError("no end-of-archive blocks")
