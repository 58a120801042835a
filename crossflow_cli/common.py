"""Helpers shared by the CLI commands: user-error handling and console output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from crossflow_core.errors import CrossflowError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn `CrossflowError` into one 'error: ...' line on stderr and its exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CrossflowError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


# Options shared by several commands, defined once.
RecipeOption = Annotated[
    str, typer.Option("--recipe", "-r", help="Recipe name (recipes/NAME.yaml) or path to a YAML file.")
]
SetOption = Annotated[
    list[str] | None,  # noqa: UP007 - typer needs Optional here
    typer.Option("--set", "-s", help="Override a recipe value: section.key=value (repeatable)."),
]

# Sampling options (`crossflow sample`, `arith`, `interp` and the eval commands), defined once.
ModelOption = Annotated[Path, typer.Option("--model", "-m", help="Training run directory (or RUN/model).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output directory for the PNGs.")]
StepsOption = Annotated[int | None, typer.Option(help="ODE steps (default: the recipe's sample.steps).")]
SolverOption = Annotated[str | None, typer.Option(help="euler | heun (default: the recipe's).")]
CfgOption = Annotated[float | None, typer.Option("--cfg-scale", help="Guidance scale; 1 = no guidance.")]
TemperatureOption = Annotated[
    float | None,
    typer.Option(
        help="z0 = mu + temperature * sigma * eps: 1 = as trained, lower = less varied, more faithful "
        "outputs (default: the recipe's sample.temperature)."
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of the first sample; sample i uses seed + i.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")]

# Options of the eval commands, defined once.
OptionalModelOption = Annotated[
    str | None, typer.Option("--model", "-m", help="Training run (RUN or RUN/model) to generate from.")
]
PromptSeedOption = Annotated[int, typer.Option(help="Seed; sample k of prompt i uses seed + i * n + k.")]
ImageBatchOption = Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print only the results JSON.")]
ResultsOutOption = Annotated[
    Path | None, typer.Option("--out", "-o", help="Also write the results JSON here.")
]
SaveImagesOption = Annotated[
    Path | None, typer.Option("--save-images", help="Also save the generated images in this folder.")
]
NSamplesOption = Annotated[int, typer.Option("--n-samples", help="Images per prompt.")]
WorldSeedOption = Annotated[
    int | None,
    typer.Option("--world-seed", help="Shapes world seed (default: the recipe's data.seed, or 0)."),
]
