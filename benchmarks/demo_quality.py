"""What `crossflow demo` draws, before and after a change: the demo's own check and GenEval.

For each trained shapes run given as NAME=RUN (e.g. the demo's demo/run), it samples with the
run's recipe settings and reports
- the demo's single-object check over `--seeds` seeds: the asked colour and shape *and no other
  object* (`score_alone`), the looser GenEval `colors` rule (extra objects allowed) and the share
  of images holding more than one object;
- `crossflow eval shapes`: GenEval-style accuracy per category (single object, two objects,
  counting, colours, position, attribute binding) on the held-out test prompts;
- the run's training wall time and steps (from RUN/log.csv and the demo's report.json if present);
- with `--temperatures`, the demo's check at each sampling temperature (z0 = mu + T sigma eps) and
  what a lower temperature costs in diversity: the spread over seeds of where the single object
  is drawn and how large (std of its centre x, y and of its width, pixels, mean over the prompts),
  beside the same spread in the shapes world's own images of those prompts.

    python benchmarks/demo_quality.py before=/tmp/demo_before/run after=demo/run \
        --out benchmarks/demo_quality

writes benchmarks/demo_quality.json and .md. Runs on CPU or GPU.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from crossflow_core.data.shapes import render, scene_for
from crossflow_core.eval.generate import SamplingOptions
from crossflow_core.eval.shapes_checker import detect
from crossflow_core.eval.shapes_demo import demo_samples, single_object_specs
from crossflow_core.eval.tasks import ShapesRequest, evaluate_shapes
from crossflow_core.image_files import to_uint8
from crossflow_core.pipeline import load_pipeline


def _training_facts(run: Path) -> dict:
    facts: dict = {}
    log = run / "log.csv"
    if log.is_file():
        rows = list(csv.DictReader(log.open()))
        if rows:
            last = rows[-1]
            facts["steps"] = int(last["step"])
            facts["last_losses"] = {k: float(last[k]) for k in ("fm", "enc", "kl") if last.get(k)}
            for key in ("ve_mu_std", "ve_sigma"):
                if last.get(key):
                    facts[key] = float(last[key])
    report = run.parent / "samples" / "report.json"
    if report.is_file():
        facts["demo_wall_time_s"] = json.loads(report.read_text()).get("wall_time_s")
    return facts


def spread(images: np.ndarray, seeds: int) -> dict[str, float]:
    """uint8 [seeds * 18, H, W, 3], seed-major over the 18 single-object prompts -> the std over
    seeds of the largest detected object's centre (x, y) and width, in pixels, mean over prompts."""
    n = len(single_object_specs())
    stats = {"centre_x_std": [], "centre_y_std": [], "width_std": []}
    for i in range(n):
        found = [max(detect(images[k * n + i]), key=lambda d: d.area, default=None) for k in range(seeds)]
        found = [d for d in found if d is not None]
        if len(found) < 2:
            continue
        stats["centre_x_std"].append(np.std([d.cx for d in found]))
        stats["centre_y_std"].append(np.std([d.cy for d in found]))
        stats["width_std"].append(np.std([d.width for d in found]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in stats.items()}


def data_spread(seeds: int, image_size: int = 32) -> dict[str, float]:
    """`spread` of the shapes world's own renders of the 18 prompts (seeds scenes each)."""
    specs = single_object_specs()
    rng = np.random.default_rng(0)
    images = [
        render(scene_for(specs[i], rng, image_size), image_size)
        for _ in range(seeds)
        for i in range(len(specs))
    ]
    return spread(np.stack(images), seeds)


def temperature_rows(pipe, temperatures: list[float], seeds: int, steps: int | None = None) -> list[dict]:
    """The demo's check and the spread of the drawn objects at each sampling temperature."""
    rows = []
    prompts = [s.prompt for s in single_object_specs()] * seeds
    for temperature in temperatures:
        settings = pipe.defaults.with_overrides(seed=0, temperature=temperature, steps=steps)
        with tempfile.TemporaryDirectory() as tmp:
            demo = demo_samples(pipe, settings, Path(tmp), seeds)
        images = to_uint8(pipe.generate(prompts, settings))  # the same seeds as the check's
        rows.append(
            {
                "temperature": temperature,
                **{
                    k: demo[k]
                    for k in (
                        "single_object_accuracy",
                        "correct",
                        "total",
                        "colour_and_shape_extra_objects_allowed",
                        "more_than_one_object",
                    )
                },
                "spread": spread(images, seeds),
            }
        )
    return rows


def measure(
    name: str,
    run: Path,
    seeds: int,
    per_category: int,
    n_samples: int,
    temperatures: list[float],
    steps: int | None = None,
) -> dict:
    """One run's demo check, GenEval-style categories and temperature rows; `steps`: ODE steps
    instead of the run's recipe's."""
    pipe = load_pipeline(run)
    settings = pipe.defaults.with_overrides(seed=0, steps=steps)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        demo = demo_samples(pipe, settings, Path(tmp), seeds)
    demo_s = time.time() - started
    request = ShapesRequest(
        model=str(run), per_category=per_category, n_samples=n_samples, sampling=SamplingOptions(seed=0, steps=steps)
    )
    geneval = {
        r.metric.split("/", 1)[-1] if "/" in r.metric else "overall": r.value
        for r in evaluate_shapes(request)
    }
    return {
        "name": name,
        "run": str(run),
        "recipe": pipe.config.recipe.to_dict(),
        "training": _training_facts(run),
        "demo_check": {
            k: demo[k]
            for k in (
                "single_object_accuracy",
                "correct",
                "total",
                "seeds",
                "colour_and_shape_extra_objects_allowed",
                "more_than_one_object",
                "right_colour_present",
                "per_prompt",
            )
        },
        "demo_check_sampling_s": round(demo_s, 1),
        "geneval_shapes": geneval,
        "geneval_settings": {"per_category": per_category, "n_samples": n_samples},
        "sampling": settings.settings(),
        "temperatures": temperature_rows(pipe, temperatures, seeds, steps) if temperatures else [],
    }


def markdown(results: list[dict]) -> str:
    cats = [k for k in results[0]["geneval_shapes"] if k != "overall"]
    head = [
        "run",
        "steps",
        "ODE steps",
        "single object alone",
        "extra objects allowed",
        "> 1 object",
        "GenEval overall",
        *cats,
    ]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in results:
        d, g = r["demo_check"], r["geneval_shapes"]
        row = [
            r["name"],
            str(r["training"].get("steps", "?")),
            str(r.get("sampling", r["recipe"]["sample"])["steps"]),
            f"{d['single_object_accuracy']:.3f} ({d['correct']}/{d['total']})",
            f"{d['colour_and_shape_extra_objects_allowed']:.3f}",
            f"{d['more_than_one_object']:.3f}",
            f"{g['overall']:.3f}",
            *(f"{g[c]:.3f}" for c in cats),
        ]
        lines.append("| " + " | ".join(row) + " |")
    rows = [(r["name"], t) for r in results for t in r.get("temperatures", [])]
    if rows:
        data = data_spread(results[0]["demo_check"]["seeds"])
        lines += [
            "",
            "Sampling temperature (z0 = mu + T sigma eps; the demo's check, same seeds):",
            "",
            "| run | T | single object alone | extra objects allowed | > 1 object | "
            "std of centre x / y (px) | std of width (px) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, t in rows:
            sp = t["spread"]
            lines.append(
                f"| {name} | {t['temperature']} | {t['single_object_accuracy']:.3f} ({t['correct']}/{t['total']}) | "
                f"{t['colour_and_shape_extra_objects_allowed']:.3f} | {t['more_than_one_object']:.3f} | "
                f"{sp['centre_x_std']:.1f} / {sp['centre_y_std']:.1f} | {sp['width_std']:.1f} |"
            )
        lines.append(
            f"| the shapes world's own images | | | | | {data['centre_x_std']:.1f} / "
            f"{data['centre_y_std']:.1f} | {data['width_std']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR, in table order")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--per-category", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("demo_quality"))
    parser.add_argument("--append", action="store_true", help="keep the other rows of OUT.json")
    parser.add_argument("--temperatures", default="", help="e.g. 1,0.5,0.3: the check at each")
    parser.add_argument("--steps", type=int, help="ODE steps (default: each run's recipe's)")
    args = parser.parse_args()
    results = []
    if args.append and args.out.with_suffix(".json").is_file():  # keep the rows measured before
        names = {item.partition("=")[0] for item in args.runs}
        kept = json.loads(args.out.with_suffix(".json").read_text())["results"]
        results = [r for r in kept if r["name"] not in names]
    for item in args.runs:
        name, _, run = item.partition("=")
        temperatures = [float(t) for t in args.temperatures.split(",") if t.strip()]
        results.append(
            measure(name, Path(run), args.seeds, args.per_category, args.n_samples, temperatures, args.steps)
        )
        print(json.dumps({k: results[-1][k] for k in ("name", "demo_check", "geneval_shapes")}), flush=True)
    data = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "results": results,
    }
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
