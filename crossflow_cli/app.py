"""The `crossflow` command: registers one module per command; each parses, calls core, prints."""

from __future__ import annotations

import typer

from crossflow_cli.caption_cmd import caption_command
from crossflow_cli.demo_cmd import demo_command
from crossflow_cli.depth_cmd import depth_command
from crossflow_cli.eval_cmd import eval_app
from crossflow_cli.generate_cmd import arith_command, interp_command, sample_command
from crossflow_cli.prepare_cmd import prepare_command
from crossflow_cli.recipes_cmd import recipes_command
from crossflow_cli.train_cmd import train_command
from crossflow_cli.upscale_cmd import upscale_command

app = typer.Typer(
    name="crossflow",
    help="CrossFlow: flow matching from one modality straight to another (arXiv 2412.15213).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("prepare", help="Shard a dataset into WebDataset tars + manifest.json.")(prepare_command)
app.command("train", help="Train the text VE and the flow model (resumes RUN if it exists).")(train_command)
app.command("sample", help="Generate images for prompts.")(sample_command)
app.command("arith", help='Latent arithmetic: crossflow arith --model RUN "dog + hat - cat".')(arith_command)
app.command("interp", help="Interpolate between two prompts' latents.")(interp_command)
app.command("upscale", help="Super-resolution: upscale low-res images with an SR model.")(upscale_command)
app.command("caption", help="Image captioning: one caption per image from a captioning model.")(
    caption_command
)
app.command("depth", help="Monocular depth: metric depth maps of images with a depth model.")(depth_command)
app.command("demo", help="prepare -> train -> sample on the built-in shapes world (CPU, minutes).")(
    demo_command
)
app.command("recipes", help="List the built-in recipes.")(recipes_command)
app.add_typer(eval_app, name="eval", help="Evaluate: fid, clip, geneval, shapes, fd-shapes.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
