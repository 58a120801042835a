"""`crossflow demo`: the main job on the embedded default, prepare -> train -> sample -> check.

Uses the `shapes` recipe (the shapes world + the embedded MiniLM text encoder) and leaves
OUT/data (shards), OUT/run (checkpoints, logs, RUN/model) and OUT/samples (PNGs, grid, a
colour-and-shape check of every single-object prompt). Re-running continues where it stopped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import SetOption, console, user_errors
from crossflow_cli.generate_cmd import save_png, slug
from crossflow_cli.train_cmd import run_training


def single_object_specs():
    """One `colors` prompt per colour x shape: the image must show that shape in that colour."""
    from crossflow_core.data.shapes import COLOURS, SHAPES, PromptSpec, Requirement

    def article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    return [
        PromptSpec(f"{article(c)} {c} {s}", "colors", (Requirement(shape=s, count=1, colour=c),))
        for c in COLOURS
        for s in SHAPES
    ]


def demo_prompts() -> list[str]:
    return [
        "a red circle to the left of a blue square",
        "a green triangle above a yellow circle",
        "two purple squares",
        "a circle and a triangle",
    ]


@user_errors
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, run and samples.")] = Path(
        "demo"
    ),
    set_: SetOption = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    from crossflow_core.data.manifest import Manifest
    from crossflow_core.data.prepare import prepare_dataset
    from crossflow_core.eval.shapes_checker import detect, score
    from crossflow_core.recipe import load_recipe
    from crossflow_core.sample import CrossFlowPipeline, SampleSettings

    started = time.time()
    overrides = list(set_ or [])
    recipe = load_recipe("shapes", overrides)
    data_dir, run_dir, sample_dir = out / "data", out / "run", out / "samples"

    if (data_dir / "manifest.json").is_file():
        console.print(f"[1/3] data: reusing {data_dir} ({Manifest.load(data_dir).num_samples} samples)")
    else:
        console.print(
            f"[1/3] data: generating {recipe.data.num_samples} shapes-world samples into {data_dir}"
        )
        with console.status("preparing shards and MiniLM token embeddings"):
            prepare_dataset(recipe.data, recipe.text_encoder, recipe.latents, data_dir)
    t_prep = time.time() - started

    console.print(f"[2/3] train: {recipe.train.steps} steps into {run_dir}")
    run_training("shapes", data_dir, run_dir, overrides)
    t_train = time.time() - started - t_prep

    console.print(f"[3/3] sample: single-object prompts and a few compositions into {sample_dir}")
    pipe = CrossFlowPipeline.load(run_dir)
    settings = SampleSettings(
        steps=recipe.sample.steps, solver=recipe.sample.solver, cfg_scale=recipe.sample.cfg_scale, seed=seed
    )
    specs = single_object_specs()
    prompts = [s.prompt for s in specs] + demo_prompts()
    images = pipe.generate(prompts, settings)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        save_png(image, sample_dir / f"{i:02d}_{slug(prompt)}.png")
    save_png(images[: len(specs)], sample_dir / "single_objects.png", nrow=3)
    save_png(images[len(specs) :], sample_dir / "compositions.png", nrow=len(prompts) - len(specs))
    uint8 = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    results = [score(uint8[i], spec) for i, spec in enumerate(specs)]
    correct = sum(r.correct for r in results)
    colour_ok = sum(
        any(d.colour == spec.include[0].colour for d in detect(uint8[i])) for i, spec in enumerate(specs)
    )
    report = {
        "single_object_colour_and_shape_accuracy": correct / len(specs),
        "correct": correct,
        "single_object_right_colour_present": colour_ok / len(specs),
        "total": len(specs),
        "per_prompt": {s.prompt: r.correct for s, r in zip(specs, results)},
        "settings": settings.__dict__,
        "wall_time_s": {
            "prepare": round(t_prep, 1),
            "train": round(t_train, 1),
            "total": round(time.time() - started, 1),
        },
    }
    (sample_dir / "report.json").write_text(json.dumps(report, indent=2))
    console.print(
        f"single-object prompts with the right colour and shape: {correct}/{len(specs)}, "
        f"with an object of the right colour: {colour_ok}/{len(specs)} (shapes checker); "
        f"images in {sample_dir} (single_objects.png: rows = colours, columns = circle, square, "
        f"triangle); total {time.time() - started:.0f}s"
    )
