"""A prepared dataset read from its shards on demand, with memory flat in the dataset's size.

`train.loader: stream` trains from this instead of `TrainingArrays` (which holds every field of
every sample in memory). Opening a dataset scans each tar's headers once (no member data is
read) and keeps, per sample and requested field, the byte offset and size of its member: 16
bytes per sample and field. A sample is then one `pread` per field from the shard file (the OS
page cache does the caching). `StreamedArrays` has the interface the codecs read
(`"png" in fields`, `fields["png"][idx]` -> the stacked batch), so every codec works unchanged;
`crossflow_core/train/stream_batches.py` runs the reads in DataLoader workers, ahead of the step.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossflow_core.data.arrays import decode_field, stack_field
from crossflow_core.data.manifest import Manifest, not_prepared
from crossflow_core.data.shards import BLOCK


@dataclass(frozen=True)
class ShardIndex:
    """Where each requested field of each sample lies: shard [N] (index into `paths`), offset and
    size [N, F] in bytes, for `fields` (F names) of a dataset in shard order."""

    paths: tuple[Path, ...]
    fields: tuple[str, ...]
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray

    @classmethod
    def build(cls, data_dir: Path, manifest: Manifest, fields: tuple[str, ...]) -> ShardIndex:
        n, f = manifest.num_samples, len(fields)
        shard = np.empty(n, np.int32)
        offset, size = np.empty((n, f), np.int64), np.empty((n, f), np.int64)
        column = {name: j for j, name in enumerate(fields)}
        paths = tuple(Path(data_dir) / s.name for s in manifest.shards)
        i = 0
        for k, (path, info) in enumerate(zip(paths, manifest.shards)):
            start = i
            try:
                for key, members in _sample_members(path):
                    if i >= n or i - start >= info.count:
                        raise ValueError("more samples than the manifest lists")
                    for name, j in column.items():
                        if name not in members:
                            raise ValueError(f"sample {key} has no {name}")
                        offset[i, j], size[i, j] = members[name]
                    shard[i] = k
                    i += 1
            except (ValueError, OSError, tarfile.TarError) as exc:
                raise not_prepared(data_dir, f"shard {info.name} is unreadable: {exc}") from None
            if i - start != info.count:
                raise not_prepared(
                    data_dir, f"shard {info.name} holds {i - start} samples, manifest says {info.count}"
                )
        return cls(paths, tuple(fields), shard, offset, size)

    def __len__(self) -> int:
        return int(self.shard.shape[0])


def _sample_members(path: Path):
    """(key, {field: (data offset, size)}) per sample of a tar, reading headers only."""
    key: str | None = None
    members: dict[str, tuple[int, int]] = {}
    for full, start, size in _member_spans(path):
        base = full.rsplit("/", 1)[-1]
        stem, dot, ext = base.partition(".")
        if not dot:
            continue
        name = full[: len(full) - len(base)] + stem
        if name != key and key is not None:
            yield key, members
            members = {}
        key = name
        members[ext] = (start, size)
    if key is not None:
        yield key, members


def _member_spans(path: Path):
    """(name, data offset, size) of each regular file of a tar: plain ustar headers (what
    `prepare` writes) are walked with one 512-byte pread each; anything else goes to `tarfile`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        end, pos, spans = os.fstat(fd).st_size, 0, []
        while pos + BLOCK <= end:
            header = os.pread(fd, BLOCK, pos)
            if header == bytes(BLOCK):
                yield from spans
                return
            if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
                break  # pax / GNU / links: let tarfile read it
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            if int(header[148:156].rstrip(b"\0 "), 8) != sum(header[:148]) + 256 + sum(header[156:]):
                raise tarfile.ReadError(f"bad tar header checksum at byte {pos}")
            name, prefix = header[:100].rstrip(b"\0"), header[345:500].rstrip(b"\0")
            if pos + BLOCK + size > end:
                raise tarfile.ReadError(f"member {name.decode(errors='replace')} is truncated")
            spans.append(((prefix + b"/" + name if prefix else name).decode("utf-8"), pos + BLOCK, size))
            pos += BLOCK + size + (-size % BLOCK)
        else:
            raise tarfile.ReadError("unexpected end of archive (no end-of-archive blocks)")
    finally:
        os.close(fd)
    with tarfile.open(path, mode="r:") as tar:
        while (info := tar.next()) is not None:
            tar.members.clear()  # tarfile keeps every TarInfo it read: drop them (flat memory)
            if info.isfile():
                yield info.name, info.offset_data, info.size


@dataclass
class StreamedArrays:
    """A prepared dataset's fields, read per sample when asked (see the module docstring)."""

    index: ShardIndex
    manifest: Manifest
    _files: dict[int, int] = field(default_factory=dict, repr=False)  # shard -> fd, this process
    _pid: int = field(default=-1, repr=False)

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, name: str) -> bool:
        return name in self.index.fields

    def __getitem__(self, name: str) -> _Column:
        if name not in self.index.fields:
            raise KeyError(name)
        return _Column(self, name)

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own files
        return {"index": self.index, "manifest": self.manifest, "_files": {}, "_pid": -1}

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker must not share the parent's file offsets
            self._files, self._pid = {}, os.getpid()
        fd = self._files.get(shard)
        if fd is None:
            fd = self._files[shard] = os.open(self.index.paths[shard], os.O_RDONLY)
        return fd

    def read_sample(self, i: int) -> dict[str, Any]:
        """Every indexed field of sample `i`, decoded (png -> uint8 [H, W, 3], txt -> str, npy -> array)."""
        fd = self._fd(int(self.index.shard[i]))
        out = {}
        for j, name in enumerate(self.index.fields):
            size, offset = int(self.index.size[i, j]), int(self.index.offset[i, j])
            data = os.pread(fd, size, offset)
            if len(data) != size:
                path = self.index.paths[int(self.index.shard[i])]
                raise not_prepared(path.parent, f"shard {path.name} is truncated")
            out[name] = decode_field(name, data)
        return out

    def read(self, indices: Tensor | list[int]) -> LoadedFields:
        """The samples `indices` [B], stacked like `TrainingArrays` columns."""
        samples = [self.read_sample(int(i)) for i in indices]
        return LoadedFields(
            {name: stack_field(name, [s[name] for s in samples]) for name in self.index.fields}
        )

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files = {}


@dataclass(frozen=True)
class _Column:
    """`arrays[name][idx]`: the field `name` of samples `idx`, read on demand."""

    arrays: StreamedArrays
    name: str

    def __getitem__(self, idx: Tensor | list[int]) -> Any:
        return self.arrays.read(idx)[self.name]


@dataclass(frozen=True)
class LoadedFields:
    """The fields of one batch of B samples, indexed 0..B-1 (what a DataLoader worker returns)."""

    fields: dict[str, Any]

    def __len__(self) -> int:
        first = next(iter(self.fields.values()))
        return len(first)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def pin_memory(self) -> LoadedFields:
        return LoadedFields(
            {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in self.fields.items()}
        )


def open_streamed(data_dir: Path, fields: tuple[str, ...]) -> StreamedArrays:
    """Index `fields` of the prepared dataset `data_dir` (headers only) for on-demand reads."""
    manifest = Manifest.load(Path(data_dir))
    missing = [f for f in fields if f not in manifest.fields]
    if missing:
        raise not_prepared(data_dir, f"it has no {', '.join(missing)} (fields: {', '.join(manifest.fields)})")
    return StreamedArrays(ShardIndex.build(Path(data_dir), manifest, tuple(fields)), manifest)
