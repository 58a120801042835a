"""Helpers shared by the CLI commands: user-error handling and console output."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
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
