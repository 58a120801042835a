"""What the `crossflow eval ...` commands share: the progress display, the results output and
the wording of typed core errors in terms of the command's flags."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from crossflow_cli.common import console, err_console
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.report import MetricResult, results_to_json, write_results

SHOWN_SETTINGS = ("steps", "solver", "cfg_scale", "temperature", "nfe", "n_samples", "clip", "weights_sha256")


@contextlib.contextmanager
def stage_progress(quiet: bool = False) -> Iterator[Callable[[str, int, int | None], None]]:
    """Yields the core's `progress(stage, done, total)`: one transient line per stage on stderr
    (a pulsing bar while `total` is None), hidden when `quiet` or stderr is not a terminal."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=quiet or not err_console.is_terminal,
    )
    with bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                for other in tasks.values():
                    bar.update(other, visible=False)
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


@contextlib.contextmanager
def flag_errors(wording: Mapping[type[CrossflowError], str]) -> Iterator[None]:
    """Re-raise the core's typed errors listed in `wording` with the CLI's words (flags)."""
    try:
        yield
    except tuple(wording) as exc:
        words = next(w for kind, w in wording.items() if isinstance(exc, kind))
        raise type(exc)(words.format(exc=exc)) from None


def emit(results: list[MetricResult], json_out: bool, out: Path | None, title: str = "") -> None:
    """Write results to `out` (if given) and print them: the JSON only, or a table."""
    if out is not None:
        write_results(results, out)
    if json_out:
        typer.echo(results_to_json(results))
        return
    if title:
        console.print(f"[bold]{title}[/]", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("n", justify="right")
    for r in results:
        table.add_row(r.metric, "n/a" if r.value is None else f"{r.value:.4f}", str(r.n))
    console.print(table)
    settings = results[0].settings if results else {}
    details = [
        f"{k} {str(settings[k])[: 16 if k.endswith('sha256') else None]}"
        for k in SHOWN_SETTINGS
        if k in settings
    ]
    if details:
        console.print("; ".join(details), highlight=False)
    if out is not None:
        console.print(f"results written to {out}", highlight=False)
