"""`prepare`: a source of images (with captions when the task reads text) -> WebDataset shards +
`manifest.json`.

Every sample stores `png`, `txt` and `json`; the task's codecs add the features they precompute
(`data.precompute_source` / `precompute_target`: LM tokens + mask, VAE latents, SR sources ...),
in batches, so training never loads the frozen encoders. Captions that repeat (the shapes world
has few distinct ones) are encoded once per run.

The output appears atomically: everything is written into a hidden temporary folder beside
``out_dir`` (shards first, the manifest last) and renamed into place when complete, so an
interrupted prepare never leaves a complete-looking dataset.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import crossflow_core
from crossflow_core.codecs import Codec, RawSample, SourceCodec, build_codecs
from crossflow_core.data.manifest import MANIFEST_NAME, CaptionStats, Manifest
from crossflow_core.data.prepare_resume import Resume, claim_partial, fingerprint
from crossflow_core.data.shards import ShardWriter, npy_bytes, png_bytes
from crossflow_core.data.sources import SourceRecord, build_source, warn_skipped
from crossflow_core.errors import CrossflowError, OutputExistsError
from crossflow_core.recipe import DataConfig, SourceConfig, TargetConfig

FEATURE_ORDER = ("tokens.npy", "mask.npy", "ids.npy", "source.npy", "latent.npy", "moments.npy", "depth.npy")
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")

log = logging.getLogger(__name__)
Progress = Callable[[int, "int | None"], None]


class _CaptionStatsAccumulator:
    def __init__(self, max_length: int | None) -> None:
        self.max_length = max_length
        self.count = self.words = self.max_words = 0
        self.max_tokens: int | None = None if max_length is None else 0
        self.truncated: int | None = None if max_length is None else 0
        self.unique: set[str] = set()

    def add(self, caption: str, n_tokens: int | None) -> None:
        words = len(caption.split())
        self.count += 1
        self.words += words
        self.max_words = max(self.max_words, words)
        self.unique.add(caption)
        if n_tokens is not None and self.max_length is not None:
            self.max_tokens = max(self.max_tokens or 0, n_tokens)
            self.truncated = (self.truncated or 0) + int(n_tokens > self.max_length)

    def result(self) -> CaptionStats:
        mean = round(self.words / self.count, 3) if self.count else 0.0
        return CaptionStats(
            self.count,
            len(self.unique),
            mean,
            self.max_words,
            self.max_tokens,
            self.max_length,
            self.truncated,
        )


def _check_out_dir(out_dir: Path, overwrite: bool, source_dir: Path | None) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CrossflowError(f"the output {out_dir} is a file: pass a folder path")
    if source_dir is not None:
        src, out = Path(os.path.abspath(source_dir)), Path(os.path.abspath(out_dir))
        if src == out or out in src.parents or src in out.parents:
            raise CrossflowError(
                f"the output folder {out_dir} overlaps the source folder {source_dir}: "
                "write the dataset somewhere else"
            )
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise OutputExistsError(
                f"the output folder {out_dir} is not empty: replace the dataset there "
                "(overwrite) or choose another folder"
            )
        if not (out_dir / MANIFEST_NAME).is_file():
            raise CrossflowError(
                f"the output folder {out_dir} is not empty and holds no prepared dataset "
                f"(no {MANIFEST_NAME}): refusing to delete it; choose another folder"
            )


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out_dir``, replacing what was there."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out_dir)


def _batches(
    records: Iterator[SourceRecord], size: int, shard_size: int, done: int
) -> Iterator[list[SourceRecord]]:
    """Windows of up to `size` records that never cross a shard boundary (so a resumed run, which
    starts at one, sees the same encoder batches as an uninterrupted one)."""
    while batch := list(islice(records, min(size, shard_size - done % shard_size))):
        done += len(batch)
        yield batch


def _as_array(image: np.ndarray | Image.Image, size: int, key: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise CrossflowError(
            f"sample {key} has image shape {arr.shape}, expected ({size}, {size}, 3): "
            "fix the source or data.image_size"
        )
    return arr


def _as_depth(record: SourceRecord, size: int) -> np.ndarray | None:
    depth = getattr(record, "depth", None)
    if depth is not None and np.shape(depth) != (size, size):
        raise CrossflowError(
            f"sample {record.key} has a depth map of shape {np.shape(depth)}, expected ({size}, {size}): "
            "fix the source or data.image_size"
        )
    return None if depth is None else np.asarray(depth, np.float32)


def prepare_dataset(
    data: DataConfig,
    source_cfg: SourceConfig,
    target_cfg: TargetConfig,
    out_dir: Path,
    *,
    source_dir: Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    device: str = "cpu",
) -> Manifest:
    """Write ``out_dir`` (shards + manifest) from the images ``data`` names; returns the manifest.

    Records are processed in windows of up to 4096 (at most ~64 MB of pixels); the codecs
    precompute their features per window. ``progress(done, total)`` is called after every window
    (total None when unknown).
    """
    out_dir = Path(out_dir).expanduser()
    if data.shard_size < 1:
        raise CrossflowError(f"data.shard_size must be >= 1, got {data.shard_size}")
    if data.workers < 1:
        raise CrossflowError(f"data.workers must be >= 1, got {data.workers}")
    _check_out_dir(out_dir, overwrite, source_dir)
    source_codec, target_codec = build_codecs(source_cfg, target_cfg, device=device)
    images = build_source(
        data,
        source_dir,
        require_captions=source_codec.needs_captions or target_codec.needs_captions,
        require_depth=target_codec.needs_depth,
    )
    total = images.total if hasattr(images, "total") else len(images)  # None: unknown
    codecs = [  # depth is the ground truth, not a cache of an encoder: stored whatever precompute_target says
        c
        for c, on in ((source_codec, data.precompute_source), (target_codec, data.precompute_target))
        if (on or c.needs_depth) and c.precomputed_fields()
    ]
    latent_shape = target_codec.latent_shape(data.image_size)
    notes = [f"{c.kind} features stored: {', '.join(c.precomputed_fields())}" for c in codecs]
    if target_codec.kind == "pixels":
        notes.append("target latents are the pixels (to_model_range of png): no latent.npy stored")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    identities = {"source": source_codec.identity(), "target": target_codec.identity()}
    resume = claim_partial(out_dir, fingerprint(data, source_cfg, target_cfg, images, identities, device))
    tmp = resume.folder  # a dead run's partial folder with the same fingerprint, its shards kept
    try:
        shards, stats, shapes = _write_shards(images, resume, data, source_codec, codecs, progress, total)
        skipped = {k: int(v) for k, v in sorted(images.skipped.items()) if v}
        warn_skipped(skipped, str(images.describe().get("path", "source")))
        if not shards:
            raise CrossflowError(
                f"no sample could be read from the source ({images.describe()['kind']}): "
                "every image was skipped; see the warning above"
            )
        stored = [f for c in codecs for f in c.precomputed_fields()]
        fields = ["png", "txt", "json"] + [f for f in FEATURE_ORDER if f in stored]
        text = "tokens.npy" in stored
        manifest = Manifest(
            num_samples=sum(s.count for s in shards),
            shards=shards,
            image_size=data.image_size,
            fields=tuple(fields),
            captions=stats.result(),
            text_encoder=next(c for c in codecs if "tokens.npy" in c.precomputed_fields()).identity()
            if text
            else None,  # the codec that stored the LM tokens (the text source, or a text target)
            text_embedding_shape=shapes["tokens.npy"] if text else None,  # type: ignore[arg-type]
            latent=target_codec.identity(),
            latent_shape=tuple(latent_shape),  # type: ignore[arg-type]
            latent_scale=float(getattr(getattr(target_codec, "space", None), "scale", 1.0)),
            latent_shift=float(getattr(getattr(target_codec, "space", None), "shift", 0.0)),
            has_latents="moments.npy" in stored or "latent.npy" in stored,
            source=images.describe(),
            skipped=skipped,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            crossflow_version=crossflow_core.__version__,
            notes=tuple(notes),
            extra={
                "source": source_codec.identity(),
                "target": target_codec.identity(),
                "feature_shapes": {k: list(v) for k, v in shapes.items()},
            },
        )
        resume.finish()
        manifest.save(tmp)  # last: a folder without it is not a dataset
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _encode_many(
    items: list[tuple[SourceRecord, np.ndarray, dict[str, np.ndarray]]],
) -> list[tuple[str, dict]]:
    out = []
    for record, image, features in items:
        if not _KEY_RE.fullmatch(record.key):
            raise ValueError(f"shard key {record.key!r} must be 1-80 characters of [A-Za-z0-9_-]")
        files = {
            "png": png_bytes(image),
            "txt": record.caption.encode("utf-8"),
            "json": json.dumps(record.meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
        }
        files.update({name: npy_bytes(value) for name, value in features.items()})
        out.append((record.key, files))
    return out


def _write_shards(
    records: Any,
    resume: Resume,
    data: DataConfig,
    source: SourceCodec,
    codecs: list[Codec],
    progress: Progress | None,
    total: int | None,
) -> tuple[tuple, _CaptionStatsAccumulator, dict]:
    counting = source.needs_captions and source in codecs  # token counts only where the LM runs anyway
    stats = _CaptionStatsAccumulator(
        getattr(getattr(source, "cfg", None), "max_length", None) if counting else None
    )
    resume.restore(stats, codecs)  # a resumed run: the kept shards' statistics and caption caches
    shapes: dict[str, tuple[int, ...]] = {k: tuple(v) for k, v in resume.shapes.items()}
    done = resume.done
    # Large windows keep the LM's batches large (few forward passes); at most ~64 MB of pixels.
    window = int(np.clip((64 << 20) // (3 * data.image_size**2), 32, 4096))
    with ShardWriter(resume.folder, data.shard_size) as writer, ThreadPoolExecutor(max_workers=2) as pool, \
            contextlib.closing(resume.stream(records)) as stream:
        writer.shards = resume.infos  # continue after the kept shards
        for batch in _batches(stream, window, data.shard_size, done):
            images = [_as_array(r.image, data.image_size, r.key) for r in batch]
            raw = [
                RawSample(image, r.caption, _as_depth(r, data.image_size)) for image, r in zip(images, batch)
            ]
            features: dict[str, np.ndarray] = {}
            for codec in codecs:
                features.update(codec.precompute(raw))
            for name, value in features.items():
                shapes.setdefault(name, tuple(int(v) for v in value.shape[1:]))
            counts = source.caption_tokens([r.caption for r in batch]) if counting else None
            for i, r in enumerate(batch):
                stats.add(r.caption, counts[i] if counts else None)
            items = [(r, images[i], {k: v[i] for k, v in features.items()}) for i, r in enumerate(batch)]
            half = (len(items) + 1) // 2  # PNG/npy encoding in two threads (zlib releases the GIL)
            for part in pool.map(_encode_many, [items[:half], items[half:]]):
                for key, files in part:
                    writer.write_files(key, files)
            done += len(batch)
            resume.shard_done(writer.shards, records, stats, shapes)
            if progress is not None:
                progress(done, total)
        shards = writer.close()
        resume.shard_done(shards, records, stats, shapes)
    return shards, stats, shapes
