"""Image sources for the FID path: a folder, a WebDataset shard directory, or tensors.

Each source yields uint8 [3, H, W] RGB images decoded as torch-fidelity reads files (PIL,
convert("RGB")) and has an `identity()` that keys the feature cache.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from crossflow_core.atomic import file_sha256
from crossflow_core.errors import CrossflowError
from crossflow_core.image_files import to_uint8

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
SHARD_IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")


@dataclass(frozen=True)
class FolderImages:
    """Image files under `root` (png/jpg/jpeg/webp, recursive, sorted by relative path; names
    starting with "." are skipped, like half-written temporary files)."""

    root: Path
    files: tuple[Path, ...]

    @classmethod
    def scan(cls, root: str | Path) -> FolderImages:
        root = Path(root).expanduser().resolve()
        found = (p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and not _hidden(p, root))
        files = sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(root).as_posix())
        if not files:
            raise CrossflowError(f"no images ({', '.join(IMAGE_EXTS)}) under {root}; pass a folder of images")
        return cls(root, tuple(files))

    name = property(lambda self: str(self.root))

    def __len__(self) -> int:
        return len(self.files)

    def identity(self) -> dict[str, Any] | None:
        stats = ((p.relative_to(self.root).as_posix(), p.stat()) for p in self.files)
        entries = [[rel, st.st_size, st.st_mtime_ns] for rel, st in stats]
        return {"kind": "folder", "root": str(self.root), "files": entries}

    def read(self, i: int) -> torch.Tensor:
        return _decode(self.files[i], self.files[i].read_bytes)


@dataclass(frozen=True)
class ShardImages:
    """Images in WebDataset tar shards (`root/manifest.json` + `root/*.tar`), key `png`/`jpg`."""

    root: Path
    members: tuple[tuple[Path, int, int, str], ...]  # (tar, data offset, size, member name)

    @classmethod
    def scan(cls, root: str | Path) -> ShardImages:
        root = Path(root).expanduser().resolve()
        tars = sorted(root.glob("*.tar"))
        if not (root / "manifest.json").is_file() or not tars:
            raise CrossflowError(f"{root} is not a shard directory (manifest.json + *.tar)")
        members = []
        for tar_path in tars:
            with tarfile.open(tar_path, mode="r:") as tar:
                for m in tar:
                    ext = m.name.rsplit("/", 1)[-1].partition(".")[2].lower()
                    if m.isfile() and ext in SHARD_IMAGE_KEYS:
                        members.append((tar_path, m.offset_data, m.size, m.name))
        if not members:
            raise CrossflowError(f"no png/jpg samples in the shards of {root}; is it an image dataset?")
        return cls(root, tuple(members))

    name = property(lambda self: str(self.root))

    def __len__(self) -> int:
        return len(self.members)

    def identity(self) -> dict[str, Any] | None:
        manifest = file_sha256(self.root / "manifest.json")
        tars = sorted({t for t, *_ in self.members})
        entries = [[t.name, t.stat().st_size, t.stat().st_mtime_ns] for t in tars]
        return {"kind": "shards", "root": str(self.root), "manifest_sha256": manifest, "tars": entries}

    def read(self, i: int) -> torch.Tensor:
        tar_path, offset, size, name = self.members[i]

        def raw() -> bytes:
            with open(tar_path, "rb") as f:
                f.seek(offset)
                return f.read(size)

        return _decode(f"{tar_path.name}:{name}", raw)


@dataclass(frozen=True)
class TensorImages:
    """In-memory images as uint8 [N,3,H,W] (float [0,1] input is quantised like saved PNGs)."""

    images: torch.Tensor
    label: str = "tensor"

    @classmethod
    def of(cls, images: torch.Tensor | np.ndarray, label: str = "tensor") -> TensorImages:
        x = torch.as_tensor(images)
        if x.dim() != 4 or x.shape[1] != 3:
            raise CrossflowError(f"images must be [N,3,H,W], got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = torch.from_numpy(to_uint8(x.float())).permute(0, 3, 1, 2)
        return cls(x.cpu().contiguous(), label)

    name = property(lambda self: self.label)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def identity(self) -> dict[str, Any] | None:
        return None

    def read(self, i: int) -> torch.Tensor:
        return self.images[i]


ImageSource = FolderImages | ShardImages | TensorImages


def image_source(x: ImageSource | str | Path | torch.Tensor | np.ndarray) -> ImageSource:
    """A folder, a shard directory (has manifest.json and *.tar), tensors, or a source as is."""
    if isinstance(x, FolderImages | ShardImages | TensorImages):
        return x
    if isinstance(x, torch.Tensor | np.ndarray):
        return TensorImages.of(x)
    path = Path(x).expanduser()
    if not path.is_dir():
        raise CrossflowError(f"{path} is not a folder; pass a folder of images or a shard directory")
    if (path / "manifest.json").is_file() and any(path.glob("*.tar")):
        return ShardImages.scan(path)
    return FolderImages.scan(path)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _decode(label: object, raw: Callable[[], bytes]) -> torch.Tensor:
    """Image bytes -> uint8 [3,H,W] RGB (as torch-fidelity reads files: PIL, convert("RGB"))."""
    try:
        with Image.open(io.BytesIO(raw())) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise CrossflowError(f"cannot read image {label}: {exc}; replace or remove it") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)
