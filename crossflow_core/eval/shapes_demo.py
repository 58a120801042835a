"""The demo's own check: one prompt per colour x shape, drawn and judged by the shapes checker.

`demo_samples` draws the single-object prompts and a few compositions, writes one PNG each and
two grids, and returns the report `crossflow demo` writes to samples/report.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crossflow_core.data.shapes import COLOURS, SHAPES, PromptSpec, Requirement
from crossflow_core.eval.shapes_checker import detect, score
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


def demo_samples(pipe: Any, settings: SampleConfig, out_dir: Path) -> dict[str, Any]:
    """Draw, save and check the demo prompts; returns the report (accuracies, per prompt)."""
    specs = single_object_specs()
    prompts = [s.prompt for s in specs] + list(COMPOSITIONS)
    images = pipe.generate(prompts, settings)
    for i, (prompt, image) in enumerate(zip(prompts, images)):
        save_png(image, out_dir / f"{i:02d}_{slug(prompt)}.png")
    save_grid(images[: len(specs)], out_dir / "single_objects.png", nrow=3)
    save_grid(images[len(specs) :], out_dir / "compositions.png", nrow=len(COMPOSITIONS))
    uint8 = to_uint8(images)
    results = [score(uint8[i], spec) for i, spec in enumerate(specs)]
    correct = sum(r.correct for r in results)
    colour_ok = sum(
        any(d.colour == s.include[0].colour for d in detect(uint8[i])) for i, s in enumerate(specs)
    )
    return {
        "single_object_colour_and_shape_accuracy": correct / len(specs),
        "correct": correct,
        "single_object_right_colour_present": colour_ok / len(specs),
        "right_colour_present": colour_ok,
        "total": len(specs),
        "per_prompt": {s.prompt: r.correct for s, r in zip(specs, results)},
        "settings": settings.settings(),
    }
