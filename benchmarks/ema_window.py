"""Train a recipe with the real loop while keeping extra EMAs of other windows, for comparison.

The EMA never feeds back into training, so one run can keep several: next to the run's own EMA
this keeps, for each k, shadow weights with decay_s = 1 - k / (s + k) at update s (0 at the
first update, which copies; capped at train.ema_decay). k = 9 is `train.ema_warmup`'s ramp
(diffusers' (1 + s) / (10 + s)); a smaller k averages over a longer tail of the run. Each is
written to RUN/ema_k{k}.safetensors; score them with benchmarks/shapes_heldout.py --weights.

    python benchmarks/ema_window.py RUN DATA --set train.seed=1 --ks 9,5,3,2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file

import crossflow_core.train.loop as loop
from crossflow_core.recipe import load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--recipe", default="shapes")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--ks", default="9,5,3,2")
    args = parser.parse_args()
    ks = [float(k) for k in args.ks.split(",")]
    recipe = load_recipe(args.recipe, args.sets)
    kept: dict = {}
    build = loop._build

    def build_with_extra_emas(*a, **kw):
        run = build(*a, **kw)
        named = list(run.model.named_parameters())
        shadows = {k: [p.detach().clone().float() for _, p in named] for k in ks}
        own_step, updates = run.ema.step, [0]

        def step(parameters):
            parameters = list(parameters)
            own_step(parameters)
            updates[0] += 1
            now = [p.detach().float() for p in parameters]
            for k in ks:
                decay = 0.0 if updates[0] == 1 else min(recipe.train.ema_decay, 1 - k / (updates[0] + k))
                torch._foreach_mul_(shadows[k], decay)
                torch._foreach_add_(shadows[k], now, alpha=1 - decay)

        run.ema.step = step
        kept.update(names=[n for n, _ in named], shadows=shadows)
        return run

    loop._build = build_with_extra_emas
    loop.train(recipe, args.data, args.run)
    for k in ks:
        weights = {n: t.contiguous() for n, t in zip(kept["names"], kept["shadows"][k], strict=True)}
        save_file(weights, str(args.run / f"ema_k{k:g}.safetensors"))


if __name__ == "__main__":
    main()
