"""Which kind of `prepare` input a path names: a folder of images, a COCO captions JSON file, or
WebDataset tar shards (a folder of ``*.tar``, one ``.tar``, or a glob / brace pattern).

A folder counts as shards when it holds ``.tar`` files at its top level and no image anywhere
(an img2dataset output folder also holds ``.parquet`` and ``_stats.json`` files); a folder with
images is a folder source whatever else it holds.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crossflow_core.data.source_webdataset import TAR_SUFFIXES, expand_shards
from crossflow_core.data.sources import IMAGE_EXTENSIONS, FolderSource
from crossflow_core.errors import CrossflowError

InputKind = Literal["folder", "coco", "webdataset"]
KINDS_HELP = "a folder of captioned images, a COCO captions JSON file or WebDataset .tar shards"


@dataclass(frozen=True)
class InputSpec:
    """What `detect_input` found: the source kind (`data.source`) and its path (`data.path`)."""

    kind: InputKind
    path: str


def detect_input(path: str | Path) -> InputSpec:
    """The kind of input at `path`; a one-line `CrossflowError` when it names nothing usable."""
    text = os.path.expanduser(str(path))
    here = Path(text)
    if not here.exists():
        if glob.has_magic(text) or "{" in text:
            expand_shards(text)  # raises when nothing matches
            return InputSpec("webdataset", text)
        raise CrossflowError(f"input {here} does not exist: pass {KINDS_HELP}")
    if here.is_file():
        name = here.name.lower()
        if name.endswith(".json"):
            return InputSpec("coco", str(here))
        if name.endswith(TAR_SUFFIXES):
            return InputSpec("webdataset", str(here))
        raise CrossflowError(f"input {here} is a file but neither a COCO captions .json nor a .tar shard: "
                             f"pass {KINDS_HELP}")
    has_tars = any(p.is_file() and p.name.endswith(TAR_SUFFIXES) for p in here.iterdir())
    has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in FolderSource._walk(here))
    if has_images:
        return InputSpec("folder", str(here))
    if has_tars:
        return InputSpec("webdataset", str(here))
    raise CrossflowError(f"input folder {here} holds neither images ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                         f"nor .tar shards: pass {KINDS_HELP}")
