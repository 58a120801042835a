"""`crossflow eval ...`: the evaluation sub-app; one module per command, registered here.

Every metric command prints a table (or, with `--json`, only the results JSON on stdout) and
writes the JSON to `--out FILE` when given; `geneval --out DIR` is the image folder instead (its
scores, when `--score` runs the official scorer, go to DIR/scores.json). Generated images are
seeded so that sample k of prompt i uses seed `--seed + i * n + k` (n images per prompt).
Each command parses its flags, calls one task of `crossflow_core.eval.tasks` and prints.
"""

from __future__ import annotations

import typer

from crossflow_cli.eval_caption_cmd import eval_caption_command
from crossflow_cli.eval_clip_cmd import clip_command
from crossflow_cli.eval_depth_cmd import eval_depth_command
from crossflow_cli.eval_fd_shapes_cmd import fd_shapes_command
from crossflow_cli.eval_fid_cmd import register as register_fid
from crossflow_cli.eval_geneval_cmd import geneval_command, shapes_metadata_command
from crossflow_cli.eval_shapes_cmd import shapes_command
from crossflow_cli.eval_sr_cmd import eval_sr_command

eval_app = typer.Typer(
    help="Evaluate models and images: clip, geneval, shapes, fd-shapes, fid, sr, depth, caption.",
    no_args_is_help=True
)

eval_app.command("clip", help="CLIP score (raw cosine and torchmetrics' 100x) of images and prompts.")(
    clip_command
)
eval_app.command(
    "geneval",
    help="Generate GenEval images in the official layout, resumably. Without --score it stops after "
    "generating (exit 0) and prints how to run the official scorer.",
)(geneval_command)
eval_app.command("shapes-metadata", help="Write the shapes test prompts as GenEval metadata jsonl.")(
    shapes_metadata_command
)
eval_app.command("shapes", help="GenEval-style accuracy on the shapes world's test prompts.")(shapes_command)
eval_app.command("fd-shapes", help="Fréchet distance in shapes-CNN features (FD-shapes, not FID).")(
    fd_shapes_command
)
register_fid(eval_app)
eval_app.command(
    "sr", help="Super-resolution: PSNR / SSIM / FID of upscaled images (or of a model, --model)."
)(eval_sr_command)
eval_app.command(
    "caption", help="Captioning: BLEU / METEOR / ROUGE-L / CIDEr (+ scene truth on shapes) and baselines."
)(eval_caption_command)
eval_app.command(
    "depth", help="Monocular depth: AbsRel / delta1 / RMSE, raw and scale-shift aligned (or a baseline)."
)(eval_depth_command)
