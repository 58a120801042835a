"""Atomic writes: a file or a folder appears whole under its final name, or not at all.

Everything is written under a hidden temporary name in the destination's own folder (same
filesystem, so the final `os.replace` is atomic) and renamed when complete. A crash leaves at
most a hidden `.NAME.tmp-PID` entry, never a complete-looking output.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def temp_path(path: str | Path) -> Path:
    """The hidden temporary sibling `.NAME.tmp-PID<suffix>` of `path` (the suffix kept for writers
    that pick a format from it, e.g. PIL and matplotlib)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """`with atomic_file(p) as tmp:` write to `tmp`; on success it is renamed to `p`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | Path, text: str, fsync: bool = False) -> Path:
    """Write `text` (UTF-8) to `path` atomically; `fsync` flushes it to disk before the rename."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; `fsync` flushes it to disk before the rename."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """`with atomic_dir(d) as tmp:` fill the fresh folder `tmp`; on success it replaces `d`
    (an existing `d` is moved aside first, then deleted), else `tmp` is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
