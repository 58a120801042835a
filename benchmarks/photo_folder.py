"""A folder of ordinary photo crops (not the shapes world) for super-resolution benchmarks, offline.

Photos: the ones that ship inside installed packages, read without any download:
  scikit-learn  `sklearn.datasets.load_sample_images()`: china, flower (always needed);
  scikit-image  `skimage.data`: astronaut, coffee, chelsea, rocket, motorcycle (the left view of
                `stereo_motorcycle`), used when scikit-image is installed (`pip install scikit-image`).
Not used: skimage's microscopy/astronomy/retina images (not ordinary photos), its `cat` (the
same photo as `chelsea`), grey ones, and its files that need the `pooch` download.

Held-out test set (`--split`):
  images   test crops come only from photos never used for training: flower and coffee (those
           available); training crops from the others. With scikit-learn alone: china / flower.
  regions  every photo is used; in each, the left 75% of the columns gives training crops and the
           right 25% test crops (disjoint regions, a crop never straddles the cut).
Crops are uniform over positions (a photo is chosen in proportion to its positions), seeded;
`--scale` resizes each photo first (PIL bicubic, anti-aliased) for crops with more scene per pixel;
`--min-detail` rejects featureless crops: mean |difference of neighbouring pixels| (in [0, 1])
below it (default 0.005: flower's out-of-focus background measures ~0.003 and gives a bicubic x4
baseline ~48 dB; textured 64x64 crops measure 0.01-0.1; 0 keeps every crop).

Writes FOLDER/train/00000.png ..., FOLDER/test/00000.png ... and FOLDER/manifest.json (sources,
split, every crop's photo and box); the folder appears whole (atomic rename). A 4x SR benchmark:

    python benchmarks/photo_folder.py /tmp/photos --size 64 --count 512 --test-count 128
    python -c "import crossflow_core.eval.sr_metrics as sr
    sr.degrade_folder('/tmp/photos/test', 4, '/tmp/photos/test_x4')
    sr.bicubic_baseline_folder('/tmp/photos/test_x4', 4, '/tmp/bicubic')"
    crossflow eval sr /tmp/bicubic /tmp/photos/test      # the "bicubic" row
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from crossflow_core.atomic import atomic_dir
from crossflow_core.image_files import save_png

TEST_PHOTOS = ("flower", "coffee")
"""Photos held out for the test split with `--split images`."""
REGION_CUT = 0.75
"""With `--split regions`: columns left of this fraction are training, right of it test."""
MAX_TRIES = 1000
"""Rejected crops (`--min-detail`) allowed per accepted crop before giving up."""


@dataclass(frozen=True)
class Photo:
    name: str
    package: str
    pixels: np.ndarray  # uint8 [H, W, 3]


def _sklearn_photos() -> list[Photo]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    return [Photo(Path(f).stem, "scikit-learn", im) for f, im in zip(data.filenames, data.images)]


def _skimage_photos() -> list[Photo]:
    try:
        import skimage.data as d
    except ImportError:
        return []
    loaders: dict[str, Callable[[], np.ndarray]] = {
        "astronaut": d.astronaut,
        "coffee": d.coffee,
        "chelsea": d.chelsea,
        "rocket": d.rocket,
        "motorcycle": lambda: d.stereo_motorcycle()[0],
    }
    return [Photo(name, "scikit-image", np.asarray(load())[..., :3]) for name, load in loaders.items()]


def load_photos(use_skimage: bool = True) -> list[Photo]:
    """The packaged photos, uint8 RGB, in a fixed order."""
    photos = _sklearn_photos() + (_skimage_photos() if use_skimage else [])
    return [p for p in photos if p.pixels.ndim == 3 and p.pixels.shape[-1] == 3]


def _rescale(photo: Photo, scale: float) -> Photo:
    if scale == 1.0:
        return photo
    h, w = photo.pixels.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    pixels = np.asarray(Image.fromarray(photo.pixels).resize(size, Image.Resampling.BICUBIC))
    return Photo(photo.name, photo.package, pixels)


@dataclass(frozen=True)
class Region:
    """Columns [x0, x1) of a photo that crops of one split may use."""

    photo: Photo
    x0: int
    x1: int


def split_regions(photos: list[Photo], split: str) -> dict[str, list[Region]]:
    """{"train": regions, "test": regions}: whole held-out photos, or disjoint column bands."""
    if split == "images":
        held = [p for p in photos if p.name in TEST_PHOTOS]
        if not held or len(held) == len(photos):
            raise SystemExit(f"--split images needs photos besides and among {TEST_PHOTOS}")
        whole = {p.name: Region(p, 0, p.pixels.shape[1]) for p in photos}
        return {
            "train": [whole[p.name] for p in photos if p not in held],
            "test": [whole[p.name] for p in held],
        }
    cuts = {p.name: round(p.pixels.shape[1] * REGION_CUT) for p in photos}
    return {
        "train": [Region(p, 0, cuts[p.name]) for p in photos],
        "test": [Region(p, cuts[p.name], p.pixels.shape[1]) for p in photos],
    }


def detail(crop: np.ndarray) -> float:
    """Mean absolute difference of vertical and horizontal neighbours, uint8 [H, W, 3] -> [0, 1]."""
    x = crop.astype(np.float64) / 255.0
    return float((np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean()) / 2)


def sample_crops(
    regions: list[Region], count: int, size: int, rng: np.random.Generator, min_detail: float = 0.0
) -> list[tuple[Region, int, int]]:
    """`count` crops (region, top, left), uniform over every size x size position in the regions."""
    positions = [max(0, r.photo.pixels.shape[0] - size + 1) * max(0, r.x1 - r.x0 - size + 1) for r in regions]
    if sum(positions) == 0:
        raise SystemExit(f"no {size}x{size} crop fits in {[r.photo.name for r in regions]}; lower --size")
    weights = np.asarray(positions, dtype=np.float64) / sum(positions)
    crops: list[tuple[Region, int, int]] = []
    tries = 0
    while len(crops) < count:
        r = regions[rng.choice(len(regions), p=weights)]
        y = int(rng.integers(0, r.photo.pixels.shape[0] - size + 1))
        x = int(rng.integers(r.x0, r.x1 - size + 1))
        if min_detail > 0 and detail(r.photo.pixels[y : y + size, x : x + size]) < min_detail:
            tries += 1
            if tries > MAX_TRIES * (len(crops) + 1):
                raise SystemExit(f"too few crops with detail >= {min_detail}; lower --min-detail")
            continue
        crops.append((r, y, x))
    return crops


def write_folder(
    out: Path,
    size: int,
    count: int,
    test_count: int,
    seed: int = 0,
    split: str = "images",
    scale: float = 1.0,
    min_detail: float = 0.005,
    use_skimage: bool = True,
) -> dict:
    """Write the folder (see the module docstring) and return its manifest."""
    photos = [_rescale(p, scale) for p in load_photos(use_skimage)]
    regions = split_regions(photos, split)
    counts = {"train": count, "test": test_count}
    manifest: dict = {
        "what": "crops of packaged photos for super-resolution benchmarks (benchmarks/photo_folder.py)",
        "size": size,
        "seed": seed,
        "split": split,
        "scale": scale,
        "min_detail": min_detail,
        "packages": {pkg: importlib.metadata.version(pkg) for pkg in sorted({p.package for p in photos})},
        "photos": {p.name: {"package": p.package, "shape": list(p.pixels.shape)} for p in photos},
    }
    with atomic_dir(out) as tmp:
        for k, (name, n) in enumerate(counts.items()):
            rng = np.random.default_rng([seed, k])
            crops = sample_crops(regions[name], n, size, rng, min_detail)
            records = []
            for i, (r, y, x) in enumerate(crops):
                crop = np.ascontiguousarray(r.photo.pixels[y : y + size, x : x + size])
                save_png(crop, tmp / name / f"{i:05d}.png")
                records.append({"file": f"{i:05d}.png", "photo": r.photo.name, "top": y, "left": x})
            manifest[name] = {
                "count": n,
                "regions": [{"photo": r.photo.name, "columns": [r.x0, r.x1]} for r in regions[name]],
                "crops": records,
            }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="Output folder (replaced if it exists).")
    parser.add_argument("--size", type=int, default=64, help="Crop side in pixels (e.g. 32, 64).")
    parser.add_argument("--count", type=int, default=256, help="Training crops.")
    parser.add_argument("--test-count", type=int, default=64, help="Test crops.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=("images", "regions"), default="images")
    parser.add_argument("--scale", type=float, default=1.0, help="Resize the photos by this first.")
    parser.add_argument("--min-detail", type=float, default=0.005, help="Reject flatter crops (0: none).")
    parser.add_argument("--no-skimage", action="store_true", help="Only scikit-learn's two photos.")
    args = parser.parse_args()
    if args.size < 1 or args.count < 0 or args.test_count < 0 or not args.scale > 0:
        raise SystemExit("--size and --scale must be positive, the counts >= 0")
    m = write_folder(
        args.folder,
        args.size,
        args.count,
        args.test_count,
        seed=args.seed,
        split=args.split,
        scale=args.scale,
        min_detail=args.min_detail,
        use_skimage=not args.no_skimage,
    )
    for name in ("train", "test"):
        used = sorted({c["photo"] for c in m[name]["crops"]})
        crops = f"{m[name]['count']} crops {args.size}x{args.size}"
        print(f"{args.folder / name}: {crops} from {', '.join(used)}")
    print(f"photos from {', '.join(f'{k} {v}' for k, v in m['packages'].items())}; split {args.split}")


if __name__ == "__main__":
    main()
