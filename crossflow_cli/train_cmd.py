"""`crossflow train`: train (or continue) a run, with a rich progress bar of the loss terms.

`crossflow train --recipe t2i_256 --dry-run [--num-processes 8] [--json]` instead builds the
recipe's networks on the meta device and prints parameters, FLOPs per step and memory per GPU,
loading no data, weights, LM or VAE.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crossflow_cli.common import JsonOption, RecipeOption, SetOption, console, user_errors
from crossflow_cli.eval_common import flag_errors
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import load_recipe
from crossflow_core.train.callbacks import TrainCallbacks

if TYPE_CHECKING:
    from crossflow_core.train.dry_run import DryRunReport


class ProgressCallbacks(TrainCallbacks):
    def __init__(self, progress: Progress) -> None:
        self.progress, self.task = progress, None

    def on_start(self, start_step: int, total_steps: int) -> None:
        if start_step:
            console.print(f"resuming from step {start_step}")
        self.task = self.progress.add_task("train", total=total_steps, completed=start_step, losses="")

    def on_step(self, step: int, total_steps: int, row: dict[str, Any]) -> None:
        terms = " ".join(f"{k}={row[k]:.4f}" for k in ("total", "fm", "enc", "kl") if row.get(k))
        if row.get("ve_mu_std"):  # the VE's signal: spread of mu over the batch, mean sigma
            terms += f" | mu_std={row['ve_mu_std']:.3f} sigma={row['ve_sigma']:.3f}"
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
    if not result.main_process:  # the other processes of a multi-process run print nothing
        return result
    final = " ".join(f"{k}={v:.4f}" for k, v in result.losses.items())
    console.print(f"trained to step {result.step} in {result.wall_time_s:.0f}s {final}")
    console.print(f"model exported to {result.model_dir}")
    return result


def format_bytes(n: float) -> str:
    """1234567890 -> '1.15 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.2f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.2f} TiB"


def format_count(n: float, unit: str = "") -> str:
    """1.07e9 -> '1.07 G' (+ unit); 0 -> '0'."""
    exp = max(0, min(int(math.log10(abs(n)) // 3), 5)) if n else 0
    return f"{n / 1000**exp:.3g} {('', 'K', 'M', 'G', 'T', 'P')[exp]}{unit}".strip()


def print_dry_run(report: DryRunReport, as_json: bool) -> None:
    """The dry run's report: a table of parameters, FLOPs and memory plus its notes, or JSON."""
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    r, m = report, report.memory
    gpus = f"{r.num_processes} GPU{'s' if r.num_processes > 1 else ''}"
    latent = "x".join(map(str, r.latent_shape))
    table = Table(
        title=f"crossflow train --dry-run: {r.recipe} on {gpus}, {r.batch_per_gpu} per GPU, latent {latent}"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("exact", justify="right")
    for name, n in r.params.items():
        table.add_row(f"params: {name}", format_count(n), f"{n:,}")
    table.add_row(
        "params: total (trainable)",
        format_count(r.params_total),
        f"{r.params_total:,} ({r.trainable_params:,})",
        end_section=True,
    )
    table.add_row(
        "FLOPs per step per GPU (fwd + bwd)", format_count(r.flops_per_step, "FLOP"), f"{r.flops_per_step:,}"
    )
    table.add_row("forward FLOPs per GPU", format_count(r.flops_forward, "FLOP"), f"{r.flops_forward:,}")
    for name, n in r.flops_forward_by_component.items():
        if n:
            table.add_row(f"  of which {name}", format_count(n, "FLOP"), f"{n / r.flops_forward:.1%}")
    table.add_row(
        "forward FLOPs per sample",
        format_count(r.flops_forward_per_sample, "FLOP"),
        f"{r.flops_forward_per_sample:,.0f}",
        end_section=True,
    )
    rows = [
        ("weights (fp32)", m.weights),
        ("gradients (fp32)", m.grads),
        ("AdamW moments (2 x fp32)", m.optimizer),
        ("EMA copy (fp32)", m.ema),
        ("DDP gradient buckets (fp32)", m.ddp_buckets),
        ("activations (estimate)", m.activations),
    ]
    for label, n in rows:
        if n or label.startswith(("weights", "activations")):
            table.add_row(f"memory: {label}", format_bytes(n), f"{n:,} B")
    table.add_row("[bold]memory per GPU (estimate)", f"[bold]{format_bytes(m.total)}", f"{m.total:,} B")
    console.print(table)
    for note in r.notes:
        console.print(f"- {note}", highlight=False)


def dry_run_training(
    recipe_name: str, overrides: list[str], num_processes: int, assume: list[str], as_json: bool
) -> DryRunReport:
    """Load the recipe, run the core's dry run and print its report."""
    from crossflow_core.train.dry_run import UnknownShapeError, dry_run, parse_assumptions

    recipe = load_recipe(recipe_name, overrides)
    with flag_errors({UnknownShapeError: "{exc} with --assume {exc.key}=N"}):
        report = dry_run(recipe, num_processes, parse_assumptions(assume))
    print_dry_run(report, as_json)
    return report


@user_errors
def train_command(
    data: Annotated[
        Path | None, typer.Option("--data", help="A prepared dataset (crossflow prepare --out).")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Run directory; re-running continues it.")] = None,
    recipe: RecipeOption = "shapes",
    set_: SetOption = None,
    stage: Annotated[
        str | None,
        typer.Option(help="joint | ve (VE pretraining) | two_stage (VE first, then joint) | separate."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="Print params, FLOPs/step and memory per GPU; load nothing, train nothing."
        ),
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option("--num-processes", envvar="WORLD_SIZE", help="GPUs sharing train.batch_size (dry run)."),
    ] = 1,
    assume: Annotated[
        list[str] | None,  # noqa: UP007 - typer needs Optional here
        typer.Option(
            "--assume",
            help="Dry run: a shape fact not on disk, token_dim=N | latent_channels=N | downsample=N.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    overrides = list(set_ or [])
    if stage is not None:
        overrides.append(f"train.stage={stage}")
    if dry_run:
        dry_run_training(recipe, overrides, num_processes, list(assume or []), json_out)
        return
    if data is None or out is None:
        raise CrossflowError(
            "training needs --data (a prepared dataset) and --out (the run directory); "
            "or pass --dry-run to only size the recipe"
        )
    run_training(recipe, data, out, overrides)
