"""Text -> image on real labelled images: scikit-learn's handwritten digits through the `t2i` recipe.

    pip install -e ".[bench]"            # scikit-learn (load_digits ships offline)
    OMP_NUM_THREADS=1 python benchmarks/digits_t2i.py --steps 720 --threads 1 --out-dir /tmp/digits_t2i

End to end, as a user would, through the real CLI (subprocesses):
  1. export `sklearn.datasets.load_digits` (1797 8x8 images, 0..16) as 32x32 PNGs, dark ink on
     white, upscaled x4 with PIL's bicubic filter, with a `captions.jsonl` ("a handwritten digit
     seven", one caption per image); a stratified 20% split (seeded) is held out and never trained on;
  2. `crossflow prepare --recipe t2i --from TRAIN --out DATA --set data.image_size=32 ...` and
     `crossflow train --recipe t2i --data DATA --out RUN --set ...` (the shapes demo's 32x32 U-Net);
  3. `crossflow sample --model RUN --prompts PROMPTS --n SEEDS --cfg-scale S` for the ten class prompts;
  4. judge the PNGs with an RBF SVM trained on the REAL training digits only (8x8, 0..16): generated
     32x32 RGB images are mapped back by the inverse of the rendering (grey = channel mean, 4x4 area
     average, ink = 16 * (1 - grey)). Reported: the classifier's accuracy on the real held-out digits
     (ceiling), on the same digits rendered -> PNG -> `crossflow prepare` -> inverse (is the mapping
     faithful?), on the generated images for their prompt (per class and overall), and baselines:
     chance, the same generated images scored against shuffled prompts, and the unconditional
     velocity (cfg_scale 0) from the same text latents and seeds.
Writes benchmarks/digits_t2i.json, benchmarks/digits_t2i.md and benchmarks/digits_t2i_samples.png
(one row per digit, 0..9, columns = seeds, at the main cfg scale). Re-running with the same
--out-dir reuses the prepared data and continues / reuses the run (`crossflow train` resumes).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crossflow_core.image_files import read_image, save_grid, save_png
from crossflow_core.recipe import load_recipe

HERE = Path(__file__).resolve().parent
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION = "a handwritten digit {}"
SIZE, SCALE = 32, 4  # 8x8 digits rendered at 32x32
OVERRIDES = [  # the shapes demo's 32x32 U-Net in place of t2i's 64x64 one; short captions
    f"data.image_size={SIZE}",
    "data.shard_size=1000",
    "source.max_length=16",
    "model.unet_channels=[32,64,128]",
    "model.unet_attention=[false,false,true]",
    "train.sample_every=0",
    "train.log_every=10",
]


def render(digit: np.ndarray) -> np.ndarray:
    """One 8x8 digit (0..16, 16 = full ink) -> uint8 [32, 32, 3]: dark ink on white, bicubic x4."""
    grey = Image.fromarray((1.0 - digit.astype(np.float32) / 16.0), mode="F")
    big = np.asarray(grey.resize((SIZE, SIZE), Image.Resampling.BICUBIC))
    g = np.clip(np.rint(big * 255.0), 0, 255).astype(np.uint8)
    return np.repeat(g[:, :, None], 3, axis=2)


def inverse(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> float [N, 64] in the 8x8 0..16 representation (area average)."""
    grey = images.astype(np.float64).mean(axis=3) / 255.0
    small = grey.reshape(len(images), 8, SCALE, 8, SCALE).mean(axis=(2, 4))
    return (16.0 * (1.0 - small)).reshape(len(images), 64)


def split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(test)


def export_folder(folder: Path, images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> None:
    """PNGs + one captions.jsonl (the layout `crossflow prepare --from FOLDER` reads)."""
    if (folder / "captions.jsonl").is_file():
        return
    lines = []
    for i in index:
        name = f"{i:04d}_{labels[i]}.png"
        save_png(render(images[i]), folder / name)
        lines.append(json.dumps({"file_name": name, "text": CAPTION.format(NAMES[labels[i]])}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


def crossflow(args: list[str], threads: int, log: Path) -> float:
    """Run one `crossflow` CLI command (output appended to `log`); returns its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "crossflow_cli.app", *args]
    print("$ crossflow " + " ".join(args), flush=True)
    t0 = time.time()
    with log.open("a") as fh:
        fh.write("$ crossflow " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        fh.write(f"# wall {time.time() - t0:.1f} s, exit {proc.returncode}\n")
    if proc.returncode != 0:
        sys.exit(f"crossflow {args[0]} failed (exit {proc.returncode}); see {log}")
    return time.time() - t0


def train_segments(log: Path, steps: int) -> list[dict]:
    """Every `crossflow train` call of this scratch folder up to `steps`, from the CLI's own line
    "trained to step N in Xs" (X: the training loop of that call; a resumed run adds a segment)."""
    found = re.findall(r"trained to step (\d+) in (\d+)s", log.read_text()) if log.is_file() else []
    out, prev = [], 0
    for step, seconds in ((int(a), int(b)) for a, b in found):
        if prev < step <= steps:
            out.append({"from": prev, "to": step, "loop_s": seconds})
            prev = step
    return out


def read_prepared(data: Path) -> tuple[np.ndarray, list[str], list[str]]:
    """The PNGs, captions and source file names stored in a prepared dataset's shards."""
    images, captions, files = [], [], []
    for shard in sorted(data.glob("shard-*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key in sorted(members):
            fields = members[key]
            with Image.open(BytesIO(fields["png"])) as im:
                images.append(np.asarray(im.convert("RGB")))
            captions.append(fields["txt"].decode())
            files.append(json.loads(fields["json"])["file"])
    return np.stack(images), captions, files


def read_samples(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """`crossflow sample` output -> uint8 images [N, 32, 32, 3] and the prompt's class [N]."""
    record = json.loads((folder / "samples.json").read_text())
    by_caption = {CAPTION.format(n): c for c, n in enumerate(NAMES)}
    images = np.stack([read_image(folder / s["file"]) for s in record["samples"]])
    return images, np.array([by_caption[s["prompt"]] for s in record["samples"]])


def per_class(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {str(c): float(np.mean(pred[labels == c] == c)) for c in range(10)}


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    while True:
        perm = rng.permutation(n)
        if np.all(perm != np.arange(n)):
            return perm


def diversity(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the per-pixel std (0..16 units) within the class."""
    return float(np.mean([x[labels == c].std(axis=0).mean() for c in range(10)]))


def nn_distance(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    d = ((queries[:, None, :] - refs[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d.min(axis=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=720, help="training steps (train.steps)")
    p.add_argument("--out-dir", default="/tmp/digits_t2i", help="scratch folder: images, data, run, samples")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads, here and in the CLI")
    p.add_argument("--seeds", type=int, default=20, help="generated images per class prompt")
    p.add_argument("--cfg-scale", type=float, default=None, help="main guidance scale (default: recipe's)")
    p.add_argument("--sample-steps", type=int, default=None, help="ODE steps (default: recipe's)")
    p.add_argument("--test-fraction", type=float, default=0.2, help="stratified held-out share")
    p.add_argument("--seed", type=int, default=0, help="split, training (train.seed) and sampling seed")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides (train and prepare)")
    p.add_argument("--no-write", action="store_true", help="do not write benchmarks/digits_t2i.*")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(args.seed)
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "crossflow.log"
    digits = load_digits()
    images, labels = digits.images, digits.target
    train_idx, test_idx = split(labels, args.test_fraction, args.seed)

    # 1. the folders a user would hand to `crossflow prepare`
    export_folder(out / "train_images", images, labels, train_idx)
    export_folder(out / "test_images", images, labels, test_idx)

    # 2. prepare + train through the CLI
    recipe_sets = [*OVERRIDES, f"train.steps={args.steps}", f"train.seed={args.seed}", *args.set]
    sets = [a for s in recipe_sets for a in ("--set", s)]
    data, test_data, run = out / "data", out / "test_data", out / "run"
    if not (data / "manifest.json").is_file():
        crossflow(["prepare", "--recipe", "t2i", "--from", str(out / "train_images"),
                   "--out", str(data), *sets], args.threads, log)
    if not (test_data / "manifest.json").is_file():  # only to check the render -> prepare -> inverse path
        crossflow(["prepare", "--recipe", "t2i", "--from", str(out / "test_images"), "--out", str(test_data),
                   *sets], args.threads, log)
    crossflow(["train", "--recipe", "t2i", "--data", str(data), "--out", str(run), *sets], args.threads, log)
    rows = [r for r in _rows(run) if int(r["step"]) <= args.steps]
    segments = train_segments(log, args.steps)
    complete = segments and segments[-1]["to"] == args.steps
    train_s = sum(seg["loop_s"] for seg in segments) if complete else None
    record_path = HERE / "digits_t2i.json"
    old = json.loads(record_path.read_text()) if record_path.is_file() else {}

    def same_run(rec: dict) -> bool:
        return rec.get("train", {}).get("steps") == args.steps and rec.get("overrides") == recipe_sets

    def earlier_of_this_run(rec: dict) -> bool:  # the same scratch run at fewer / more steps
        return bool(rec) and rec.get("out_dir") == str(out) and not same_run(rec)

    # 3. sample every class prompt with several seeds, at the main scale and unconditionally
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(CAPTION.format(n) for n in NAMES) + "\n")
    recipe_sample = load_recipe("t2i", recipe_sets).sample  # what `crossflow sample` defaults to
    main_cfg = args.cfg_scale if args.cfg_scale is not None else float(recipe_sample.cfg_scale)
    sample_steps = args.sample_steps or int(recipe_sample.steps)
    scales = {"main": main_cfg, "no_guidance": 1.0, "unconditional": 0.0}
    if main_cfg == 1.0:
        del scales["no_guidance"]
    sampled = {}
    sample_s = {}
    for name, scale in scales.items():
        folder = out / f"samples_{name}_cfg{scale:g}_steps{args.steps}"
        if not (folder / "samples.json").is_file():
            sample_s[name] = round(crossflow(
                ["sample", "--model", str(run), "--prompts", str(prompts), "--n", str(args.seeds),
                 "--cfg-scale", str(scale), "--steps", str(sample_steps), "--seed", str(args.seed),
                 "--device", "cpu", "--out", str(folder)], args.threads, log), 1)
        sampled[name] = read_samples(folder)

    # 4. the judge: trained on the real training digits only
    x_train, y_train = images[train_idx].reshape(-1, 64), labels[train_idx]
    x_test, y_test = images[test_idx].reshape(-1, 64), labels[test_idx]
    clf = SVC(kernel="rbf", gamma=0.001, C=10.0).fit(x_train, y_train)
    results: dict = {"chance": 0.1}
    results["real_test"] = {"n": len(y_test), "accuracy": float(clf.score(x_test, y_test)),
                            "per_class": per_class(clf.predict(x_test), y_test)}
    png, captions, files = read_prepared(test_data)
    by_caption = {CAPTION.format(n): c for c, n in enumerate(NAMES)}
    y_round = np.array([by_caption[c] for c in captions])
    x_round = inverse(png)
    expected = np.array([int(Path(f).stem.split("_")[1]) for f in files])
    if not np.array_equal(expected, y_round):
        sys.exit("prepared test captions do not match their files' labels")
    src = images[[int(Path(f).stem.split("_")[0]) for f in files]].reshape(-1, 64)
    results["real_test_roundtrip"] = {
        "n": len(y_round), "accuracy": float(clf.score(x_round, y_round)),
        "mean_abs_error_0_16": float(np.abs(x_round - src).mean()),
        "prepare_identity": bool(np.array_equal(png, np.stack([render(s.reshape(8, 8)) for s in src]))),
    }
    rng = np.random.default_rng(args.seed)
    perm = derangement(10, rng)
    real_train_nn = nn_distance(x_test, x_train)
    for name, (gen, y_gen) in sampled.items():
        x_gen = inverse(gen)
        pred = clf.predict(x_gen)
        results[f"generated_{name}"] = {
            "cfg_scale": scales[name], "n": len(y_gen), "accuracy": float(np.mean(pred == y_gen)),
            "per_class": per_class(pred, y_gen),
            "predicted_histogram": np.bincount(pred, minlength=10).tolist(),
            "diversity_0_16": diversity(x_gen, y_gen),
            "nn_to_train_median": float(np.median(nn_distance(x_gen, x_train))),
        }
        if name == "main":
            results["generated_main_shuffled_prompts"] = {
                "note": "the main images scored against a fixed derangement of the prompt classes",
                "permutation": perm.tolist(), "accuracy": float(np.mean(pred == perm[y_gen])),
            }
    results["real_test_stats"] = {"diversity_0_16": diversity(x_test, y_test),
                                  "nn_to_train_median": float(np.median(real_train_nn))}
    gen, y_gen = sampled["main"]
    cols = min(args.seeds, 12)
    strip = np.concatenate([gen[y_gen == c][:cols] for c in range(10)])
    strip_path = out / "samples.png"
    save_grid(torch.from_numpy(strip).permute(0, 3, 1, 2).float() / 255, strip_path, nrow=cols)

    last = rows[-1] if rows else {}
    record = {
        "dataset": "sklearn.datasets.load_digits (1797 8x8, 0..16)",
        "split": {"train": len(train_idx), "test": len(test_idx), "test_fraction": args.test_fraction,
                  "stratified": True, "seed": args.seed},
        "rendering": "ink 0..16 -> grey 1 - v/16, PIL bicubic x4 to 32x32, RGB PNG; inverse: channel "
                     "mean, 4x4 area average, 16 * (1 - grey)",
        "captions": CAPTION.format("<zero..nine>") + " (captions.jsonl)",
        "recipe": "t2i",
        "overrides": recipe_sets,
        "train": {"steps": args.steps, "wall_s": train_s,
                  "s_per_step": round(train_s / args.steps, 3) if train_s else None,
                  "segments": segments, "final_log_row": last},
        "sample": {"seeds_per_class": args.seeds, "steps": sample_steps, "solver": recipe_sample.solver,
                   "scales": scales,
                   "wall_s": sample_s or (old.get("sample", {}).get("wall_s") if same_run(old) else None)},
        "out_dir": str(out),
        "classifier": "sklearn SVC(rbf, gamma=0.001, C=10) on the real training digits (8x8, 0..16)",
        "results": results,
        "torch": torch.__version__,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, {args.threads} thread(s) used",
        "command": f"OMP_NUM_THREADS={args.threads} python benchmarks/digits_t2i.py --steps {args.steps} "
                   f"--threads {args.threads} --seeds {args.seeds}"
                   + (f" --cfg-scale {args.cfg_scale:g}" if args.cfg_scale is not None else "")
                   + "".join(f" --set {s}" for s in args.set),
    }
    history = dict(old.get("history", {})) if earlier_of_this_run(old) or same_run(old) else {}
    if earlier_of_this_run(old):
        history[str(old["train"]["steps"])] = summary(old)
    history[str(args.steps)] = summary(record)
    record["history"] = dict(sorted(history.items(), key=lambda kv: int(kv[0])))
    print(json.dumps(results, indent=1))
    if args.no_write:
        return
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    (HERE / "digits_t2i_samples.png").write_bytes(strip_path.read_bytes())
    write_markdown(record)


def summary(rec: dict) -> dict:
    """One line of the steps history: what another --steps (same scratch run, resumed) gave."""
    r = rec["results"]
    return {"train_s": rec["train"]["wall_s"], "seeds_per_class": rec["sample"]["seeds_per_class"],
            "generated": {f"cfg {r[k]['cfg_scale']:g}": r[k]["accuracy"] for k in
                          ("generated_main", "generated_no_guidance", "generated_unconditional") if k in r},
            "shuffled_prompts": r["generated_main_shuffled_prompts"]["accuracy"],
            "nn_to_train_median": r["generated_main"]["nn_to_train_median"],
            "fm_loss": rec["train"]["final_log_row"].get("fm")}


def _rows(run: Path) -> list[dict]:
    """The training log's rows (RUN/log.csv), [] before the first run."""
    path = run / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def write_markdown(rec: dict) -> None:
    r = rec["results"]
    gap = r["real_test"]["accuracy"] - r["real_test_roundtrip"]["accuracy"]
    mapping_caveat = "" if abs(gap) < 0.02 else f" (but note the {pct(abs(gap))} gap)"
    gd, rd = r["generated_main"]["diversity_0_16"], r["real_test_stats"]["diversity_0_16"]
    variety = "about as much as" if abs(gd - rd) < 0.15 * rd else ("more than" if gd > rd else "less than")
    gn, rn = r["generated_main"]["nn_to_train_median"], r["real_test_stats"]["nn_to_train_median"]
    copies = ": no sign of copied training images"
    copies = copies if gn >= rn else ": closer than real digits, look for copies"
    gens = [k for k in ("generated_main", "generated_no_guidance", "generated_unconditional") if k in r]
    head = "| digit | " + " | ".join(
        f"generated, cfg {r[k]['cfg_scale']:g}" for k in gens) + " | real held-out |"
    lines = [
        "# Text -> image on handwritten digits (scikit-learn `load_digits`), judged by a classifier",
        "",
        "Generated by `benchmarks/digits_t2i.py`. The real 8x8 digits (0..16) are rendered as 32x32 PNGs "
        "(dark ink on white, PIL bicubic x4), captioned \"a handwritten digit seven\" (`captions.jsonl`), "
        f"and split stratified: {rec['split']['train']} to train on, {rec['split']['test']} held out "
        f"(seed {rec['split']['seed']}). CrossFlow is trained with the real CLI (`crossflow prepare/train "
        f"--recipe t2i`, overrides `{' '.join(rec['overrides'])}`) for {rec['train']['steps']} steps "
        f"({rec['train']['wall_s']} s of training loop summed over {len(rec['train']['segments'])} "
        f"`crossflow train` call(s), {rec['train']['s_per_step']} s/step, torch {rec['torch']}, "
        f"{rec['threads']} thread), then `crossflow sample` draws {rec['sample']['seeds_per_class']} seeds "
        f"per class prompt ({rec['sample']['steps']} {rec['sample']['solver']} steps). "
        f"The judge is {rec['classifier']}; generated images are mapped back to 8x8 by the inverse of "
        "the rendering (channel mean, 4x4 area average).",
        "",
        "| measure | accuracy |",
        "|---|---|",
        f"| classifier on the real held-out digits (ceiling) | {pct(r['real_test']['accuracy'])} |",
        f"| same digits rendered -> PNG -> `crossflow prepare` -> inverse | "
        f"{pct(r['real_test_roundtrip']['accuracy'])} (mean abs. error "
        f"{r['real_test_roundtrip']['mean_abs_error_0_16']:.2f} of 16) |",
    ]
    for k in gens:
        lines.append(f"| **generated, cfg {r[k]['cfg_scale']:g}**, classified as the prompt's digit | "
                     f"**{pct(r[k]['accuracy'])}** |" if k == "generated_main" else
                     f"| generated, cfg {r[k]['cfg_scale']:g}, classified as the prompt's digit | "
                     f"{pct(r[k]['accuracy'])} |")
    lines += [
        f"| baseline: the cfg {r['generated_main']['cfg_scale']:g} images against shuffled prompts | "
        f"{pct(r['generated_main_shuffled_prompts']['accuracy'])} |",
        f"| chance | {pct(r['chance'])} |",
        "",
        head,
        "|---|" + "---|" * (len(gens) + 1),
    ]
    for c in range(10):
        lines.append(f"| {c} | " + " | ".join(pct(r[k]["per_class"][str(c)]) for k in gens)
                     + f" | {pct(r['real_test']['per_class'][str(c)])} |")
    lines += [
        "",
        "| | " + " | ".join(f"generated, cfg {r[k]['cfg_scale']:g}" for k in gens) + " | real held-out |",
        "|---|" + "---|" * (len(gens) + 1),
        "| within-class pixel std (0..16) | " + " | ".join(f"{r[k]['diversity_0_16']:.2f}" for k in gens)
        + f" | {r['real_test_stats']['diversity_0_16']:.2f} |",
        "| median distance to the nearest training digit | "
        + " | ".join(f"{r[k]['nn_to_train_median']:.1f}" for k in gens)
        + f" | {r['real_test_stats']['nn_to_train_median']:.1f} |",
        "",
        "Accuracy by training length (the same run continued: `crossflow train` resumes):",
        "",
        "| steps | train loop (s) | final L_FM | generated accuracy | shuffled prompts "
        "| median NN distance |",
        "|---|---|---|---|---|---|",
        *[f"| {steps} | {h['train_s']} | {float(h['fm_loss'] or 'nan'):.4f} | "
          + ", ".join(f"{k}: {pct(v)}" for k, v in h["generated"].items())
          + f" | {pct(h['shuffled_prompts'])} | {h['nn_to_train_median']:.1f} |"
          for steps, h in rec["history"].items()],
        "",
        "![samples](digits_t2i_samples.png)",
        "",
        f"Rows: the prompts \"a handwritten digit zero\" ... \"nine\"; columns: seeds (cfg "
        f"{r['generated_main']['cfg_scale']:g}).",
        "",
        "What it means. The judge scores the real held-out digits, and the same digits sent through "
        "the rendering, `crossflow prepare` and the inverse mapping, alike "
        f"({pct(r['real_test']['accuracy'])} vs {pct(r['real_test_roundtrip']['accuracy'])}), so a miss on "
        f"a generated image is the generator's, not the mapping's{mapping_caveat}. "
        f"{pct(r['generated_main']['accuracy'])} of the generated images are read as the digit their "
        f"prompt asks for, against {pct(r['chance'])} chance and "
        f"{pct(r['generated_main_shuffled_prompts']['accuracy'])} for the same images scored against "
        "shuffled prompts. The cfg 0 row is not a text-free baseline: in CrossFlow the source z0 is "
        "the prompt's text latent, so even the unconditional velocity starts from the text; the gap "
        "between cfg 0 and the guided rows is what guidance adds on top. Within a class the generated "
        f"digits vary {variety} the real held-out ones (pixel std {gd:.2f} vs {rd:.2f}), and their "
        f"median distance to the nearest training digit is {gn:.1f} against {rn:.1f} for a real "
        f"held-out digit (L2 in 0..16 units){copies}. The training lengths are short CPU runs (one "
        "thread on a shared 2-core machine); compare the steps table for the trend.",
        "",
        "Reproduce (CPU, scikit-learn from the `bench` extra, everything offline; each command "
        "continues the run of the one before in the same `--out-dir`, /tmp/digits_t2i by default, and "
        "the steps table collects them; the README states that a resumed run ends with the same "
        "weights as an uninterrupted one):",
        "",
        "```bash",
        'pip install -e ".[bench]"',
        *[rec["command"].replace(f"--steps {rec['train']['steps']} ", f"--steps {k} ")
          for k in rec["history"] if int(k) < rec["train"]["steps"]],
        rec["command"],
        "```",
        "",
    ]
    (HERE / "digits_t2i.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
