"""What `crossflow demo` draws, before and after a change: the demo's own check and GenEval.

For each trained shapes run given as NAME=RUN (e.g. the demo's demo/run), it samples with the
run's recipe settings and reports
- the demo's single-object check over `--seeds` seeds: the asked colour and shape *and no other
  object* (`score_alone`), the looser GenEval `colors` rule (extra objects allowed) and the share
  of images holding more than one object;
- `crossflow eval shapes`: GenEval-style accuracy per category (single object, two objects,
  counting, colours, position, attribute binding) on the held-out test prompts;
- the run's training wall time and steps (from RUN/log.csv and the demo's report.json if present).

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

import torch

from crossflow_core.eval.generate import SamplingOptions
from crossflow_core.eval.shapes_demo import demo_samples
from crossflow_core.eval.tasks import ShapesRequest, evaluate_shapes
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


def measure(name: str, run: Path, seeds: int, per_category: int, n_samples: int) -> dict:
    pipe = load_pipeline(run)
    settings = pipe.defaults.with_overrides(seed=0)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        demo = demo_samples(pipe, settings, Path(tmp), seeds)
    demo_s = time.time() - started
    request = ShapesRequest(
        model=str(run), per_category=per_category, n_samples=n_samples, sampling=SamplingOptions(seed=0)
    )
    geneval = {r.metric.split("/", 1)[-1] if "/" in r.metric else "overall": r.value
               for r in evaluate_shapes(request)}
    return {
        "name": name,
        "run": str(run),
        "recipe": pipe.config.recipe.to_dict(),
        "training": _training_facts(run),
        "demo_check": {k: demo[k] for k in (
            "single_object_accuracy", "correct", "total", "seeds", "colour_and_shape_extra_objects_allowed",
            "more_than_one_object", "right_colour_present", "per_prompt")},
        "demo_check_sampling_s": round(demo_s, 1),
        "geneval_shapes": geneval,
        "geneval_settings": {"per_category": per_category, "n_samples": n_samples},
    }


def markdown(results: list[dict]) -> str:
    cats = [k for k in results[0]["geneval_shapes"] if k != "overall"]
    head = ["run", "steps", "single object alone", "extra objects allowed", "> 1 object",
            "GenEval overall", *cats]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in results:
        d, g = r["demo_check"], r["geneval_shapes"]
        row = [r["name"], str(r["training"].get("steps", "?")),
               f"{d['single_object_accuracy']:.3f} ({d['correct']}/{d['total']})",
               f"{d['colour_and_shape_extra_objects_allowed']:.3f}", f"{d['more_than_one_object']:.3f}",
               f"{g['overall']:.3f}", *(f"{g[c]:.3f}" for c in cats)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="NAME=RUN_DIR, in table order")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--per-category", type=int, default=16)
    parser.add_argument("--n-samples", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("demo_quality"))
    args = parser.parse_args()
    results = []
    for item in args.runs:
        name, _, run = item.partition("=")
        results.append(measure(name, Path(run), args.seeds, args.per_category, args.n_samples))
        print(json.dumps({k: results[-1][k] for k in ("name", "demo_check", "geneval_shapes")}), flush=True)
    data = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
