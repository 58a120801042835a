"""Captioning benchmark on the shapes world's held-out split: CrossFlow (`caption_shapes`) against the
most frequent training caption and nearest-neighbour retrieval (paper Table 4, at CPU scale), plus
the text autoencoder's own round trip.

    python benchmarks/caption_compare.py --out /tmp/capbench            # the recipe's steps
    python benchmarks/caption_compare.py --target-steps 300 --steps 1500 --test-count 500

Everything runs through the user-facing code: `prepare_dataset`, `train` (target phase, then
joint), `run_caption_eval` (what `crossflow eval caption --data shapes` runs: BLEU-1..4, METEOR,
ROUGE-L, CIDEr, scene truth, both baselines), and the exported text autoencoder for the round trip
(exact match of decode(encode(caption)) against what the tokenizer keeps of the caption, and BLEU
against the caption). Writes benchmarks/caption_compare.json, caption_compare.md and
caption_examples.png (rows: image | CrossFlow's caption | reference | nearest neighbour's).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.data.shapes import ShapesWorld
from crossflow_core.eval.caption_eval import (
    CaptionEvalRequest,
    nearest_neighbour_captions,
    run_caption_eval,
    shapes_training,
)
from crossflow_core.eval.caption_metrics import score_captions
from crossflow_core.pipeline import load_pipeline
from crossflow_core.recipe import load_recipe
from crossflow_core.train.loop import train

HERE = Path(__file__).resolve().parent
SHOWN = ("bleu1", "bleu4", "meteor", "rouge_l", "cider")
SCENE = (
    "scene_parsed",
    "scene_shapes",
    "scene_count",
    "scene_colours",
    "scene_relation",
    "scene_all_correct",
)


def round_trip(pipe, captions: list[str]) -> dict:
    """The text autoencoder alone: decode(encode(c)) for each distinct caption."""
    codec = pipe.target
    decoded = codec.decode(codec.encode_latents(captions))
    reachable = codec.reachable(captions)
    exact = float(np.mean([a == b for a, b in zip(decoded, reachable, strict=True)]))
    bleu = score_captions(
        dict(enumerate(decoded)), {i: [c] for i, c in enumerate(captions)}, metrics=["bleu"]
    )
    return {
        "n": len(captions),
        "exact_match": exact,
        "bleu4": bleu.bleu4,
        "examples_wrong": [[c, d] for c, d, r in zip(captions, decoded, reachable, strict=True) if d != r][
            :5
        ],
    }


def examples(images, captions, references, nn, path: Path, rows: int = 8) -> None:
    """image (x4, nearest) | predicted | reference | nearest neighbour, one row per test image."""
    font = ImageFont.load_default()
    scale, w = 4, 1100
    side = images[0].shape[0] * scale
    canvas = Image.new("RGB", (w, 24 + rows * (side + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    for x, title in (
        (side + 16, "CrossFlow"),
        (side + 16 + 330, "reference"),
        (side + 16 + 660, "nearest neighbour"),
    ):
        draw.text((x, 6), title, fill="black", font=font)
    for i in range(rows):
        y = 24 + i * (side + 8)
        canvas.paste(Image.fromarray(images[i]).resize((side, side), Image.Resampling.NEAREST), (4, y))
        ok = captions[i] == references[i]
        draw.text(
            (side + 16, y + side // 2 - 6), captions[i], fill=(0, 120, 0) if ok else (180, 0, 0), font=font
        )
        draw.text((side + 16 + 330, y + side // 2 - 6), references[i], fill="black", font=font)
        draw.text((side + 16 + 660, y + side // 2 - 6), nn[i], fill="gray", font=font)
    canvas.save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="total train.steps (default: the recipe's)")
    p.add_argument(
        "--target-steps", type=int, default=None, help="train.target_steps (default: the recipe's)"
    )
    p.add_argument("--num-samples", type=int, default=None, help="data.num_samples (default: the recipe's)")
    p.add_argument("--test-count", type=int, default=500)
    p.add_argument("--out", default="/tmp/capbench")
    p.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    over = [*args.set]
    for key, value in (
        ("train.steps", args.steps),
        ("train.target_steps", args.target_steps),
        ("data.num_samples", args.num_samples),
    ):
        if value is not None:
            over.append(f"{key}={value}")
    recipe = load_recipe("caption_shapes", over)
    out = Path(args.out)
    data, run = out / "data", out / "run"
    t0 = time.time()
    if not (data / "manifest.json").is_file():
        prepare_dataset(recipe.data, recipe.source, recipe.target, data)
    prepare_s = time.time() - t0
    t0 = time.time()
    result = train(recipe, data, run)
    train_s = time.time() - t0
    log = [line.split(",") for line in (run / "log.csv").read_text().splitlines()]
    rows = [dict(zip(log[0], r)) for r in log[1:]]
    last_target = [r for r in rows if r["phase"] == "target"][-1]

    t0 = time.time()
    report = run_caption_eval(CaptionEvalRequest(run, "shapes", split="test", count=args.test_count))
    eval_s = time.time() - t0
    methods: dict[str, dict] = {}
    for r in report.results:
        entry = methods.setdefault(r.settings["method"], {})
        entry[r.metric] = r.value
        if "unavailable" in r.settings and r.metric in ("meteor", "spice"):
            entry[f"{r.metric}_unavailable"] = r.settings["unavailable"]
    pipe = load_pipeline(run, "cpu")
    world = ShapesWorld(recipe.data.image_size, recipe.data.seed)
    held_out = sorted({world.sample(i, "test").caption for i in range(args.test_count)})
    seen = set(shapes_training(recipe.data.image_size, recipe.data.seed, recipe.data.num_samples).captions)
    unseen = [c for c in held_out if c not in seen]
    trips = {
        "held_out_all": round_trip(pipe, held_out),
        "held_out_unseen_in_training": round_trip(pipe, unseen) if unseen else None,
        "training_captions": round_trip(pipe, sorted(seen)),
    }
    train_pairs = shapes_training(recipe.data.image_size, recipe.data.seed, recipe.data.num_samples)
    nn = nearest_neighbour_captions(train_pairs, report.data.images[:8])
    refs = [report.data.references[n][0] for n in report.data.names]
    examples(report.data.images, report.captions, refs, nn, HERE / "caption_examples.png")
    record = {
        "recipe": "caption_shapes",
        "overrides": over,
        "steps": recipe.train.steps,
        "target_steps": recipe.train.target_steps,
        "num_samples": recipe.data.num_samples,
        "max_length": recipe.target.max_length,
        "test": report.data.description,
        "sample": report.results[0].settings.get("steps"),
        "cfg_scale": report.results[0].settings.get("cfg_scale"),
        "tokenizer": report.results[0].settings.get("tokenizer"),
        "methods": methods,
        "autoencoder_round_trip": trips,
        "target_phase_end": {
            "loss": float(last_target["target"]),
            "token_accuracy": float(last_target["target_acc"]),
        },
        "final_losses": result.losses,
        "wall_s": {"prepare": round(prepare_s, 1), "train": round(train_s, 1), "eval": round(eval_s, 1)},
        "machine": f"{torch.get_num_threads()} CPU thread(s), shared machine",
        "params": {
            n: sum(p.numel() for p in m.parameters())
            for n, m in (
                ("image_ve", pipe.ve),
                ("flow", pipe.flow),
                ("text_autoencoder", pipe.target.trainable()),
            )
        },
    }
    (HERE / "caption_compare.json").write_text(json.dumps(record, indent=2) + "\n")
    write_markdown(record)


def _fmt(v, scale: float = 100.0) -> str:
    return "—" if v is None else f"{v * scale:.1f}"


def write_markdown(rec: dict) -> None:
    m, trips = rec["methods"], rec["autoencoder_round_trip"]
    meteor = next((x.get("meteor_unavailable") for x in m.values() if x.get("meteor") is None), None)
    lines = [
        "# Captioning: CrossFlow against retrieval baselines (shapes world, held-out split)",
        "",
        f"Generated by `benchmarks/caption_compare.py`: recipe `caption_shapes` ({rec['num_samples']} "
        f"training samples, 32 px), {rec['target_steps']} text-autoencoder steps then "
        f"{rec['steps'] - rec['target_steps']} joint steps (batch 64), sampling {rec['sample']} Euler steps, "
        f"CFG scale {rec['cfg_scale']}; {rec['test']['count']} images of the held-out `test` split (one "
        f"reference each: the world's caption). Wall time ({rec['machine']}): prepare "
        f"{rec['wall_s']['prepare']} s, train {rec['wall_s']['train']} s, eval {rec['wall_s']['eval']} s. "
        f"Tokenizer: {rec['tokenizer']}. Caption metrics x100 "
        "(pycocoevalcap; CIDEr-D); SPICE unavailable offline"
        + (f"; METEOR unavailable: {meteor}" if meteor else "")
        + ".",
        "",
        "| method | BLEU-1 | BLEU-4 | METEOR | ROUGE-L | CIDEr | parsed | shapes | count | colours "
        "| relation | all correct |",
        "|---|" + "---|" * 11,
    ]
    for name, label in (
        ("crossflow", "CrossFlow"),
        ("most_frequent", "most frequent caption"),
        ("nearest_neighbour", "nearest neighbour (16x16 pixels)"),
    ):
        r = m[name]
        lines.append(
            f"| {label} | "
            + " | ".join(_fmt(r.get(k)) for k in SHOWN)
            + " | "
            + " | ".join(f"{r[k]:.3f}" for k in SCENE)
            + " |"
        )
    lines += [
        "",
        "Scene truth (fractions): the caption parsed with the shapes vocabulary and checked against the "
        "rendered scene (`crossflow_core/eval/caption_scene.py`): shapes (multiset), count, colours (every "
        "named colour on the right shape, as many colours as the world's caption names), relation (a stated "
        "relation holds; none stated only where the world's caption states none).",
        "",
        "## The text autoencoder alone (decode(encode(caption)))",
        "",
        f"End of the target phase: loss {rec['target_phase_end']['loss']:.4f}, token accuracy "
        f"{rec['target_phase_end']['token_accuracy']:.4f} (real tokens, training batch).",
        "",
        "| captions | n | exact match | BLEU-4 |",
        "|---|---|---|---|",
    ]
    for key, label in (
        ("training_captions", "training captions (distinct)"),
        ("held_out_all", "held-out split captions (distinct)"),
        ("held_out_unseen_in_training", "held-out captions never in training"),
    ):
        t = trips.get(key)
        if t:
            lines.append(f"| {label} | {t['n']} | {t['exact_match']:.3f} | {_fmt(t['bleu4'])} |")
    lines += [
        "",
        f"Exact match is against what the tokenizer keeps of the caption (lower case, {rec['max_length']} "
        "positions).",
        "",
        f"Parameters: {', '.join(f'{k} {v:,}' for k, v in rec['params'].items())}.",
        "",
        "![examples](caption_examples.png)",
        "",
        "Rows: the test image (x4) | CrossFlow's caption (green: equal to the reference) | reference | "
        "nearest neighbour's caption.",
        "",
    ]
    (HERE / "caption_compare.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
