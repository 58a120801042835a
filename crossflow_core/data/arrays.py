"""A prepared dataset's fields loaded into memory, as tensors for training.

Only the fields a task's codecs name are read (e.g. `tokens.npy`, `mask.npy`, `latent.npy`;
never the PNG when a latent is stored). Shards are read in parallel (one thread each).

Field values: "png" -> uint8 [N, 3, H, W]; "txt" -> list[str]; "*.npy" -> the stacked arrays
as tensors [N, ...] in their stored dtype (float16 features, bool masks).
"""

from __future__ import annotations

import os
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossflow_core.data.manifest import Manifest, ShardInfo, not_prepared
from crossflow_core.data.shards import decode_png, iter_shard_files, load_npy


@dataclass(frozen=True)
class TrainingArrays:
    """The requested fields of every sample of a prepared dataset, in shard order."""

    fields: dict[str, Any]
    manifest: Manifest

    def __len__(self) -> int:
        return int(self.manifest.num_samples)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]


def load_training_arrays(
    data_dir: Path, fields: tuple[str, ...] | None = None, workers: int | None = None
) -> TrainingArrays:
    """Read `fields` (default: every field the manifest lists but json) of ``data_dir``.

    Raises `CrossflowError` when the folder is not a dataset or lacks a requested field.
    """
    data_dir = Path(data_dir)
    workers = workers or min(4, os.cpu_count() or 1)
    m = Manifest.load(data_dir)
    wanted = tuple(f for f in m.fields if f != "json") if fields is None else tuple(fields)
    missing = [f for f in wanted if f not in m.fields]
    if missing:
        raise not_prepared(data_dir, f"it has no {', '.join(missing)} (fields: {', '.join(m.fields)})")
    n = m.num_samples
    columns: dict[str, list[Any]] = {f: [None] * n for f in wanted}
    offsets = np.cumsum([0] + [sh.count for sh in m.shards]).tolist()

    def read(index: int) -> None:
        shard: ShardInfo = m.shards[index]
        i = offsets[index]
        try:
            for _key, files in iter_shard_files(data_dir / shard.name):
                if i >= offsets[index + 1]:
                    raise ValueError("more samples than the manifest lists")
                for name in wanted:
                    columns[name][i] = decode_field(name, files[name])
                i += 1
        except (KeyError, ValueError, OSError, tarfile.TarError) as exc:
            why = f"missing file {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
            raise not_prepared(data_dir, f"shard {shard.name} is unreadable: {why}") from None
        if i != offsets[index + 1]:
            raise not_prepared(
                data_dir,
                f"shard {shard.name} holds {i - offsets[index]} samples, manifest says {shard.count}",
            )

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(m.shards)))) as pool:
        list(pool.map(read, range(len(m.shards))))
    return TrainingArrays({name: stack_field(name, col) for name, col in columns.items()}, m)


def decode_field(name: str, data: bytes) -> Any:
    """One stored file of a sample: png -> uint8 [H, W, 3], txt -> str, *.npy -> array."""
    if name == "png":
        return decode_png(data)
    if name == "txt":
        return data.decode("utf-8")
    if name.endswith(".npy"):
        return load_npy(data)
    return data


def stack_field(name: str, column: list[Any]) -> Any:
    """Decoded values of one field for N samples -> png uint8 [N, 3, H, W], npy [N, ...], else a list."""
    if name == "png":
        return torch.from_numpy(np.stack(column)).permute(0, 3, 1, 2).contiguous()
    if name.endswith(".npy"):
        return torch.from_numpy(np.stack(column))
    return column
