"""`crossflow caption`: images -> one caption each, from a captioning model (task: caption)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossflow_cli.common import (
    BatchOption,
    CfgOption,
    DeviceOption,
    ModelOption,
    SeedOption,
    StepsOption,
    err_console,
    user_errors,
)
from crossflow_cli.generate_cmd import _settings, load_model

EXAMPLES = [
    "crossflow caption --model runs/caption_shapes photo.png",
    "crossflow caption --model runs/caption_shapes images/ --json --out captions.jsonl",
]


@user_errors
def caption_command(
    inputs: Annotated[list[Path], typer.Argument(help="Images, or folders of them.")],
    model: ModelOption = Path("run"),
    json_out: Annotated[bool, typer.Option("--json", help="JSON lines (file, name, caption, seed).")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write the lines to this file.")
    ] = None,
    steps: StepsOption = None,
    cfg_scale: CfgOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
) -> None:
    """Print `name<TAB>caption` per image (or JSON lines); image i is drawn with seed + i."""
    from crossflow_core.caption import caption_files, format_captions, require_captioner, write_captions

    pipe = load_model(model, device, kind=None)
    require_captioner(pipe)
    settings = _settings(pipe, steps=steps, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size)
    with err_console.status("captioning"):
        captions = caption_files(pipe, list(inputs), settings)
    if out is not None:
        write_captions(captions, out, json_out)
    typer.echo(format_captions(captions, json_out), nl=False)
