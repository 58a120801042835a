"""FID with the standard Inception on the shapes world: small, zero and large where it should be.

FID (and KID) of the shapes world's train split against: its held-out test split (small: the
same world, other compositions), a second draw of itself with the same images (zero), another
draw of the train split (small, finite-sample bias), and two shifted distributions (objects'
colours rotated RGB -> GBR; objects at 0.6 of their size): large. Uses the cached, converted
standard Inception (`crossflow eval weights inception`). Writes benchmarks/fid_shapes_sanity.{json,md}.

    python benchmarks/fid_shapes_sanity.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from crossflow_core.eval.fd_shapes import colour_shifted, size_shifted, world_images
from crossflow_core.eval.fid import TensorImages, compute_metrics
from crossflow_core.eval.inception import default_weights_path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    n = args.n
    weights = default_weights_path()
    if weights is None:
        raise SystemExit("no cached Inception weights: run `crossflow eval weights inception` first")
    train = world_images("train", n, 32)
    pairs = {
        "train vs itself": (train, train),
        "train vs other train samples": (train, world_images("train", n, 32, start=n)),
        "train vs test split": (train, world_images("test", n, 32)),
        "train vs colour-shifted train (RGB->GBR)": (
            train,
            colour_shifted(world_images("train", n, 32, start=n)),
        ),
        "train vs objects at 0.6 size": (train, size_shifted("train", n, 0.6, 32)),
    }
    rows = []
    for name, (a, b) in pairs.items():
        start = time.time()
        results = compute_metrics(
            TensorImages.of(torch.from_numpy(np.ascontiguousarray(b)).permute(0, 3, 1, 2), label=name),
            TensorImages.of(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2), label="train"),
            weights=weights,
            metrics=("fid", "kid"),
            use_cache=False,
            kid_subset_size=min(1000, n),
        )
        values = {r.metric: r.value for r in results}
        rows.append(
            {
                "pair": name,
                "n": n,
                "fid": values["fid"],
                "kid_mean": values["kid_mean"],
                "seconds": round(time.time() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    settings = results[0].settings
    (HERE / "fid_shapes_sanity.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    lines = [
        "# FID on the shapes world (standard Inception, 32 px images resized by torch-fidelity)",
        "",
        "| pair | n per side | FID | KID |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {r['pair']} | {r['n']} | {r['fid']:.3f} | {r['kid_mean']:.5f} |" for r in rows]
    lines += [
        "",
        f"Feature network: {settings.get('feature_network')}; weights sha256 "
        f"{str(settings.get('weights_sha256'))[:16]}...; resize: {settings.get('resize')}.",
    ]
    (HERE / "fid_shapes_sanity.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
