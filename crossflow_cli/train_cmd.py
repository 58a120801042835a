"""`crossflow train`: train (or continue) a run, with a rich progress bar of the loss terms."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from crossflow_cli.common import RecipeOption, SetOption, console, user_errors
from crossflow_core.recipe import load_recipe
from crossflow_core.train.callbacks import TrainCallbacks


class ProgressCallbacks(TrainCallbacks):
    def __init__(self, progress: Progress) -> None:
        self.progress, self.task = progress, None

    def on_start(self, start_step: int, total_steps: int) -> None:
        if start_step:
            console.print(f"resuming from step {start_step}")
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, losses="")

    def on_step(self, step: int, total_steps: int, row: dict[str, Any]) -> None:
        terms = " ".join(f"{k}={row[k]:.4f}" for k in ("total", "fm", "enc", "kl") if row.get(k))
        self.progress.update(self.task, completed=step, losses=f"[{row['phase']}] {terms}")

    def on_message(self, text: str) -> None:
        console.print(text)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=console,
        transient=False,
    )


def run_training(recipe_name: str, data: Path, out: Path, overrides: list[str]):
    """Load the recipe and train with a progress bar; returns the core's TrainResult."""
    from crossflow_core.train.loop import train

    recipe = load_recipe(recipe_name, overrides)
    with make_progress() as progress:
        result = train(recipe, data, out, ProgressCallbacks(progress))
    final = " ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
    console.print(f"trained to step {result.step} in {result.wall_time_s:.0f}s {final}")
    console.print(f"model exported to {result.model_dir}")
    return result


@user_errors
def train_command(
    data: Annotated[Path, typer.Option("--data", help="A prepared dataset (crossflow prepare --out).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory; re-running continues it.")],
    recipe: RecipeOption = "shapes",
    set_: SetOption = None,
    stage: Annotated[
        str | None,
        typer.Option(help="joint | ve (VE pretraining) | two_stage (VE first, then joint) | separate."),
    ] = None,
) -> None:
    overrides = list(set_ or [])
    if stage is not None:
        overrides.append(f"train.stage={stage}")
    run_training(recipe, data, out, overrides)
