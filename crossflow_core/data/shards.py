"""WebDataset-compatible tar shards: one sample = files sharing a key (``KEY.png``, ``KEY.txt``, ...).

Per-sample files:
  png         the image, RGB uint8 [H, W, 3]
  txt         the caption (UTF-8)
  json        meta (e.g. the shapes world's category and GenEval spec)
  tokens.npy  LM token embeddings, float16 [L, D]   (optional)
  mask.npy    their padding mask, bool [L]          (optional)
  latent.npy  the image latent, float16 [C, h, w]   (optional)

Arrays are ``np.save(allow_pickle=False)`` and read with ``allow_pickle=False``; nothing is pickled.
Shards are plain POSIX ustar archives (readable by tar, `tarfile` and webdataset); members have
mode 0444, mtime 0 and no owner, so the same samples give byte-identical shards. A shard is
written under a hidden temporary name and renamed when complete (`crossflow_core.atomic`):
a final-named shard is always whole.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from crossflow_core.atomic import atomic_file
from crossflow_core.data.manifest import Manifest, ShardInfo, not_prepared

BLOCK, RECORD = 512, 10240  # tar block size and tarfile's default record size
_ZERO_BLOCK = bytes(BLOCK)
FIELD_ORDER = ("png", "txt", "json", "tokens.npy", "mask.npy", "latent.npy")
SHARD_PATTERN = "shard-{:06d}.tar"
_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,80}")


@dataclass(frozen=True)
class ShardSample:
    """One sample as written to / read from a shard (arrays as described in the module doc)."""

    key: str
    image: np.ndarray  # uint8 [H, W, 3]
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: np.ndarray | None = None  # float16 [L, D]
    mask: np.ndarray | None = None  # bool [L]
    latent: np.ndarray | None = None  # float16 [C, h, w]


def png_bytes(image: np.ndarray | Image.Image, compress_level: int = 1) -> bytes:
    """uint8 [H, W, 3] array or RGB PIL image -> PNG bytes (lossless)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """``.npy`` bytes -> array, never unpickling (object arrays are refused).

    The header is parsed once per distinct header (all samples of a field share it), which makes
    this several times faster than ``np.load`` on small arrays; the result is a fresh copy.
    """
    if data[:6] != b"\x93NUMPY" or len(data) < 10:
        raise ValueError("not a .npy file")
    if data[6] == 1:
        start = 10 + int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        start = 12 + int.from_bytes(data[8:12], "little")
    else:
        return np.load(io.BytesIO(data), allow_pickle=False)
    dtype, shape, fortran = _npy_header(bytes(data[:start]))
    count = int(np.prod(shape)) if shape else 1
    if len(data) - start < count * dtype.itemsize:
        raise ValueError("truncated .npy data")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return array.reshape(shape, order="F" if fortran else "C").copy()


@functools.lru_cache(maxsize=64)
def _npy_header(header: bytes) -> tuple[np.dtype, tuple[int, ...], bool]:
    buf = io.BytesIO(header)
    major, _ = np.lib.format.read_magic(buf)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(buf)
    if dtype.hasobject:
        raise ValueError("object arrays are not allowed in .npy files (they would need pickle)")
    return dtype, tuple(shape), bool(fortran)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 [H, W, 3]."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def encode_sample(sample: ShardSample) -> dict[str, bytes]:
    """A sample -> {extension: bytes}, in FIELD_ORDER. Key must contain no dot or slash."""
    if not _KEY_RE.fullmatch(sample.key):
        raise ValueError(f"shard key {sample.key!r} must be 1-80 characters of [A-Za-z0-9_-]")
    files = {
        "png": png_bytes(sample.image),
        "txt": sample.caption.encode("utf-8"),
        "json": json.dumps(sample.meta, sort_keys=True, separators=(",", ":")).encode("utf-8"),
    }
    if sample.tokens is not None:
        files["tokens.npy"] = npy_bytes(np.asarray(sample.tokens, np.float16))
    if sample.mask is not None:
        files["mask.npy"] = npy_bytes(np.asarray(sample.mask, bool))
    if sample.latent is not None:
        files["latent.npy"] = npy_bytes(np.asarray(sample.latent, np.float16))
    return files


class _HashingFile:
    """A write-only file wrapper that counts bytes and hashes them (sha256) on the way."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Writes samples into ``DIR/shard-000000.tar``, ... with at most ``shard_size`` samples each.

    Use as a context manager; on an exception the shard in progress is deleted (completed shards
    stay). ``close()`` returns the `ShardInfo` of every completed shard.
    """

    def __init__(self, out_dir: Path, shard_size: int, pattern: str = SHARD_PATTERN) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir, self.shard_size, self.pattern = Path(out_dir), shard_size, pattern
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[ShardInfo] = []
        self._stack: contextlib.ExitStack | None = None  # the shard in progress: temp file, then rename
        self._file: BinaryIO | None = None
        self._hash: _HashingFile | None = None
        self._count = 0

    def _final_path(self) -> Path:
        return self.out_dir / self.pattern.format(len(self.shards))

    def _open(self) -> None:
        self._stack = contextlib.ExitStack()
        tmp = self._stack.enter_context(atomic_file(self._final_path()))  # renamed on close, else removed
        self._file = self._stack.enter_context(open(tmp, "wb"))
        self._hash = _HashingFile(self._file)
        self._count = 0

    def write(self, sample: ShardSample) -> None:
        self.write_files(sample.key, encode_sample(sample))

    def write_files(self, key: str, files: dict[str, bytes]) -> None:
        """Write one sample given as {extension: bytes} (see `encode_sample`)."""
        if self._hash is None:
            self._open()
        assert self._hash is not None
        for ext, data in files.items():
            self._hash.write(_ustar_header(f"{key}.{ext}", len(data)))
            self._hash.write(data)
            if len(data) % BLOCK:
                self._hash.write(bytes(BLOCK - len(data) % BLOCK))
        self._count += 1
        if self._count >= self.shard_size:
            self._finish()

    def _finish(self) -> None:
        assert self._stack is not None and self._file is not None and self._hash is not None
        end = 2 * BLOCK  # two zero blocks end the archive; pad to whole records like tarfile
        end += -(self._hash.size + end) % RECORD
        self._hash.write(bytes(end))
        self._file.flush()
        os.fsync(self._file.fileno())
        final = self._final_path()
        self._stack.close()  # closes the file, then renames it to `final`
        self.shards.append(ShardInfo(final.name, self._count, self._hash.size, self._hash.sha.hexdigest()))
        self._stack = self._file = self._hash = None

    def close(self) -> tuple[ShardInfo, ...]:
        """Finish the shard in progress (if any) and return all shards written."""
        if self._hash is not None:
            self._finish()
        return tuple(self.shards)

    def abort(self, exc: BaseException | None = None) -> None:
        """Drop the shard in progress (its temporary file is deleted)."""
        if self._stack is not None:
            err = exc if exc is not None else RuntimeError("shard writing aborted")
            self._stack.__exit__(type(err), err, err.__traceback__)  # atomic_file removes the temp file
        self._stack = self._file = self._hash = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort(exc)


def _ustar_header(name: str, size: int) -> bytes:
    """A POSIX ustar header for a regular file (mode 0444, mtime 0, no owner)."""
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"tar member name {name!r} is longer than 100 bytes")
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = b"0000444\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[148:156] = b"        "
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _ustar_members(buf: bytes) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every member of a plain ustar archive; None when the archive
    uses anything else (pax/GNU headers, links), so the caller falls back to `tarfile`."""
    members, pos = [], 0
    while pos + BLOCK <= len(buf):
        header = buf[pos:pos + BLOCK]
        if header == _ZERO_BLOCK:
            return members
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
            return None
        try:
            size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
            checksum = int(header[148:156].rstrip(b"\0 "), 8)
        except ValueError:
            return None
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):
            raise tarfile.ReadError(f"bad tar header checksum at byte {pos}")
        name, prefix = header[:100].rstrip(b"\0"), header[345:500].rstrip(b"\0")
        full = (prefix + b"/" + name if prefix else name).decode("utf-8")
        if pos + BLOCK + size > len(buf):
            raise tarfile.ReadError(f"member {full} is truncated")
        members.append((full, pos + BLOCK, size))
        pos += BLOCK + size + (-size % BLOCK)
    raise tarfile.ReadError("unexpected end of archive (no end-of-archive blocks)")


def _tarfile_members(path: Path) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if member.isfile():
                handle = tar.extractfile(member)
                assert handle is not None
                yield member.name, handle.read()


def iter_shard_files(path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Raw samples of one tar: (key, {extension: bytes}); members of a key must be adjacent.

    Plain ustar archives (those `ShardWriter` writes) are parsed directly (fast); anything else
    is read with `tarfile`. Raises `tarfile.ReadError` for a truncated or corrupt archive.
    """
    buf = Path(path).read_bytes()
    members = _ustar_members(buf)
    if members is None:
        stream: Iterator[tuple[str, bytes]] = _tarfile_members(Path(path))
    else:
        stream = ((name, buf[start:start + size]) for name, start, size in members)
    key: str | None = None
    files: dict[str, bytes] = {}
    for member, data in stream:
        base = member.rsplit("/", 1)[-1]
        stem, dot, ext = base.partition(".")
        if not dot:
            continue
        name = member[: len(member) - len(base)] + stem
        if name != key and key is not None:
            yield key, files
            files = {}
        key = name
        files[ext] = data
    if key is not None:
        yield key, files


def decode_sample(key: str, files: dict[str, bytes], decode_image: bool = True) -> ShardSample:
    """{extension: bytes} -> `ShardSample` (image left empty when decode_image is False)."""
    if "png" not in files or "txt" not in files:
        raise ValueError(f"sample {key!r} lacks png or txt (has {sorted(files)})")
    image = decode_png(files["png"]) if decode_image else np.zeros((0, 0, 3), np.uint8)
    return ShardSample(
        key=key,
        image=image,
        caption=files["txt"].decode("utf-8"),
        meta=json.loads(files["json"]) if "json" in files else {},
        tokens=load_npy(files["tokens.npy"]) if "tokens.npy" in files else None,
        mask=load_npy(files["mask.npy"]) if "mask.npy" in files else None,
        latent=load_npy(files["latent.npy"]) if "latent.npy" in files else None,
    )


def iter_records(data_dir: Path, decode_images: bool = True) -> Iterator[ShardSample]:
    """Every sample of a prepared dataset, in shard order (the manifest is checked first)."""
    data_dir = Path(data_dir)
    manifest = Manifest.load(data_dir)
    for shard in manifest.shards:
        count = 0
        try:
            for key, files in iter_shard_files(data_dir / shard.name):
                sample = decode_sample(key, files, decode_images)
                count += 1
                yield sample
        except (ValueError, OSError, tarfile.TarError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise not_prepared(data_dir, f"shard {shard.name} is unreadable: {why}") from None
        if count != shard.count:
            raise not_prepared(data_dir, f"shard {shard.name} holds {count} samples, "
                                         f"manifest says {shard.count}")


def verify_shards(data_dir: Path) -> None:
    """Check every shard's sha256 against the manifest; raise `CrossflowError` on a mismatch."""
    data_dir = Path(data_dir)
    for shard in Manifest.load(data_dir).shards:
        sha = hashlib.sha256()
        with open(data_dir / shard.name, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                sha.update(block)
        if sha.hexdigest() != shard.sha256:
            raise not_prepared(data_dir, f"shard {shard.name} is corrupt (sha256 mismatch)")
