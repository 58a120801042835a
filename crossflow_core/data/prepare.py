"""`prepare`: a source of (image, caption) pairs -> WebDataset shards + `manifest.json`.

Text embeddings (float16 [L, D] + mask) and VAE latents (float16 [C, h, w]) are computed once
here, in batches, so training never loads the frozen encoders. Captions that repeat (the shapes
world has few distinct ones) are encoded once per run.

The output appears atomically: everything is written into a hidden temporary folder beside
``out_dir`` (shards first, the manifest last) and renamed into place when complete, so an
interrupted prepare never leaves a complete-looking dataset.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import crossflow_core
from crossflow_core.data.manifest import MANIFEST_NAME, CaptionStats, Manifest
from crossflow_core.data.shards import FIELD_ORDER, ShardSample, ShardWriter, encode_sample
from crossflow_core.data.sources import SourceRecord, build_source, warn_skipped
from crossflow_core.encoders.latents import LatentSpace, build_latent_space, to_model_range
from crossflow_core.encoders.text import TextEncoder
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig, LatentConfig, TextEncoderConfig

log = logging.getLogger(__name__)
Progress = Callable[[int, "int | None"], None]


class _EmbeddingCache:
    """caption -> (tokens float16 [L, D], mask bool [L], untruncated token count), bounded in bytes."""

    def __init__(self, encoder: TextEncoder, max_bytes: int = 512 << 20) -> None:
        self.encoder, self.max_bytes, self.bytes = encoder, max_bytes, 0
        self.table: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}

    def lookup(self, captions: list[str]) -> list[tuple[np.ndarray, np.ndarray, int]]:
        missing = list(dict.fromkeys(c for c in captions if c not in self.table))
        fresh: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
        if missing:
            emb = self.encoder.encode(missing)
            tokens = emb.tokens.cpu().numpy().astype(np.float16)
            if not np.isfinite(tokens).all():
                raise CrossflowError(
                    f"text embeddings overflow float16 (max |x| = {emb.tokens.abs().max().item():.3g}): "
                    "lower text_encoder.embedding_scale"
                )
            masks = emb.mask.cpu().numpy()
            counts = self.encoder.count_tokens(missing)
            for caption, tok, mask, n in zip(missing, tokens, masks, counts, strict=True):
                fresh[caption] = (tok, mask, n)
                if self.bytes + tok.nbytes <= self.max_bytes:
                    self.table[caption] = fresh[caption]
                    self.bytes += tok.nbytes + mask.nbytes
        return [self.table.get(c) or fresh[c] for c in captions]


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
        return CaptionStats(self.count, len(self.unique), mean, self.max_words, self.max_tokens,
                            self.max_length, self.truncated)


def _check_out_dir(out_dir: Path, overwrite: bool, source_dir: Path | None) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise CrossflowError(f"--out {out_dir} is a file: pass a folder path")
    if source_dir is not None:
        src, out = Path(os.path.abspath(source_dir)), Path(os.path.abspath(out_dir))
        if src == out or out in src.parents or src in out.parents:
            raise CrossflowError(f"--out {out_dir} overlaps the source folder {source_dir}: "
                                 "write the dataset somewhere else")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise CrossflowError(f"--out {out_dir} is not empty: pass --overwrite to replace the dataset "
                                 "there, or choose another folder")
        if not (out_dir / MANIFEST_NAME).is_file():
            raise CrossflowError(f"--out {out_dir} is not empty and holds no prepared dataset "
                                 f"(no {MANIFEST_NAME}): refusing to delete it; choose another folder")


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete ``.OUT.partial-PID`` / ``.OUT.old-PID`` folders left by killed runs (PID not alive)."""
    prefix = f".{out_dir.name}."
    for path in out_dir.parent.iterdir():
        if not path.name.startswith(prefix):
            continue
        kind, _, pid = path.name[len(prefix):].rpartition("-")
        if kind not in {"partial", "old"} or not pid.isdigit() or not path.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (PermissionError, OverflowError):
            pass


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


def _batches(records: Iterator[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    while batch := list(islice(records, size)):
        yield batch


def _as_array(image: np.ndarray | Image.Image, size: int, key: str) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if arr.shape != (size, size, 3):
        raise CrossflowError(f"sample {key} has image shape {arr.shape}, expected ({size}, {size}, 3): "
                             "fix the source or data.image_size")
    return arr


def prepare_dataset(
    data: DataConfig,
    text: TextEncoderConfig,
    latents: LatentConfig,
    out_dir: Path,
    *,
    source_dir: Path | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    device: str = "cpu",
    latent_batch_size: int = 32,
) -> Manifest:
    """Write ``out_dir`` (shards + manifest) from the source ``data`` names; returns the manifest.

    Records are processed in windows of up to 4096 (at most ~64 MB of pixels): the window's new
    captions are encoded together (grouped by token count), latents in ``latent_batch_size``
    chunks. ``progress(done, total)`` is called after every window (total None when unknown).
    """
    out_dir = Path(out_dir).expanduser()
    if data.shard_size < 1:
        raise CrossflowError(f"data.shard_size must be >= 1, got {data.shard_size}")
    _check_out_dir(out_dir, overwrite, source_dir)
    source = build_source(data, source_dir)
    total = len(source)
    encoder = TextEncoder.from_config(text, device=device) if data.precompute_text else None
    space = build_latent_space(latents, device=device)
    latent_shape = space.latent_shape(data.image_size)
    store_latents = data.precompute_latents and latents.kind != "pixels"
    notes = []
    if latents.kind == "pixels":
        notes.append("latents are the pixels (to_model_range of png): no latent.npy stored")
    elif not store_latents:
        notes.append("latents not precomputed (data.precompute_latents=false): encode the png at train time")
    if encoder is None:
        notes.append("text embeddings not precomputed (data.precompute_text=false)")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shards, stats = _write_shards(source, tmp, data, encoder, space if store_latents else None,
                                      latent_batch_size, progress, total)
        skipped = {k: int(v) for k, v in sorted(source.skipped.items()) if v}
        warn_skipped(skipped, str(source.describe().get("path", "source")))
        if not shards:
            raise CrossflowError(f"no sample could be read from the source ({source.describe()['kind']}): "
                                 "every image was skipped; see the warning above")
        fields = ["png", "txt", "json"] + (["tokens.npy", "mask.npy"] if encoder else [])
        fields += ["latent.npy"] if store_latents else []
        manifest = Manifest(
            num_samples=sum(s.count for s in shards),
            shards=shards,
            image_size=data.image_size,
            fields=tuple(f for f in FIELD_ORDER if f in fields),
            captions=stats.result(),
            text_encoder=encoder.identity() if encoder else None,
            text_embedding_shape=(encoder.max_length, encoder.dim) if encoder else None,
            latent=space.identity(),
            latent_shape=tuple(latent_shape),  # type: ignore[arg-type]
            latent_scale=float(space.scale),
            latent_shift=float(space.shift),
            has_latents=store_latents,
            source=source.describe(),
            skipped=skipped,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            crossflow_version=crossflow_core.__version__,
            notes=tuple(notes),
        )
        manifest.save(tmp)  # last: a folder without it is not a dataset
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _encode_many(samples: list[ShardSample]) -> list[tuple[str, dict[str, bytes]]]:
    return [(s.key, encode_sample(s)) for s in samples]


def _write_shards(source: Any, tmp: Path, data: DataConfig, encoder: TextEncoder | None,
                  space: LatentSpace | None, latent_batch_size: int, progress: Progress | None,
                  total: int | None) -> tuple[tuple, _CaptionStatsAccumulator]:
    cache = _EmbeddingCache(encoder) if encoder else None
    stats = _CaptionStatsAccumulator(encoder.max_length if encoder else None)
    done = 0
    # Large windows keep the LM's batches large (few forward passes); at most ~64 MB of pixels.
    window = int(np.clip((64 << 20) // (3 * data.image_size**2), 32, 4096))
    with ShardWriter(tmp, data.shard_size) as writer, ThreadPoolExecutor(max_workers=2) as pool:
        for batch in _batches(iter(source), window):
            images = [_as_array(r.image, data.image_size, r.key) for r in batch]
            text = cache.lookup([r.caption for r in batch]) if cache else [None] * len(batch)
            lat = _latents(space, images, latent_batch_size) if space is not None else None
            samples = []
            for i, r in enumerate(batch):
                t = text[i]
                stats.add(r.caption, t[2] if t else None)
                samples.append(ShardSample(r.key, images[i], r.caption, r.meta,
                                           tokens=t[0] if t else None, mask=t[1] if t else None,
                                           latent=lat[i] if lat is not None else None))
            half = (len(samples) + 1) // 2  # PNG/npy encoding in two threads (zlib releases the GIL)
            for part in pool.map(_encode_many, [samples[:half], samples[half:]]):
                for key, files in part:
                    writer.write_files(key, files)
            done += len(batch)
            if progress is not None:
                progress(done, total)
        shards = writer.close()
    return shards, stats


def _latents(space: LatentSpace, images: list[np.ndarray], batch_size: int) -> np.ndarray:
    """uint8 [H, W, 3] images -> float16 latents [N, C, h, w], encoded batch_size at a time."""
    z = np.concatenate([
        space.encode(to_model_range(np.stack(images[i:i + batch_size]))).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]).astype(np.float16)
    if not np.isfinite(z).all():
        raise CrossflowError("image latents overflow float16: check latents.scale_factor")
    return z
