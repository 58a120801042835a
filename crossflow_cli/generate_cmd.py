"""`crossflow sample`, `crossflow arith`, `crossflow interp`: images from a trained text -> image model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import torch
import typer

from crossflow_cli.common import (
    BatchOption,
    CfgOption,
    DeviceOption,
    ModelOption,
    OutOption,
    SeedOption,
    SolverOption,
    StepsOption,
    console,
    user_errors,
)
from crossflow_core.errors import CrossflowError
from crossflow_core.outputs import save_outputs, slug


def load_model(model: Path, device: str | None, kind: str | None = "text"):
    from crossflow_core.pipeline import load_pipeline

    with console.status("loading model"):
        pipe = load_pipeline(model, device)
    if kind is not None:
        pipe.require_source(kind, "this command")
    return pipe


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


def _settings(pipe, **values):
    from crossflow_core.recipe import RecipeError

    try:
        return pipe.defaults.with_overrides(**values)
    except RecipeError as exc:
        # the option names, not the recipe keys (sample.batch_size -> --batch-size); values untouched
        message = re.sub(r"\bsample\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"), str(exc))
        raise CrossflowError(message) from None


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
    pipe = load_model(model, device)
    settings = _settings(
        pipe, steps=steps, solver=solver, cfg_scale=cfg_scale, seed=seed, batch_size=batch_size
    )
    expanded = [p for p in items for _ in range(n)]
    with console.status(f"sampling {len(expanded)} images ({pipe.nfe(settings)} NFE each)"):
        images = pipe.generate(expanded, settings)
    names = [f"{i:04d}_{slug(p)}.png" for i, p in enumerate(expanded)]
    record = {
        "model": str(model),
        "settings": settings.settings(),
        "nfe": pipe.nfe(settings),
        "samples": [
            {"file": f, "prompt": p, "seed": seed + i} for i, (f, p) in enumerate(zip(names, expanded))
        ],
    }
    save_outputs(images, out, names, record, "samples.json", nrow=n if n > 1 else min(8, len(expanded)))
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
    pipe = load_model(model, device)
    settings = _settings(pipe, steps=steps, solver=solver, cfg_scale=cfg_scale)
    texts = [term.text for term in expr.terms]
    z = combine(expr, lambda prompts: pipe.encode(prompts).mu)
    if standardize:
        z = standardize_fn(z.unsqueeze(0)).squeeze(0)
    images = pipe.generate_from_z0(torch.cat([pipe.encode(texts).mu, z.unsqueeze(0)]), settings)
    record = {
        "expression": expression,
        "terms": [{"text": t.text, "weight": t.weight} for t in expr.terms],
        "standardize": standardize,
        "settings": settings.settings(),
    }
    save_outputs(
        images,
        out,
        [f"term_{i}_{slug(t)}.png" for i, t in enumerate(texts)] + ["result.png"],
        record,
        "arith.json",
        grid="terms_and_result.png",
        nrow=len(images),
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
    pipe = load_model(model, device)
    settings = _settings(pipe, steps=steps, solver=solver, cfg_scale=cfg_scale)
    mu = pipe.encode([prompt_a, prompt_b]).mu
    alphas = torch.linspace(0, 1, frames, device=mu.device).view(-1, 1, 1, 1)
    images = pipe.generate_from_z0((1 - alphas) * mu[0:1] + alphas * mu[1:2], settings)
    record = {"prompts": [prompt_a, prompt_b], "frames": frames, "settings": settings.settings()}
    save_outputs(
        images,
        out,
        [f"frame_{i:03d}.png" for i in range(frames)],
        record,
        "interp.json",
        grid="strip.png",
        nrow=frames,
    )
    console.print(f"wrote {frames} frames and strip.png to {out}")
