"""Which losses train at each step (the phases of `train.stage`) and the LR schedule over the run:
linear warm-up (again at each phase change with `train.warmup_each_phase`), then constant (with an
optional linear tail, `train.decay_steps`) or cosine down to `train.min_lr`."""

from __future__ import annotations

import math

import torch

from crossflow_core.recipe import Recipe
from crossflow_core.train.system import Phase

FLOW_PHASES: tuple[Phase, ...] = ("joint", "flow")  # the phases that train the flow


def phase_at(recipe: Recipe, step: int) -> Phase:
    """Which losses train at `step` (0-based): the first `train.target_steps` steps pretrain a
    trainable target codec alone ("target"); the later ones follow `train.stage`, with its
    `ve_steps` counted from the end of the target phase."""
    if step < recipe.train.target_steps:
        return "target"
    step -= recipe.train.target_steps
    stage, ve_steps = recipe.train.stage, recipe.train.ve_steps
    if stage == "ve":
        return "ve"
    if stage == "joint" or step >= ve_steps and stage == "two_stage":
        return "joint"
    if step < ve_steps:
        return "ve"
    return "flow"  # stage == "separate" after VE pretraining


def phase_starts(recipe: Recipe) -> tuple[int, ...]:
    """The 0-based steps after the first at which `phase_at` changes (e.g. (ve_steps,) for two_stage)."""
    tc = recipe.train
    bounds = sorted({tc.target_steps, tc.target_steps + tc.ve_steps})
    return tuple(s for s in bounds if 0 < s < tc.steps and phase_at(recipe, s) != phase_at(recipe, s - 1))


def phase_plan(recipe: Recipe) -> list[tuple[Phase, int]]:
    """The phases of a whole run in order, each with its number of steps, e.g. [("ve", 1000),
    ("joint", 900)] for two_stage."""
    edges = [0, *phase_starts(recipe), recipe.train.steps]
    return [(phase_at(recipe, a), b - a) for a, b in zip(edges, edges[1:]) if b > a]


def lr_factor(
    warmup: int,
    schedule: str = "constant",
    steps: int = 0,
    min_ratio: float = 0.0,
    restarts: tuple[int, ...] = (),
    decay_steps: int = 0,
):
    """The LR multiplier of 0-based optimizer step s: linear warm-up (s + 1) / warmup up to 1, then
    "constant" (so adding steps never changes the past) or "cosine": from 1 at s = warmup down
    to `min_ratio` at s = steps, min_ratio + (1 - min_ratio) * (1 + cos(pi * progress)) / 2.
    `restarts`: steps where the warm-up starts again, (s - r + 1) / warmup from the latest r <= s
    (times the schedule's value). `decay_steps` (constant): from s = steps - decay_steps the
    factor falls linearly, 1 - (1 - min_ratio) * (s - steps + decay_steps) / decay_steps, reaching
    min_ratio at s = steps."""

    def factor(step: int) -> float:
        since = step - max((r for r in restarts if r <= step), default=0)
        ramp = min(1.0, (since + 1) / warmup) if warmup > 0 else 1.0
        return ramp * scheduled(step)

    def scheduled(step: int) -> float:
        if schedule == "constant":
            start = steps - decay_steps
            if decay_steps <= 0 or step < start:
                return 1.0
            return 1.0 - (1.0 - min_ratio) * min(1.0, (step - start) / decay_steps)
        if step < warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe) -> torch.optim.lr_scheduler.LambdaLR:
    """`train.lr_schedule` as a LambdaLR (its state_dict is the step count: resumable)."""
    tc = recipe.train
    restarts = phase_starts(recipe) if tc.warmup_each_phase else ()
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lr_factor(tc.warmup_steps, tc.lr_schedule, tc.steps, tc.min_lr / tc.lr, restarts, tc.decay_steps),
    )
