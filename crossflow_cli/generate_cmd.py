"""`crossflow sample`, `crossflow arith`, `crossflow interp`: images from a trained model."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated

import torch
import typer
from torchvision.utils import save_image

from crossflow_cli.common import console, user_errors
from crossflow_core.errors import CrossflowError

ModelOption = Annotated[Path, typer.Option("--model", "-m", help="Training run directory (or RUN/model).")]
OutOption = Annotated[Path, typer.Option("--out", "-o", help="Output directory for the PNGs.")]
StepsOption = Annotated[int | None, typer.Option(help="ODE steps (default: the recipe's sample.steps).")]
SolverOption = Annotated[str | None, typer.Option(help="euler | heun (default: the recipe's).")]
CfgOption = Annotated[float | None, typer.Option("--cfg-scale", help="Guidance scale; 1 = no guidance.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the first sample; sample i uses seed + i.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Prompts per forward pass.")]
DeviceOption = Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1 ... (default: cuda if present).")]


def load_pipeline(model: Path, device: str | None):
    from crossflow_core.sample import CrossFlowPipeline

    with console.status("loading model"):
        return CrossFlowPipeline.load(model, device=device)


def settings_for(pipe, steps, solver, cfg_scale, seed, batch_size):
    from crossflow_core.sample import SampleSettings

    defaults = pipe.config.recipe.sample
    settings = SampleSettings(
        steps=steps if steps is not None else defaults.steps,
        solver=solver if solver is not None else defaults.solver,
        cfg_scale=cfg_scale if cfg_scale is not None else defaults.cfg_scale,
        seed=seed,
        batch_size=batch_size,
    )
    settings.check()
    return settings


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def save_png(image: torch.Tensor, path: Path, nrow: int = 8) -> None:
    """Write an image [3, H, W] or a grid of [N, 3, H, W] in [0, 1] atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    save_image(image, tmp, nrow=nrow, padding=2, pad_value=1.0)
    os.replace(tmp, path)


def read_prompts(prompts: list[str], prompts_file: Path | None) -> list[str]:
    items = list(prompts)
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise CrossflowError(f"prompts file {str(prompts_file)!r} does not exist")
        items += [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not items:
        raise CrossflowError('no prompts: pass them as arguments ("a red circle") or --prompts FILE')
    if any(not p.strip() for p in items):
        raise CrossflowError("a prompt is empty: every prompt needs some text")
    return items


@user_errors
def sample_command(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts, each quoted.")] = None,
    model: ModelOption = Path("run"),
    out: OutOption = Path("samples"),
    prompts_file: Annotated[
        Path | None, typer.Option("--prompts", help="A file, one prompt per line.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Images per prompt.")] = 1,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    seed: SeedOption = 0,
    batch_size: BatchOption = 64,
    device: DeviceOption = None,
) -> None:
    items = read_prompts(prompts or [], prompts_file)
    if n < 1:
        raise CrossflowError(f"--n must be at least 1, got {n}")
    pipe = load_pipeline(model, device)
    settings = settings_for(pipe, steps, solver, cfg_scale, seed, batch_size)
    expanded = [p for p in items for _ in range(n)]
    with console.status(f"sampling {len(expanded)} images ({pipe.nfe(settings)} NFE each)"):
        images = pipe.generate(expanded, settings)
    records = []
    for i, (prompt, image) in enumerate(zip(expanded, images)):
        name = f"{i:04d}_{slug(prompt)}.png"
        save_png(image, out / name)
        records.append({"file": name, "prompt": prompt, "seed": seed + i})
    save_png(images, out / "grid.png", nrow=n if n > 1 else min(8, len(expanded)))
    meta = {"model": str(model), "settings": settings.__dict__, "nfe": pipe.nfe(settings), "samples": records}
    (out / "samples.json").write_text(json.dumps(meta, indent=2))
    console.print(f"wrote {len(expanded)} images and grid.png to {out}")


@user_errors
def arith_command(
    expression: Annotated[
        str, typer.Argument(help='e.g. "dog + hat - cat" or \'0.5*"a red circle" + "blue"\'.')
    ],
    model: ModelOption = Path("run"),
    out: OutOption = Path("arith"),
    standardize: Annotated[bool, typer.Option(help="Rescale the result to zero mean, unit std.")] = False,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    device: DeviceOption = None,
) -> None:
    from crossflow_core.arith import combine, parse_expression
    from crossflow_core.arith import standardize as standardize_fn

    expr = parse_expression(expression)  # malformed: one line with a column, exit 2
    pipe = load_pipeline(model, device)
    settings = settings_for(pipe, steps, solver, cfg_scale, 0, 64)
    texts = [term.text for term in expr.terms]
    z = combine(expr, lambda prompts: pipe.encode(prompts).mu)
    if standardize:
        z = standardize_fn(z.unsqueeze(0)).squeeze(0)
    terms_mu = pipe.encode(texts).mu
    images = pipe.generate_from_z0(torch.cat([terms_mu, z.unsqueeze(0)]), settings)
    save_png(images[-1], out / "result.png")
    save_png(images, out / "terms_and_result.png", nrow=len(images))
    meta = {"expression": expression, "terms": [{"text": t.text, "weight": t.weight} for t in expr.terms]}
    (out / "arith.json").write_text(
        json.dumps({**meta, "standardize": standardize, "settings": settings.__dict__}, indent=2)
    )
    console.print(
        f"wrote result.png and terms_and_result.png (terms: {', '.join(texts)}, then result) to {out}"
    )


@user_errors
def interp_command(
    prompt_a: Annotated[str, typer.Argument(help="Start prompt.")],
    prompt_b: Annotated[str, typer.Argument(help="End prompt.")],
    model: ModelOption = Path("run"),
    out: OutOption = Path("interp"),
    frames: Annotated[int, typer.Option(help="Number of frames, ends included.")] = 8,
    steps: StepsOption = None,
    solver: SolverOption = None,
    cfg_scale: CfgOption = None,
    device: DeviceOption = None,
) -> None:
    if frames < 2:
        raise CrossflowError(f"--frames must be at least 2, got {frames}")
    if not prompt_a.strip() or not prompt_b.strip():
        raise CrossflowError("both prompts need some text")
    pipe = load_pipeline(model, device)
    settings = settings_for(pipe, steps, solver, cfg_scale, 0, 64)
    mu = pipe.encode([prompt_a, prompt_b]).mu
    alphas = torch.linspace(0, 1, frames, device=mu.device).view(-1, 1, 1, 1)
    z0 = (1 - alphas) * mu[0:1] + alphas * mu[1:2]
    images = pipe.generate_from_z0(z0, settings)
    for i, image in enumerate(images):
        save_png(image, out / f"frame_{i:03d}.png")
    save_png(images, out / "strip.png", nrow=frames)
    console.print(f"wrote {frames} frames and strip.png to {out}")
