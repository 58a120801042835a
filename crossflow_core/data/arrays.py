"""A prepared dataset loaded whole into memory, as tensors for training.

Fine for the datasets this project trains on CPU (tens of thousands of small images); streaming
the shards for larger datasets is future work. Shards are read in parallel (one thread each).
"""

from __future__ import annotations

import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crossflow_core.data.manifest import Manifest, ShardInfo, not_prepared
from crossflow_core.data.shards import decode_png, iter_shard_files, load_npy


@dataclass(frozen=True)
class TrainingArrays:
    """All samples of a prepared dataset, in shard order.

    images:      uint8 [N, 3, H, W]
    latents:     float32 [N, C, h, w], or None when not precomputed (pixel space: use images)
    text_tokens: float16 [N, L, D], or None when not precomputed
    text_mask:   bool [N, L], or None
    """

    images: torch.Tensor
    latents: torch.Tensor | None
    text_tokens: torch.Tensor | None
    text_mask: torch.Tensor | None
    captions: list[str]
    manifest: Manifest

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_training_arrays(data_dir: Path, workers: int | None = None) -> TrainingArrays:
    """Read every shard of ``data_dir`` into memory (`CrossflowError` if it is not a dataset)."""
    data_dir = Path(data_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    m = Manifest.load(data_dir)
    n, s = m.num_samples, m.image_size
    images = np.empty((n, s, s, 3), np.uint8)
    tokens = np.empty((n, *m.text_embedding_shape), np.float16) if m.has_text_tokens else None
    masks = np.empty((n, m.text_embedding_shape[0]), bool) if m.has_text_tokens else None
    latents = np.empty((n, *m.latent_shape), np.float16) if m.has_latents else None
    captions: list[str] = [""] * n
    offsets = np.cumsum([0] + [sh.count for sh in m.shards]).tolist()

    def read(index: int) -> None:
        shard: ShardInfo = m.shards[index]
        i = offsets[index]
        try:
            for _key, files in iter_shard_files(data_dir / shard.name):
                if i >= offsets[index + 1]:
                    raise ValueError("more samples than the manifest lists")
                images[i] = decode_png(files["png"])
                captions[i] = files["txt"].decode("utf-8")
                if tokens is not None:
                    tokens[i] = load_npy(files["tokens.npy"])
                    masks[i] = load_npy(files["mask.npy"])  # type: ignore[index]
                if latents is not None:
                    latents[i] = load_npy(files["latent.npy"])
                i += 1
        except (KeyError, ValueError, OSError, tarfile.TarError) as exc:
            why = f"missing file {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise not_prepared(data_dir, f"shard {shard.name} is unreadable: {why}") from None
        if i != offsets[index + 1]:
            raise not_prepared(data_dir, f"shard {shard.name} holds {i - offsets[index]} samples, "
                                         f"manifest says {shard.count}")

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(m.shards)))) as pool:
        list(pool.map(read, range(len(m.shards))))
    return TrainingArrays(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        latents=torch.from_numpy(latents).float() if latents is not None else None,
        text_tokens=torch.from_numpy(tokens) if tokens is not None else None,
        text_mask=torch.from_numpy(masks) if masks is not None else None,
        captions=captions,
        manifest=m,
    )
