"""Image files on disk: the one home of PNG writing, image reading and image-folder listing.

Images cross this module as float tensors in [0, 1] (model side: one [3, H, W] or a batch
[N, 3, H, W]) or uint8 arrays (disk side: one [H, W, 3] or a batch [N, H, W, 3]); `to_uint8`
is the single conversion between them. Every write is atomic (`crossflow_core.atomic`): a file
appears whole under its final name or not at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crossflow_core.atomic import atomic_file
from crossflow_core.errors import CrossflowError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
"""Suffixes (lower case) that `list_images` treats as images."""


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Float [N, 3, H, W] in [0, 1] (clamped; or uint8 [N, H, W, 3] already) -> uint8 [N, H, W, 3]."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
        return images
    if images.dtype == torch.uint8:
        return images.permute(0, 2, 3, 1).cpu().numpy() if images.shape[1] == 3 else images.cpu().numpy()
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_png(image: np.ndarray | torch.Tensor, path: str | Path) -> Path:
    """Write one image as PNG atomically: uint8 [H, W, 3], or a float tensor [3, H, W] in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a tensor [3, H, W], got {tuple(image.shape)}")
        image = to_uint8(image.unsqueeze(0))[0]
    elif image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    path = Path(path)
    with atomic_file(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write float images [N, 3, H, W] in [0, 1] as one grid PNG (`nrow` per row, 2-pixel white
    padding; torchvision's `save_image`) atomically."""
    from torchvision.utils import save_image

    path = Path(path)
    with atomic_file(path) as tmp:
        save_image(images.detach().float().cpu(), tmp, nrow=nrow, padding=2, pad_value=1.0, format="PNG")
    return path


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 [H, W, 3] (RGB)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as exc:
        raise CrossflowError(f"cannot read image {path}: {exc}; replace or remove the file") from None


def _natural_key(path: Path) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in `folder`, in natural order (`2.png` before `10.png`); hidden skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CrossflowError(f"image folder {folder} does not exist; give a folder of PNG/JPEG images")
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(files, key=_natural_key)


def save_images(
    images: torch.Tensor | np.ndarray, folder: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Save images (float [N, 3, H, W] in [0, 1] or uint8 [N, H, W, 3]) as PNGs, atomically.

    Default names are `00000.png`, `00001.png`, ... in order; returns the written paths.
    """
    arr = to_uint8(images)
    names = list(names) if names is not None else [f"{i:05d}.png" for i in range(len(arr))]
    if len(names) != len(arr):
        raise ValueError(f"{len(names)} names for {len(arr)} images")
    folder = Path(folder)
    return [save_png(img, folder / name) for img, name in zip(arr, names, strict=True)]
