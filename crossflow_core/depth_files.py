"""Depth maps on disk: the one home of depth sidecar reading, 16-bit depth PNG writing and previews.

Depth crosses this module as float32 metres [H, W]; 0 (or NaN) marks a pixel without depth.

A depth sidecar sits beside its image with the same stem: ``NAME.png`` + ``NAME.depth.png``
(a 16-bit greyscale PNG of integer units, `depth_scale` units per metre: 1000 = millimetres, the
default, as NYUv2's toolbox writes them; KITTI's own PNGs use 256) or ``NAME.depth.npy`` (a 2-D
float array in metres). 0 is "no depth" in both. The depth map must have its image's size as
displayed (after its EXIF orientation). `fit_image_and_depth` resizes (shorter side) and
centre-crops both exactly as `prepare` does images (`ImageOps.fit`, the same crop box), the image
with Lanczos and the depth with nearest-neighbour sampling, so no depth is invented between an
object and what lies behind it and "no depth" pixels stay exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from crossflow_core.atomic import atomic_file
from crossflow_core.errors import CrossflowError

DEPTH_SUFFIXES = (".depth.png", ".depth.npy")
MILLIMETRES = 1000.0  # depth PNG units per metre by default
UINT16_MAX = 65535
SIDECAR_HELP = (
    "put NAME.depth.png (16-bit PNG, millimetres by default) or NAME.depth.npy (float metres) "
    "beside each NAME image"
)


def is_depth_file(path: Path) -> bool:
    """Whether `path` is a depth sidecar (``*.depth.png`` / ``*.depth.npy``), not an image."""
    return path.name.lower().endswith(DEPTH_SUFFIXES)


def sidecar_of(image: Path) -> Path | None:
    """The depth sidecar of `image` (None when there is none); two of them is an error."""
    stem = image.with_suffix("")
    found = [p for p in (stem.with_name(stem.name + s) for s in DEPTH_SUFFIXES) if p.is_file()]
    if len(found) > 1:
        raise CrossflowError(f"{image} has two depth maps ({found[0].name}, {found[1].name}): keep one")
    return found[0] if found else None


def read_depth_file(path: Path, depth_scale: float = MILLIMETRES) -> np.ndarray:
    """A depth sidecar -> float32 metres [H, W] (0 where there is no depth)."""
    path = Path(path)
    if path.name.lower().endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise CrossflowError(
                f"cannot read depth map {path} ({exc}): replace it with a .npy of float metres"
            ) from None
        if arr.ndim == 3 and 1 in (arr.shape[0], arr.shape[-1]):
            arr = arr.reshape(arr.shape[1:] if arr.shape[0] == 1 else arr.shape[:-1])
        if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
            raise CrossflowError(
                f"depth map {path} is {arr.dtype} {arr.shape}: it must be a 2-D array of metres"
            )
        depth = arr.astype(np.float32)
    else:
        try:
            with Image.open(path) as im:
                im.load()
                mode, raw = im.mode, np.asarray(im)
        except OSError as exc:
            raise CrossflowError(
                f"cannot read depth map {path} ({exc}): replace it with a 16-bit PNG"
            ) from None
        if not (mode.startswith("I") and raw.ndim == 2):
            raise CrossflowError(
                f"depth map {path} is a {mode} PNG, not 16-bit greyscale: write depth as uint16 "
                f"units ({depth_scale:g} per metre) or as NAME.depth.npy in metres"
            )
        depth = raw.astype(np.float32) / np.float32(depth_scale)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0).astype(np.float32)
    if not depth.any():
        raise CrossflowError(f"depth map {path} holds no valid depth (all 0 or NaN): fix or remove the pair")
    return depth


def open_image(path: Path) -> Image.Image:
    """An image file as RGB (EXIF orientation applied; alpha on white), at its own size."""
    from crossflow_core.data.sources import _to_rgb  # the one RGB conversion (16-bit, palettes, alpha)

    with Image.open(path) as im:
        im.load()
        return _to_rgb(ImageOps.exif_transpose(im))


def fit_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """float32 [H, W] -> [size, size]: shorter side resized, centre-cropped (nearest neighbour)."""
    im = Image.fromarray(np.ascontiguousarray(depth, np.float32), mode="F")
    return np.asarray(ImageOps.fit(im, (size, size), method=Image.Resampling.NEAREST), np.float32).copy()


def fit_image_and_depth(
    image_path: Path, depth_path: Path, size: int, depth_scale: float = MILLIMETRES
) -> tuple[Image.Image, np.ndarray]:
    """An image and its depth sidecar, checked to share a size, both fitted to [size, size]."""
    image = open_image(image_path)
    depth = read_depth_file(depth_path, depth_scale)
    if depth.shape != (image.height, image.width):
        raise CrossflowError(
            f"depth map {depth_path} is {depth.shape[1]}x{depth.shape[0]} but its image {image_path.name} "
            f"is {image.width}x{image.height}: a depth map must have its image's size; resize or replace it"
        )
    return ImageOps.fit(image, (size, size), method=Image.Resampling.LANCZOS), fit_depth(depth, size)


def fill_invalid(depth: np.ndarray) -> np.ndarray:
    """Pixels without depth (<= 0 or not finite) take the nearest valid pixel's depth: float32 [H, W]."""
    from scipy.ndimage import distance_transform_edt

    invalid = ~(np.isfinite(depth) & (depth > 0))
    if not invalid.any():
        return depth.astype(np.float32)
    if invalid.all():
        raise CrossflowError("a depth map holds no valid depth (all 0 or NaN): fix or remove it")
    _, (iy, ix) = distance_transform_edt(invalid, return_indices=True)
    return depth[iy, ix].astype(np.float32)


def depth_to_uint16(depth: np.ndarray, depth_scale: float = MILLIMETRES) -> np.ndarray:
    """float metres [H, W] -> uint16 units (rounded; clipped to 1..65535 where depth > 0, else 0)."""
    units = np.rint(np.asarray(depth, np.float64) * depth_scale)
    return np.where(depth > 0, np.clip(units, 1, UINT16_MAX), 0).astype(np.uint16)


def save_depth_png(depth: np.ndarray, path: Path, depth_scale: float = MILLIMETRES) -> Path:
    """Write float metres [H, W] as a 16-bit greyscale PNG of `depth_scale` units per metre, atomically."""
    path = Path(path)
    with atomic_file(path) as tmp:
        Image.fromarray(depth_to_uint16(depth, depth_scale)).save(tmp, format="PNG")
    return path


def colorize(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """A depth map [H, W] -> uint8 RGB [H, W, 3] (matplotlib "turbo" over inverse depth: near is red,
    far is blue); [lo, hi] metres defaults to the map's 2nd-98th percentiles of its valid pixels."""
    from matplotlib import colormaps

    d = np.asarray(depth, np.float64)
    valid = np.isfinite(d) & (d > 0)
    if lo is None or hi is None:
        p_lo, p_hi = np.percentile(d[valid], (2, 98)) if valid.any() else (1.0, 2.0)
        lo, hi = lo if lo is not None else p_lo, hi if hi is not None else p_hi
    hi = max(hi, lo * (1 + 1e-6) + 1e-9)
    inv = (1 / np.clip(d, lo, hi) - 1 / hi) / (1 / lo - 1 / hi)  # 1 = nearest
    rgb = colormaps["turbo"](np.where(valid, inv, 0.0))[..., :3]
    rgb[~valid] = 0.0
    return np.rint(rgb * 255).astype(np.uint8)
