"""FD-shapes: the Fréchet distance of FID, in the feature space of a small CNN trained on the
shapes world (as "FID" on MNIST uses a LeNet). Never call it FID: the numbers are not
comparable with Inception-based FID.

The network (`ShapesFeatureNet`, ~191k parameters, shipped as float16 safetensors in
`assets/fd_shapes_cnn.safetensors`, ~380 KB) sees images reduced to 32x32 (a 2x2 box average
turns a 64 px render into nearly the 32 px one) and is trained on `train`-split renders to
predict, from its 128-d penultimate layer: which colour-shape pairs are present (18 binary),
the object count (1-4), which quadrants hold an object centre (4 binary) and the mean object
size. Its features therefore move with colour, shape, count, layout and size.

    python -m crossflow_core.eval.fd_shapes --train     # retrains and rewrites the asset

Training is seeded and deterministic on the CPU for a given torch build, CPU type and thread
count (bytes may differ elsewhere; the file's sha256 goes into every result). The JSON sidecar
`assets/fd_shapes_cnn.json` records the exact command, held-out accuracy and reference distances.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from crossflow_core.data.shapes import COLOURS, QUADRANTS, SHAPES, Scene, ShapesWorld, quadrant
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval.generate import to_uint8
from crossflow_core.eval.report import MetricResult, git_commit

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


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_feature_net(path: str | Path | None = None) -> FeatureNet:
    """Load the shipped (or given) weights; float16 on disk, float32 in memory, eval mode."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise MissingResourceError(
            f"FD-shapes weights {path} not found; run `python -m crossflow_core.eval.fd_shapes --train`"
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


# ---------------------------------------------------------------- training (reproducible)


def attribute_targets(scene: Scene, image_size: int) -> np.ndarray:
    """The head targets [N_OUTPUTS] of one scene (see the module docstring)."""
    t = np.zeros(N_OUTPUTS, np.float32)
    for o in scene.objects:
        t[_PAIRS.index((o.colour, o.shape))] = 1.0
        t[_N_PAIRS + _N_COUNT + QUADRANTS.index(quadrant(o, image_size))] = 1.0
    t[_N_PAIRS + len(scene.objects) - 1] = 1.0
    mean_size = float(np.mean([o.size for o in scene.objects])) / image_size
    t[-1] = (mean_size - _SIZE_MEAN) / _SIZE_STD
    return t


def _dataset(split: str, n: int, seed: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [n, 3, 32, 32] and targets [n, N_OUTPUTS]; every 4th sample rendered at 64 px."""
    worlds = {s: ShapesWorld(image_size=s, seed=seed) for s in (32, 64)}
    xs, ts = [], []
    for i in range(start, start + n):
        size = 64 if i % 4 == 3 else 32
        sample = worlds[size].sample(i, split)
        xs.append(prepare(sample.image[None]))
        ts.append(attribute_targets(sample.scene, size))
    return torch.cat(xs), torch.from_numpy(np.stack(ts))


_MIRROR_QUAD = [
    QUADRANTS.index(q.replace("left", "@").replace("right", "left").replace("@", "right")) for q in QUADRANTS
]


def hflip(x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the rows `mask` [N] of inputs [N, 3, H, W] left-right and their quadrant targets.

    Mirroring puts every colour-shape pair into its held-out quadrant now and then, so the
    features know those scenes although the training split never contains them."""
    q0 = _N_PAIRS + _N_COUNT
    mirrored_t = t.clone()
    mirrored_t[:, q0 : q0 + _N_QUAD] = t[:, [q0 + k for k in _MIRROR_QUAD]]
    m = mask.view(-1, 1)
    return torch.where(m.view(-1, 1, 1, 1), x.flip(-1), x), torch.where(m, mirrored_t, t)


def _loss(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    p, c, q = _N_PAIRS, _N_PAIRS + _N_COUNT, _N_PAIRS + _N_COUNT + _N_QUAD
    return (
        F.binary_cross_entropy_with_logits(out[:, :p], t[:, :p])
        + F.cross_entropy(out[:, p:c], t[:, p:c].argmax(1))
        + F.binary_cross_entropy_with_logits(out[:, c:q], t[:, c:q])
        + 0.5 * F.mse_loss(out[:, -1], t[:, -1])
    )


@torch.inference_mode()
def head_accuracy(net: ShapesFeatureNet, x: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    """Held-out quality: exact match of pairs / quadrants, count accuracy, size error (fraction)."""
    out = net(x)
    p, c, q = _N_PAIRS, _N_PAIRS + _N_COUNT, _N_PAIRS + _N_COUNT + _N_QUAD
    return {
        "pairs_exact": float(((out[:, :p] > 0) == (t[:, :p] > 0.5)).all(1).float().mean()),
        "count": float((out[:, p:c].argmax(1) == t[:, p:c].argmax(1)).float().mean()),
        "quadrants_exact": float(((out[:, c:q] > 0) == (t[:, c:q] > 0.5)).all(1).float().mean()),
        "size_mae": float((out[:, -1] - t[:, -1]).abs().mean() * _SIZE_STD),
    }


def colour_shifted(images: np.ndarray) -> np.ndarray:
    """Every object's colour rotated RGB -> GBR (the near-grey background barely moves)."""
    return np.ascontiguousarray(images[..., [1, 2, 0]])


def size_shifted(
    split: str, n: int, factor: float = 0.6, image_size: int = INPUT_SIZE, seed: int = 0
) -> np.ndarray:
    """Renders of the same scenes with every object scaled by `factor` about its centre."""
    from crossflow_core.data.shapes import render

    world = ShapesWorld(image_size=image_size, seed=seed)
    out = []
    for i in range(n):
        scene = world.sample(i, split).scene
        smaller = tuple(dataclasses.replace(o, size=o.size * factor) for o in scene.objects)
        out.append(render(Scene(smaller), image_size))
    return np.stack(out)


def reference_distances(fnet: FeatureNet, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """FD-shapes of train renders (n) against: other train renders, the test split, the same
    images, 64 px renders of other train samples, colour-shifted and size-shifted renders."""
    a = world_images("train", n, seed=seed)
    fa = extract_features(fnet, a)
    pairs = {
        "train_vs_train_disjoint": world_images("train", n, seed=seed, start=n),
        "train_vs_test": world_images("test", n, seed=seed),
        "train_vs_train64_disjoint": world_images("train", n, image_size=64, seed=seed, start=n),
        "train_vs_colour_shifted": colour_shifted(a),
        "train_vs_size_shifted": size_shifted("train", n, seed=seed),
    }
    out = {"train_vs_itself": frechet_distance(fa, fa)}
    out.update({k: frechet_distance(fa, extract_features(fnet, v)) for k, v in pairs.items()})
    return out


def train(
    out: Path = WEIGHTS_PATH,
    n_train: int = 24000,
    epochs: int = 20,
    seed: int = 0,
    device: str = "cpu",
    n_eval: int = 2000,
) -> dict:
    """Train the feature network on `train`-split renders and write weights + sidecar JSON.

    Seeded: on the CPU the bytes repeat (same torch build, CPU type and threads); `main` turns on
    deterministic algorithms for CUDA."""
    torch.manual_seed(seed)
    started = time.time()
    x, t = _dataset("train", n_train, seed)
    xv, tv = _dataset("test", n_eval, seed)
    x, t = x.to(device), t.to(device)
    net = ShapesFeatureNet().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch, steps_per_epoch = 128, math.ceil(n_train / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(n_train, generator=g)
        total = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch : (s + 1) * batch].to(device)
            flip = (torch.rand(len(idx), generator=g) < 0.5).to(device)
            xb, tb = hflip(x[idx], t[idx], flip)
            loss = _loss(net(xb), tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        net.eval()
        held = head_accuracy(net, xv.to(device), tv.to(device))
        seen = head_accuracy(net, x[:n_eval], t[:n_eval])
        print(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f} test {held} train {seen}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    state = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    # one metadata key: safetensors writes several in hash order, which changes the bytes
    save_file(state, str(tmp), metadata={"network": f"{NETWORK_NAME} seed={seed}"})
    os.replace(tmp, out)
    fnet = load_feature_net(out)
    info = {
        "network": NETWORK_NAME,
        "sha256": fnet.sha256,
        "parameters": sum(p.numel() for p in net.parameters()),
        "train": {
            "split": "train",
            "n": n_train,
            "epochs": epochs,
            "seed": seed,
            "batch": batch,
            "lr": 2e-3,
            "device": torch.device(device).type,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "command": f"python -m crossflow_core.eval.fd_shapes --train --n-train {n_train} "
            f"--epochs {epochs} --seed {seed} --device {torch.device(device).type} "
            f"--threads {torch.get_num_threads()}",
        },
        "augmentation": "horizontal flip, p=0.5",
        "held_out_test_split": head_accuracy(fnet.net, xv, tv),
        f"train_split_first_{n_eval}": head_accuracy(fnet.net, x[:n_eval].cpu(), t[:n_eval].cpu()),
        f"reference_fd_shapes_n{n_eval}": reference_distances(fnet, n_eval, seed),
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
    }
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the FD-shapes feature network (CPU, minutes).")
    parser.add_argument("--train", action="store_true", help="train and write the weights asset")
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    parser.add_argument("--n-train", type=int, default=24000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bytes reproduce per device type)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch CPU threads (fixed for reproducibility)"
    )
    args = parser.parse_args(argv)
    if not args.train:
        parser.error("nothing to do; pass --train")
    torch.set_num_threads(args.threads)
    if torch.device(args.device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    info = train(args.out, args.n_train, args.epochs, args.seed, args.device)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
