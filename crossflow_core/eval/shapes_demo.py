"""The demo's own check: one prompt per colour x shape, drawn with several seeds and judged.

`demo_samples` draws every single-object prompt ("a red circle") with `seeds` seeds and a few
compositions, writes PNGs and grids, and returns the report `crossflow demo` writes to
samples/report.json. A single-object image is right when the shapes checker finds the asked
colour and shape *and no other object* (`score_alone`); the report also gives the looser
GenEval `colors` rule (extra objects allowed) and whether any object has the asked colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crossflow_core.data.shapes import COLOURS, SHAPES, PromptSpec, Requirement
from crossflow_core.eval.shapes_checker import detect, score, score_alone
from crossflow_core.image_files import save_grid, save_png, to_uint8
from crossflow_core.outputs import slug
from crossflow_core.recipe import SampleConfig

COMPOSITIONS = (
    "a red circle to the left of a blue square",
    "a green triangle above a yellow circle",
    "two purple squares",
    "a circle and a triangle",
)


def single_object_specs() -> list[PromptSpec]:
    """One `colors` prompt per colour x shape: the image must show that shape in that colour."""

    def article(word: str) -> str:
        return "an" if word[0] in "aeiou" else "a"

    return [
        PromptSpec(f"{article(c)} {c} {s}", "colors", (Requirement(shape=s, count=1, colour=c),))
        for c in COLOURS
        for s in SHAPES
    ]


def demo_samples(pipe: Any, settings: SampleConfig, out_dir: Path, seeds: int = 4) -> dict[str, Any]:
    """Draw, save and check the demo prompts; returns the report (accuracies, per prompt).

    Image k of single prompt i (k < seeds) uses seed settings.seed + k * n + i (n = 18 prompts);
    the compositions follow with the next seeds. PNGs and single_objects.png hold the first seed;
    single_objects_all_seeds.png holds every seed (one row per colour x seed, columns = shapes).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    specs = single_object_specs()
    n = len(specs)
    prompts = [s.prompt for s in specs] * seeds + list(COMPOSITIONS)
    images = pipe.generate(prompts, settings)
    singles, compositions = images[: n * seeds], images[n * seeds :]
    first = singles[:n]
    named = zip(prompts[:n] + list(COMPOSITIONS), torch.cat([first, compositions]))
    for i, (prompt, image) in enumerate(named):
        save_png(image, out_dir / f"{i:02d}_{slug(prompt)}.png")
    save_grid(first, out_dir / "single_objects.png", nrow=len(SHAPES))
    by_colour_seed = singles.view(seeds, len(COLOURS), len(SHAPES), *singles.shape[1:]).transpose(0, 1)
    save_grid(by_colour_seed.reshape(-1, *singles.shape[1:]), out_dir / "single_objects_all_seeds.png",
              nrow=len(SHAPES))
    save_grid(compositions, out_dir / "compositions.png", nrow=len(COMPOSITIONS))
    uint8 = to_uint8(singles)
    strict = [score_alone(uint8[k], specs[k % n]) for k in range(n * seeds)]
    loose = [score(uint8[k], specs[k % n]).correct for k in range(n * seeds)]
    colour_ok = [
        any(d.colour == specs[k % n].include[0].colour for d in detect(uint8[k])) for k in range(n * seeds)
    ]
    total = n * seeds
    correct = sum(r.correct for r in strict)
    return {
        "single_object_accuracy": correct / total,
        "correct": correct,
        "total": total,
        "seeds": seeds,
        "rule": "the asked colour and shape, and no other object (shapes checker, score_alone)",
        "colour_and_shape_extra_objects_allowed": sum(loose) / total,
        "more_than_one_object": sum("alone" in r.reason for r in strict) / total,
        "right_colour_present": sum(colour_ok) / total,
        "per_prompt": {
            s.prompt: sum(strict[k * n + i].correct for k in range(seeds)) for i, s in enumerate(specs)
        },
        "misses": {
            f"{specs[k % n].prompt} (seed {settings.seed + k})": strict[k].reason
            for k in range(total)
            if not strict[k].correct
        },
        "settings": settings.settings(),
    }
