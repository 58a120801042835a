"""Super-resolution benchmark: CrossFlow vs bicubic, flow matching from noise + concatenation, and
regression, with the same U-Net, data and training steps (paper Table 6, at CPU scale).

    python benchmarks/sr_compare.py --dataset shapes --steps 800 --out /tmp/srbench
    python benchmarks/sr_compare.py --dataset photos --photos /tmp/photos --steps 600 --out /tmp/srbench

Methods (all `crossflow train` runs of one recipe; only the overrides differ):
  crossflow   source = bicubic-upsampled low-res, no VE, no noise, no concatenation (the recipe,
              t ~ U(0, 1) in training)
  crossflow_logit_normal_t   the same with logit-normal t (the official T2I choice)
  fm          ve.kind=noise_concat: Gaussian source, upsampled low-res concatenated to the input
              (logit-normal t, the usual flow-matching choice)
  regression  flow.time_sampling=zero + sample.steps=1: the same network, one step from t = 0
  bicubic     no training
Writes benchmarks/sr_compare_<dataset>.json, merges benchmarks/sr_compare.md, and an image strip
benchmarks/sr_strip_<dataset>.png (rows: low-res | bicubic | regression | fm | crossflow |
crossflow_logit_normal_t | high-res).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.eval import inception
from crossflow_core.eval.sr_metrics import evaluate_sr_folders
from crossflow_core.eval.sr_model import bicubic_outputs, model_outputs
from crossflow_core.image_files import list_images, read_image, save_grid, save_png
from crossflow_core.recipe import load_recipe
from crossflow_core.train.loop import train

HERE = Path(__file__).resolve().parent
METHODS = {
    "regression": ["flow.time_sampling=zero", "sample.steps=1"],
    "fm": ["ve.kind=noise_concat", "flow.time_sampling=logit_normal"],
    "crossflow": [],  # the recipe: t ~ U(0, 1) in training
    "crossflow_logit_normal_t": ["flow.time_sampling=logit_normal"],  # the T2I choice: t = 0 rarely trained
}


def test_folder(args, out: Path) -> Path:
    if args.dataset == "photos":
        return Path(args.photos) / "test"
    from crossflow_core.data.shapes import ShapesWorld

    folder = out / "test_hr"
    world = ShapesWorld(image_size=32, seed=0)
    for i in range(args.test_count):
        save_png(np.asarray(world.sample(i, "test").image), folder / f"{i:05d}.png")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["shapes", "photos"], required=True)
    p.add_argument("--photos", help="benchmarks/photo_folder.py output (train/, test/) for --dataset photos")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--test-count", type=int, default=256)
    p.add_argument("--out", default="/tmp/srbench")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides for every method")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is robust on a shared CPU)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out) / args.dataset
    name = "sr_shapes" if args.dataset == "shapes" else "sr"
    base = [f"train.steps={args.steps}", "train.sample_every=0", *args.set]
    recipe = load_recipe(name, base)
    data = out / "data"
    if not (data / "manifest.json").is_file():
        src = Path(args.photos) / "train" if args.dataset == "photos" else None
        prepare_dataset(recipe.data, recipe.source, recipe.target, data, source_dir=src)
    refs = test_folder(args, out)
    fid = inception.default_weights_path() is not None
    old_path = HERE / f"sr_compare_{args.dataset}.json"
    old = json.loads(old_path.read_text())["methods"] if old_path.is_file() else {}
    rows, dirs = {}, {}
    work = out / "bicubic"
    if not (work / "bicubic").is_dir():
        bicubic_outputs(refs, recipe.source.factor, work)
    dirs["bicubic"] = work / "bicubic"
    rows["bicubic"] = {"train_s": 0.0, "params": 0}
    for method, extra in METHODS.items():
        r = load_recipe(name, [*base, *extra])
        run = out / f"run_{method}"
        t0 = time.time()
        result = train(r, data, run)
        from crossflow_core.pipeline import load_pipeline

        pipe = load_pipeline(run, "cpu")
        params = sum(p.numel() for p in pipe.flow.parameters()) + sum(p.numel() for p in pipe.ve.parameters())
        ev = out / f"eval_{method}"
        if not (ev / "upscaled").is_dir():
            model_outputs(run, refs, ev, "cpu")
        dirs[method] = ev / "upscaled"
        seconds = round(time.time() - t0, 1)
        if result.resumed_from == args.steps:  # trained before: keep the time it took then
            seconds = old.get(method, {}).get("train_s")
        fm_loss = result.losses.get("fm", old.get(method, {}).get("fm_loss"))
        rows[method] = {"train_s": seconds, "params": params, "fm_loss": fm_loss, "nfe": pipe.nfe(r.sample)}
    for method, folder in dirs.items():
        cached = folder.parent / f"scores_{folder.name}.json"
        if not cached.is_file():
            results = evaluate_sr_folders(folder, refs, fid=fid)
            scores = {m.metric: m.value for m in results} | {"n": results[0].n}
            cached.write_text(json.dumps(scores))
        rows[method].update(json.loads(cached.read_text()))
    strip(out / "bicubic" / "lowres", dirs, refs, HERE / f"sr_strip_{args.dataset}.png", recipe.source.factor)
    record = {
        "dataset": args.dataset,
        "recipe": name,
        "steps": args.steps,
        "overrides": base,
        "factor": recipe.source.factor,
        "image_size": recipe.data.image_size,
        "test_images": str(refs),
        "fid": fid,
        "methods": rows,
        "machine": f"{torch.get_num_threads()} CPU threads",
    }
    (HERE / f"sr_compare_{args.dataset}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    write_markdown()


def strip(lowres: Path, dirs: dict[str, Path], refs: Path, path: Path, factor: int, n: int = 8) -> None:
    """Rows of n test images: low-res (nearest-upscaled for display) | each method | high-res."""
    names = [p.stem for p in list_images(refs)[:n]]
    rows = []
    low = [torch.from_numpy(read_image(next(lowres.glob(f"{s}.*")))).permute(2, 0, 1) for s in names]
    rows.append(torch.stack([x.repeat_interleave(factor, 1).repeat_interleave(factor, 2) for x in low]))
    for method in ("bicubic", "regression", "fm", "crossflow", "crossflow_logit_normal_t"):
        rows.append(
            torch.stack(
                [torch.from_numpy(read_image(dirs[method] / f"{s}.png")).permute(2, 0, 1) for s in names]
            )
        )
    rows.append(
        torch.stack([torch.from_numpy(read_image(next(refs.glob(f"{s}.*")))).permute(2, 0, 1) for s in names])
    )
    save_grid(torch.cat(rows).float() / 255, path, nrow=n)


def write_markdown() -> None:
    lines = [
        "# Super-resolution: CrossFlow against its baselines (same U-Net, data, steps)",
        "",
        "Generated by `benchmarks/sr_compare.py`. PSNR/SSIM in RGB (mean ± std over the test images); "
        "FID with the standard Inception when its weights are converted "
        "(`crossflow eval weights inception`), "
        "on few images, so only comparable within a row set. Strips: rows = low-res (nearest) | bicubic | "
        "regression | flow matching (noise + concat) | CrossFlow | high-res.",
        "",
    ]
    for path in sorted(HERE.glob("sr_compare_*.json")):
        rec = json.loads(path.read_text())
        lines += [
            f"## {rec['dataset']}: {rec['image_size'] // rec['factor']} -> {rec['image_size']} px "
            f"(x{rec['factor']}), "
            f"`{rec['recipe']}`, {rec['steps']} steps, {rec['methods']['bicubic']['n']} test images",
            "",
            "| method | params | NFE | PSNR (dB) | SSIM | FID | train (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for m, r in rec["methods"].items():
            fid = f"{r['fid']:.2f}" if r.get("fid") is not None else "—"
            lines.append(
                f"| {m} | {r['params']:,} | {r.get('nfe', 0)} | {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f} | "
                f"{r['ssim_mean']:.4f} ± {r['ssim_std']:.4f} | {fid} | {r['train_s']} |"
            )
        lines += ["", f"![{rec['dataset']}](sr_strip_{rec['dataset']}.png)", ""]
    (HERE / "sr_compare.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
