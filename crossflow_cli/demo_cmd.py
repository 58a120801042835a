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
from crossflow_cli.train_cmd import run_training
from crossflow_core.atomic import write_text


@user_errors
def demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for data, run and samples.")] = Path(
        "demo"
    ),
    set_: SetOption = None,
    seed: Annotated[int, typer.Option(help="First sampling seed.")] = 0,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per single-object prompt in the check.")] = 4,
) -> None:
    from crossflow_core.data.manifest import Manifest
    from crossflow_core.data.prepare import prepare_dataset
    from crossflow_core.eval.shapes_demo import demo_samples
    from crossflow_core.pipeline import load_pipeline
    from crossflow_core.recipe import load_recipe
    from crossflow_core.train.schedule import phase_plan

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
            prepare_dataset(recipe.data, recipe.source, recipe.target, data_dir)
    t_prep = time.time() - started

    plan = phase_plan(recipe)
    phases = "" if len(plan) < 2 else " (" + ", then ".join(f"{n} {phase}" for phase, n in plan) + ")"
    console.print(f"[2/3] train: {recipe.train.steps} steps{phases} into {run_dir}")
    run_training("shapes", data_dir, run_dir, overrides)
    t_train = time.time() - started - t_prep

    console.print(f"[3/3] sample: single-object prompts and a few compositions into {sample_dir}")
    report = demo_samples(load_pipeline(run_dir), recipe.sample.with_overrides(seed=seed), sample_dir, seeds)
    total = time.time() - started
    report["wall_time_s"] = {
        "prepare": round(t_prep, 1),
        "train": round(t_train, 1),
        "total": round(total, 1),
    }
    write_text(sample_dir / "report.json", json.dumps(report, indent=2))
    console.print(
        f"single-object prompts x {seeds} seeds drawn right (the asked colour and shape, nothing else): "
        f"{report['correct']}/{report['total']}; with extra objects allowed "
        f"{report['colour_and_shape_extra_objects_allowed']:.0%}, more than one object "
        f"{report['more_than_one_object']:.0%} (shapes checker). Images in {sample_dir} "
        f"(single_objects.png: rows = colours, columns = circle, square, triangle); total {total:.0f}s"
    )
