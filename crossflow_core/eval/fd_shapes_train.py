"""Training the FD-shapes feature network (`fd_shapes.ShapesFeatureNet`), reproducibly.

`crossflow eval weights fd-shapes` calls `train_weights`, which fixes the CPU thread count (and,
on CUDA, deterministic algorithms) and then `train`s on `train`-split renders of the shapes
world, writing the float16 safetensors weights and a JSON sidecar (the command, held-out head
accuracy and reference distances). The shipped asset was made with the defaults below and 16
threads: `crossflow eval weights fd-shapes --threads 16`. Bytes repeat for the same torch build,
CPU type and thread count; elsewhere they may differ, which is why every FD-shapes result records
the weights' sha256.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from crossflow_core.atomic import atomic_file, write_text
from crossflow_core.data.shapes import QUADRANTS, Scene, ShapesWorld, quadrant
from crossflow_core.eval.fd_shapes import (
    _N_COUNT,
    _N_PAIRS,
    _N_QUAD,
    _PAIRS,
    _SIZE_MEAN,
    _SIZE_STD,
    N_OUTPUTS,
    NETWORK_NAME,
    WEIGHTS_PATH,
    FeatureNet,
    ShapesFeatureNet,
    colour_shifted,
    extract_features,
    frechet_distance,
    load_feature_net,
    prepare,
    size_shifted,
    world_images,
)


def attribute_targets(scene: Scene, image_size: int) -> np.ndarray:
    """The head targets [N_OUTPUTS] of one scene (see `fd_shapes`' module docstring)."""
    t = np.zeros(N_OUTPUTS, np.float32)
    for o in scene.objects:
        t[_PAIRS.index((o.colour, o.shape))] = 1.0
        t[_N_PAIRS + _N_COUNT + QUADRANTS.index(quadrant(o, image_size))] = 1.0
    t[_N_PAIRS + len(scene.objects) - 1] = 1.0
    mean_size = float(np.mean([o.size for o in scene.objects])) / image_size
    t[-1] = (mean_size - _SIZE_MEAN) / _SIZE_STD
    return t


def dataset(split: str, n: int, seed: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Train the feature network on `train`-split renders and write weights + sidecar JSON.

    Seeded: on the CPU the bytes repeat (same torch build, CPU type and threads);
    `train_weights` also turns on deterministic algorithms for CUDA. `command` (how this run was
    started) is recorded in the sidecar; `log` receives one line per epoch."""
    out = Path(out)
    torch.manual_seed(seed)
    started = time.time()
    x, t = dataset("train", n_train, seed)
    xv, tv = dataset("test", n_eval, seed)
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
        if log is not None:
            log(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f} test {held} train {seen}")
    state = {k: v.detach().cpu().to(torch.float16).contiguous() for k, v in net.state_dict().items()}
    with atomic_file(out) as tmp:
        # one metadata key: safetensors writes several in hash order, which changes the bytes
        save_file(state, str(tmp), metadata={"network": f"{NETWORK_NAME} seed={seed}"})
    fnet = load_feature_net(out)
    kind = torch.device(device).type
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
            "device": kind,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "command": command
            or f"crossflow_core.eval.fd_shapes_train.train(n_train={n_train}, epochs={epochs}, "
            f"seed={seed}, device={kind!r})",
        },
        "augmentation": "horizontal flip, p=0.5",
        "held_out_test_split": head_accuracy(fnet.net, xv, tv),
        f"train_split_first_{n_eval}": head_accuracy(fnet.net, x[:n_eval].cpu(), t[:n_eval].cpu()),
        f"reference_fd_shapes_n{n_eval}": reference_distances(fnet, n_eval, seed),
        "seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
    }
    write_text(out.with_suffix(".json"), json.dumps(info, indent=2) + "\n")
    return info


def train_weights(
    out: Path = WEIGHTS_PATH,
    n_train: int = 24000,
    epochs: int = 20,
    seed: int = 0,
    device: str = "cpu",
    threads: int = 2,
    command: str | None = None,
    log: Callable[[str], None] | None = print,
) -> dict:
    """`train` with the thread count fixed (and deterministic algorithms on CUDA), as the shipped
    asset was made: the CPU thread count is part of what makes the bytes repeat."""
    torch.set_num_threads(threads)
    if torch.device(device).type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    return train(out, n_train, epochs, seed, device, command=command, log=log)
