"""Score a trained shapes model on held-out sampling seeds: single objects drawn alone.

The demo's check (`score_alone`: the asked colour and shape and no other object) over the 18
colour x shape prompts x seeds [first, last) (default 100-109, never the demo's 0-3), at the run's
sampling settings and the given temperatures (z0 = mu + T sigma eps, one eps per seed shared by
the prompts). Weights: the exported model (default), or a checkpoint's group (`--checkpoint
RUN/checkpoints/step_N --group model|ema`), or a safetensors file of system weights (`--weights`,
as benchmarks/ema_window.py writes).

    python benchmarks/shapes_heldout.py RUN --temperatures 0.3,1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from crossflow_core.arith import rescale, z0_statistics
from crossflow_core.eval.shapes_checker import score_alone
from crossflow_core.eval.shapes_demo import single_object_specs
from crossflow_core.pipeline import load_pipeline
from crossflow_core.sample import sample_latents


def load_weights(pipe, weights: dict[str, torch.Tensor]) -> None:
    """System weights (keys ve.* / flow.*) into the pipeline's VE and flow, every key present."""
    for name, module in (("ve", pipe.ve), ("flow", pipe.flow)):
        part = {k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")}
        module.load_state_dict(part, strict=True)


def alone_rate(
    pipe, seeds: list[int], temperature: float, standardize: bool = False, settings=None
) -> dict:
    """Share of single-object images drawn alone, and per prompt, for one temperature.

    `settings`: the sampling settings (steps, solver, CFG); the run's recipe's when None.
    """
    specs = single_object_specs()
    prompts = [s.prompt for s in specs]
    settings = settings or pipe.config.recipe.sample
    per_prompt = [0] * len(prompts)
    for seed in seeds:
        enc = pipe.encode(prompts, [seed] * len(prompts), temperature)  # z0 = mu + T sigma eps_seed
        z0 = enc.z0
        if standardize:  # to the mean / std the prompts' training z0 have
            mean, var = z0_statistics(enc.mu, enc.logvar)
            z0 = rescale(z0, mean, var.sqrt())
        with torch.inference_mode():
            images = pipe.decode(sample_latents(pipe.flow, z0, settings, enc.cond))
        for i, (image, spec) in enumerate(zip(images, specs, strict=True)):
            per_prompt[i] += int(score_alone(image, spec).correct)
    total = len(seeds) * len(prompts)
    return {"alone": sum(per_prompt) / total, "images": total, "per_prompt": dict(zip(prompts, per_prompt))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seeds", default="100,110", help="first,last (exclusive)")
    parser.add_argument("--temperatures", default="0.3,1")
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--group", default="ema", choices=["ema", "model"])
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--standardize", action="store_true", help="rescale z0 to the training statistics")
    parser.add_argument("--steps", type=int, help="ODE steps (default: the recipe's)")
    parser.add_argument("--solver", choices=["euler", "heun"], help="default: the recipe's")
    parser.add_argument("--cfg", type=float, help="guidance scale (default: the recipe's)")
    args = parser.parse_args()
    pipe = load_pipeline(args.run)
    source = "export"
    if args.weights is not None:
        from safetensors.torch import load_file

        load_weights(pipe, load_file(str(args.weights)))
        source = str(args.weights)
    elif args.checkpoint is not None:
        from crossflow_core.train.checkpoint import Checkpointer

        groups, _ = Checkpointer.load(args.checkpoint)
        load_weights(pipe, groups[args.group])
        source = f"{args.checkpoint} ({args.group})"
    settings = pipe.config.recipe.sample.with_overrides(steps=args.steps, solver=args.solver, cfg_scale=args.cfg)
    first, last = (int(v) for v in args.seeds.split(","))
    for temperature in (float(t) for t in args.temperatures.split(",")):
        result = alone_rate(pipe, list(range(first, last)), temperature, args.standardize, settings)
        sampling = {"steps": settings.steps, "solver": settings.solver, "cfg_scale": settings.cfg_scale}
        print(json.dumps({"run": str(args.run), "weights": source, "temperature": temperature, **sampling, **result}))


if __name__ == "__main__":
    main()
