"""`manifest.json`: what a prepared dataset holds, written last (atomically) by `prepare`.

A directory is a prepared dataset iff it has a readable manifest of a known format version and
every shard it lists exists with the recorded size. `Manifest.load` checks exactly that and
raises `CrossflowError` with one line otherwise.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossflow_core.atomic import write_text
from crossflow_core.errors import CrossflowError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def not_prepared(data_dir: Path, why: str) -> CrossflowError:
    """The one-line error for a directory that is not (or no longer) a prepared dataset."""
    return CrossflowError(f"{data_dir} is not a prepared dataset ({why}): "
                          "prepare it again, replacing it")


@dataclass(frozen=True)
class ShardInfo:
    """One tar shard: file name (relative to the dataset dir), samples, bytes, sha256 hex."""

    name: str
    count: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class CaptionStats:
    """Caption statistics; token counts include special tokens and are untruncated.

    max_tokens / truncated are None when no tokenizer was used (text not precomputed).
    """

    count: int
    unique: int
    mean_words: float
    max_words: int
    max_tokens: int | None
    max_length: int | None
    truncated: int | None  # captions longer than max_length tokens


@dataclass(frozen=True)
class Manifest:
    """Everything a consumer of a prepared dataset needs to know without opening a shard.

    fields: per-sample files in every shard, e.g. ("png", "txt", "json", "tokens.npy", "mask.npy").
    text_embedding_shape: [L, D] of ``tokens.npy`` (float16) when precomputed, else None.
    latent_shape: (C, h, w) of the latent space; ``latent.npy`` (float16) holds it when has_latents.
    """

    num_samples: int
    shards: tuple[ShardInfo, ...]
    image_size: int
    fields: tuple[str, ...]
    captions: CaptionStats
    text_encoder: dict[str, Any] | None
    text_embedding_shape: tuple[int, int] | None
    latent: dict[str, Any]
    latent_shape: tuple[int, int, int]
    latent_scale: float
    latent_shift: float
    has_latents: bool
    source: dict[str, Any]
    skipped: dict[str, int]
    created: str
    crossflow_version: str
    notes: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_text_tokens(self) -> bool:
        return "tokens.npy" in self.fields

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; `from_dict` reads it back to an equal manifest."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        data = dict(data)
        data["shards"] = tuple(ShardInfo(**s) for s in data["shards"])
        data["captions"] = CaptionStats(**data["captions"])
        data["fields"] = tuple(data["fields"])
        data["notes"] = tuple(data.get("notes", ()))
        for key in ("text_embedding_shape", "latent_shape"):
            if data.get(key) is not None:
                data[key] = tuple(int(v) for v in data[key])
        return cls(**data)

    def save(self, data_dir: Path) -> Path:
        """Write ``DIR/manifest.json`` atomically (temp file, fsync, rename); returns its path."""
        path = Path(data_dir) / MANIFEST_NAME
        return write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n", fsync=True)

    @classmethod
    def load(cls, data_dir: Path, check_shards: bool = True) -> Manifest:
        """Read and validate ``DIR/manifest.json``; with check_shards, every shard must exist
        with its recorded size."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise CrossflowError(f"dataset folder {data_dir} does not exist: "
                                 "prepare a dataset there first")
        path = data_dir / MANIFEST_NAME
        if not path.is_file():
            raise not_prepared(data_dir, f"no {MANIFEST_NAME}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise not_prepared(data_dir, f"{MANIFEST_NAME} is not valid JSON") from None
        if not isinstance(data, dict):
            raise not_prepared(data_dir, f"{MANIFEST_NAME} is not a JSON object")
        version = data.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise CrossflowError(f"{data_dir} was prepared by a newer crossflow (format {version} > "
                                 f"{FORMAT_VERSION}): upgrade crossflow or re-run crossflow prepare")
        if version != FORMAT_VERSION:
            raise not_prepared(data_dir, f"unknown format_version {version!r}")
        try:
            manifest = cls.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise not_prepared(data_dir, f"{MANIFEST_NAME} is malformed: {exc}") from None
        if check_shards:
            for shard in manifest.shards:
                shard_path = data_dir / shard.name
                if not shard_path.is_file():
                    raise not_prepared(data_dir, f"shard {shard.name} is missing")
                size = shard_path.stat().st_size
                if size != shard.bytes:
                    raise not_prepared(data_dir, f"shard {shard.name} has {size} bytes, "
                                                 f"manifest says {shard.bytes}")
        return manifest
