"""FD-shapes: the Fréchet distance of FID, in the feature space of a small CNN trained on the
shapes world (as "FID" on MNIST uses a LeNet). Never call it FID: the numbers are not
comparable with Inception-based FID.

The network (`ShapesFeatureNet`, ~191k parameters, shipped as float16 safetensors in
`assets/fd_shapes_cnn.safetensors`, ~380 KB) sees images reduced to 32x32 (a 2x2 box average
turns a 64 px render into nearly the 32 px one) and is trained on `train`-split renders to
predict, from its 128-d penultimate layer: which colour-shape pairs are present (18 binary),
the object count (1-4), which quadrants hold an object centre (4 binary) and the mean object
size. Its features therefore move with colour, shape, count, layout and size.

    crossflow eval weights fd-shapes     # retrains and rewrites the asset (fd_shapes_train.py)

Training (`crossflow_core.eval.fd_shapes_train`) is seeded and deterministic on the CPU for a
given torch build, CPU type and thread count (bytes may differ elsewhere; the file's sha256 goes
into every result). The JSON sidecar `assets/fd_shapes_cnn.json` records the exact command,
held-out accuracy and reference distances.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from crossflow_core.atomic import file_sha256
from crossflow_core.data.shapes import COLOURS, QUADRANTS, SHAPES, Scene, ShapesWorld, render
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval.report import MetricResult, git_commit
from crossflow_core.image_files import to_uint8

ASSET_DIR = Path(__file__).resolve().parent / "assets"
WEIGHTS_PATH = ASSET_DIR / "fd_shapes_cnn.safetensors"
INPUT_SIZE = 32
FEATURE_DIM = 128
NETWORK_NAME = "fd_shapes_cnn_v1"
_PAIRS = [(c, s) for c in COLOURS for s in SHAPES]
_N_PAIRS, _N_COUNT, _N_QUAD = len(_PAIRS), 4, len(QUADRANTS)
N_OUTPUTS = _N_PAIRS + _N_COUNT + _N_QUAD + 1  # pairs | count 1..4 | quadrants | mean size
_SIZE_MEAN, _SIZE_STD = 0.3, 0.06  # standardises the mean size fraction (0.20 .. 0.44)


class ShapesFeatureNet(nn.Module):
    """3 conv blocks -> 128-d features -> attribute heads. Input [N, 3, 32, 32] in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x16
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4x4
            nn.Flatten(), nn.Linear(64 * 4 * 4, FEATURE_DIM),
        )  # fmt: skip
        self.heads = nn.Linear(FEATURE_DIM, N_OUTPUTS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 32, 32] -> penultimate features [N, 128] (before the ReLU)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 32, 32] -> head outputs [N, N_OUTPUTS] (logits and the size regression)."""
        return self.heads(F.relu(self.body(x)))


@dataclass(frozen=True)
class FeatureNet:
    """The loaded network with the sha256 of the file it came from."""

    net: ShapesFeatureNet
    sha256: str
    path: Path


def load_feature_net(path: str | Path | None = None) -> FeatureNet:
    """Load the shipped (or given) weights; float16 on disk, float32 in memory, eval mode."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise MissingResourceError(
            f"FD-shapes weights {path} not found; retrain them with `crossflow eval weights fd-shapes`"
        )
    net = ShapesFeatureNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
    return FeatureNet(net.eval(), file_sha256(path), path)


def prepare(images: torch.Tensor | np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or a list of them, or float [N, 3, H, W] in [0, 1]) -> the network's
    input [N, 3, 32, 32] in [-1, 1]. Float images are first quantised like saved PNGs. Sizes that
    are multiples of 32 are box-averaged down; others are resized bilinearly with antialiasing."""
    if isinstance(images, torch.Tensor):
        arr = to_uint8(images)
    elif isinstance(images, np.ndarray):
        arr = images
    else:  # a list: images may differ in size
        return torch.cat([prepare(np.asarray(im, dtype=np.uint8)[None]) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    h, w = x.shape[-2:]
    if (h, w) == (INPUT_SIZE, INPUT_SIZE):
        return x
    if h == w and h % INPUT_SIZE == 0:  # box filter: a 64 px render becomes a 32 px one
        return F.avg_pool2d(x, h // INPUT_SIZE)
    return F.interpolate(
        x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False
    )


@torch.inference_mode()
def extract_features(fnet: FeatureNet, images, batch_size: int = 512) -> np.ndarray:
    """Features [N, 128] (float64) of images (anything `prepare` takes), in order."""
    n = len(images)
    out = [fnet.net.features(prepare(images[i : i + batch_size])).double() for i in range(0, n, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, FEATURE_DIM))


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [N, D]."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

    if len(feats_a) < 2 or len(feats_b) < 2:
        raise ValueError("the Fréchet distance needs at least 2 images per set")
    stats = [
        fid_features_to_statistics(torch.from_numpy(np.asarray(f, np.float64))) for f in (feats_a, feats_b)
    ]
    return float(fid_statistics_to_metric(stats[0], stats[1], verbose=False)[KEY_METRIC_FID])


def world_images(
    split: str, n: int, image_size: int = INPUT_SIZE, seed: int = 0, start: int = 0
) -> np.ndarray:
    """Renders [n, S, S, 3] uint8 of samples start .. start+n-1 of a shapes-world split."""
    world = ShapesWorld(image_size=image_size, seed=seed)
    return np.stack([world.sample(start + i, split).image for i in range(n)])


def load_source(source: str | Path, n: int, image_size: int = INPUT_SIZE, seed: int = 0) -> list[np.ndarray]:
    """Images of one side as uint8 [H, W, 3]: `shapes:train` / `shapes:test` (the first n renders
    of that split, world seed `seed`), a GenEval layout (its samples), or any folder / shard
    directory that `crossflow eval fid` reads (every image)."""
    from crossflow_core.eval import fid, geneval

    text = str(source)
    if text.startswith("shapes:"):
        split = text.split(":", 1)[1]
        if split not in ("train", "test"):
            raise CrossflowError(f"unknown shapes split in {text!r}; use shapes:train or shapes:test")
        return list(world_images(split, n, image_size=image_size, seed=seed))
    if geneval.is_layout(text):
        return geneval.layout_images(geneval.read_layout(text))[0]
    src = fid.image_source(text)
    return [src.read(i).permute(1, 2, 0).numpy() for i in range(len(src))]


def fd_shapes_result(
    images_a,
    images_b,
    fnet: FeatureNet | None = None,
    settings: dict[str, Any] | None = None,
    model: str | None = None,
) -> MetricResult:
    """The `fd_shapes` MetricResult of two image sets (anything `prepare` takes per side)."""
    fnet = fnet or load_feature_net()
    if min(len(images_a), len(images_b)) < 2:
        raise CrossflowError(
            f"FD-shapes needs at least 2 images per side, got {len(images_a)} and {len(images_b)}"
        )
    value = frechet_distance(extract_features(fnet, images_a), extract_features(fnet, images_b))
    info = {
        "n_a": len(images_a),
        "n_b": len(images_b),
        "feature_network": NETWORK_NAME,
        "feature_dim": FEATURE_DIM,
        "input_size": INPUT_SIZE,
        "weights": str(fnet.path),
        "weights_sha256": fnet.sha256,
        **(settings or {}),
    }
    return MetricResult("fd_shapes", value, len(images_a), info, model=model, git_commit=git_commit())


# ---------------------------------------------------------------- reference distortions


def colour_shifted(images: np.ndarray) -> np.ndarray:
    """Every object's colour rotated RGB -> GBR (the near-grey background barely moves)."""
    return np.ascontiguousarray(images[..., [1, 2, 0]])


def size_shifted(
    split: str, n: int, factor: float = 0.6, image_size: int = INPUT_SIZE, seed: int = 0
) -> np.ndarray:
    """Renders of the same scenes with every object scaled by `factor` about its centre."""
    world = ShapesWorld(image_size=image_size, seed=seed)
    out = []
    for i in range(n):
        scene = world.sample(i, split).scene
        smaller = tuple(dataclasses.replace(o, size=o.size * factor) for o in scene.objects)
        out.append(render(Scene(smaller), image_size))
    return np.stack(out)
