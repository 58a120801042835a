"""`crossflow eval ...` end to end with test-double pipelines (no trained model needed)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from crossflow_cli.eval_cmd import eval_app
from crossflow_core.data.shapes import CATEGORIES, COLOURS, Scene, ShapesWorld, render, scene_for
from crossflow_core.eval import generate as gen
from crossflow_core.eval import geneval

app = typer.Typer()
app.add_typer(eval_app, name="eval")
runner = CliRunner()
_NAMES = list(COLOURS)


class ShapesPipeline:
    """Renders a ground-truth scene for each known shapes prompt (seed settings.seed + i).
    Deliberately wrong models: `recolour` moves every object to the next palette colour,
    `shrink` scales every object (about its centre)."""

    def __init__(self, image_size: int = 32, recolour: bool = False, shrink: float = 1.0) -> None:
        self.image_size, self.recolour, self.shrink = image_size, recolour, shrink
        world = ShapesWorld(image_size=image_size)
        specs = [world.sample(i, "test").spec for i in range(300)] + world.test_prompts(16)
        self.specs = {s.prompt: s for s in specs}

    def generate(self, prompts, settings, progress=None):
        out = []
        for i, prompt in enumerate(prompts):
            scene = scene_for(self.specs[prompt], np.random.default_rng(settings.seed + i), self.image_size)
            if self.recolour:
                scene = Scene(
                    tuple(
                        dataclasses.replace(o, colour=_NAMES[(_NAMES.index(o.colour) + 1) % len(_NAMES)])
                        for o in scene.objects
                    )
                )
            scene = Scene(tuple(dataclasses.replace(o, size=o.size * self.shrink) for o in scene.objects))
            out.append(torch.from_numpy(render(scene, self.image_size)).permute(2, 0, 1).float() / 255)
        if progress is not None:
            progress(len(prompts), len(prompts))
        return torch.stack(out)

    def nfe(self, settings):
        return settings.steps * (1 if settings.cfg_scale == 1 else 2)


@pytest.fixture
def fake_model(monkeypatch):
    """`--model good` / `wrong` / `small`: ground truth, wrong colours, objects at 0.6 size."""

    def load(model, device=None):
        return ShapesPipeline(recolour=str(model) == "wrong", shrink=0.6 if str(model) == "small" else 1.0)

    monkeypatch.setattr(gen, "load_pipeline", load)


def _run(*args: str, code: int = 0):
    result = runner.invoke(app, ["eval", *args])
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    return result


def _json(*args: str) -> dict[str, dict]:
    out = json.loads(_run(*args, "--json").stdout)  # --json: stdout is only the JSON
    return {r["metric"]: r for r in out["results"]}


def _one_line_error(result, *needles: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr and all(n in lines[0] for n in needles), lines[0]


def _ground_truth_layout(root: Path, per_category: int) -> Path:
    world = ShapesWorld()
    for i, spec in enumerate(world.test_prompts(per_category)):
        image = render(scene_for(spec, np.random.default_rng(i), 32), 32)
        geneval.write_folder(root, i, json.dumps(spec.to_geneval()), image[None])
    return root


# ----------------------------------------------------------------------------- shapes


def test_shapes_ground_truth_layout_scores_near_perfect(tmp_path):
    layout = _ground_truth_layout(tmp_path / "gt", per_category=16)
    results = _json("shapes", "--images", str(layout))
    per_category = {c: results[f"shapes_geneval/{c}"]["value"] for c in CATEGORIES}
    print("ground truth per category:", per_category)
    assert all(v >= 0.98 for v in per_category.values()) and results["shapes_geneval"]["n"] == 96


def test_shapes_wrong_colours_score_low(fake_model):
    good = _json("shapes", "--model", "good", "--per-category", "8", "--steps", "2")
    wrong = _json("shapes", "--model", "wrong", "--per-category", "8", "--steps", "2")
    print("wrong colours per category:", {m: r["value"] for m, r in wrong.items()})
    for colourless in ("single_object", "two_object", "counting"):
        assert wrong[f"shapes_geneval/{colourless}"]["value"] >= 0.9
    for coloured in ("colors", "position", "color_attr"):
        assert good[f"shapes_geneval/{coloured}"]["value"] >= 0.9
        assert wrong[f"shapes_geneval/{coloured}"]["value"] <= 0.2
    assert wrong["shapes_geneval"]["value"] < good["shapes_geneval"]["value"] - 0.4
    assert good["shapes_geneval"]["settings"]["steps"] == 2 and good["shapes_geneval"]["settings"]["nfe"] == 4


def test_shapes_saved_layout_rescored_gives_the_same_numbers(fake_model, tmp_path):
    args = ("shapes", "--model", "good", "--per-category", "3", "--n-samples", "2", "--seed", "5")
    direct = _json(*args)
    saved = _json(*args, "--save-images", str(tmp_path / "imgs"))
    rescored = _json("shapes", "--images", str(tmp_path / "imgs"))
    assert len(geneval.read_layout(tmp_path / "imgs")) == 18
    for metric, r in direct.items():
        assert saved[metric]["value"] == r["value"] == rescored[metric]["value"]
        assert r["n"] == rescored[metric]["n"]


def test_out_file_holds_the_printed_json(fake_model, tmp_path):
    out = tmp_path / "r" / "shapes.json"
    printed = _run("shapes", "--model", "good", "--per-category", "2", "--json", "--out", str(out)).stdout
    assert json.loads(out.read_text()) == json.loads(printed)
    table = _run("shapes", "--model", "good", "--per-category", "2").stdout
    assert "shapes_geneval" in table and not table.lstrip().startswith("{")


# ----------------------------------------------------------------------------- geneval


def test_geneval_generates_the_layout_and_says_how_to_score(fake_model, tmp_path):
    meta, out = tmp_path / "meta.jsonl", tmp_path / "images"
    _run("shapes-metadata", str(meta), "--per-category", "2")
    lines = meta.read_text().splitlines()
    assert len(lines) == 12
    result = _run(
        "geneval", "--model", "good", "--metadata", str(meta), "--out", str(out), "--n-samples", "2"
    )
    assert "note:" in result.stderr and "--score" in result.stderr
    for i, line in enumerate(lines):
        assert (out / f"{i:05d}" / "metadata.jsonl").read_text() == line + "\n"
        assert sorted(p.name for p in (out / f"{i:05d}" / "samples").iterdir()) == ["0000.png", "0001.png"]
    again = runner.invoke(
        app,
        [
            "eval",
            "geneval",
            "-m",
            "good",
            "--metadata",
            str(meta),
            "-o",
            str(out),
            "--n-samples",
            "2",
            "--json",
        ],
    )
    assert again.exit_code == 0 and json.loads(again.stdout) == {"results": []}
    assert "0 prompt folders written, 12 already complete" in again.stderr
    # the shapes checker reads the same layout
    assert _json("shapes", "--images", str(out))["shapes_geneval"]["n"] == 24
    # resuming with other settings would mix images of two runs: refused
    result = _run("geneval", "-m", "good", "--metadata", str(meta), "-o", str(out), "--n-samples", "2",
                  "--steps", "7", code=2)  # fmt: skip
    _one_line_error(result, "other settings", "steps")


def test_geneval_score_without_the_detector_fails_before_generating(fake_model, tmp_path):
    if geneval.scorer_missing() is None:
        pytest.skip("the GenEval scorer is installed here")
    meta, out = tmp_path / "meta.jsonl", tmp_path / "images"
    _run("shapes-metadata", str(meta), "--per-category", "1")
    result = _run("geneval", "--model", "good", "--metadata", str(meta), "--out", str(out), "--score", code=1)
    _one_line_error(result, "mmdet")
    assert not out.exists()


def test_geneval_bad_metadata(fake_model, tmp_path):
    out = str(tmp_path / "images")
    result = _run(
        "geneval", "--model", "good", "--metadata", str(tmp_path / "none.jsonl"), "--out", out, code=2
    )
    _one_line_error(result, "none.jsonl", "does not exist")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"tag": "colors", "prompt": "a red circle", "include": []}\n{"tag": "colors", "prompt": \n'
    )
    result = _run("geneval", "--model", "good", "--metadata", str(bad), "--out", out, code=2)
    _one_line_error(result, "bad.jsonl:2", "not valid JSON")


# ----------------------------------------------------------------------------- clip


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from test_clip_score import build_tiny_clip

    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


def test_clip_scores_a_folder_and_a_generated_run_alike(fake_model, tiny_clip_dir, tmp_path):
    from crossflow_core.eval.clip_score import clip_cosines, load_clip

    world = ShapesWorld()
    captions = [world.sample(i, "test").caption for i in range(6)]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(captions) + "\n")
    generated = _json(
        "clip", "--model", "good", "--prompts", str(prompts), "--clip", str(tiny_clip_dir),
        "--save-images", str(tmp_path / "imgs"),
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "imgs").glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    rescored = _json(
        "clip", "--images", str(tmp_path / "imgs"), "--prompts", str(prompts), "--clip", str(tiny_clip_dir)
    )
    images = [gen.read_image(tmp_path / "imgs" / f"{i:05d}.png") for i in range(6)]
    direct = clip_cosines(load_clip(tiny_clip_dir, "cpu"), images, captions)
    for results in (generated, rescored):
        assert results["clip_cosine"]["value"] == pytest.approx(direct.clip_cosine, abs=1e-6)
        assert results["clip_score_x100"]["value"] == pytest.approx(direct.clip_score_x100, abs=1e-4)
        assert results["clip_cosine"]["n"] == 6
    assert (
        generated["clip_cosine"]["settings"]["nfe"] > 0 and "pairing" in rescored["clip_cosine"]["settings"]
    )


def test_clip_reads_prompts_from_a_geneval_layout(fake_model, tiny_clip_dir, tmp_path):
    from crossflow_core.eval.clip_score import clip_cosines, load_clip

    meta, out = tmp_path / "meta.jsonl", tmp_path / "images"
    _run("shapes-metadata", str(meta), "--per-category", "1")
    _run("geneval", "-m", "good", "--metadata", str(meta), "-o", str(out), "--n-samples", "2", "--no-grid")
    results = _json("clip", "--images", str(out), "--clip", str(tiny_clip_dir))
    prompts = [json.loads(line)["prompt"] for line in meta.read_text().splitlines() for _ in range(2)]
    images = [gen.read_image(p) for e in geneval.read_layout(out) for p in e.samples]
    expected = clip_cosines(load_clip(tiny_clip_dir, "cpu"), images, prompts)
    assert results["clip_cosine"]["n"] == 12
    assert results["clip_cosine"]["value"] == pytest.approx(expected.clip_cosine, abs=1e-6)
    assert not (out / "00000" / "grid.png").exists()


def test_clip_bad_inputs(tiny_clip_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    gen.save_images(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "imgs")
    result = _run(
        "clip",
        "--images",
        str(tmp_path / "imgs"),
        "--prompts",
        str(prompts),
        "--clip",
        str(tiny_clip_dir),
        code=2,
    )
    _one_line_error(result, "3 images", "2 prompts")
    result = _run(
        "clip",
        "--images",
        str(tmp_path / "imgs"),
        "--prompts",
        str(prompts),
        "--clip",
        str(tmp_path / "no_clip"),
        code=1,
    )
    _one_line_error(result, "no_clip", "--clip")
    _one_line_error(_run("clip", "--model", "x", "--images", str(tmp_path), code=2), "either --model")
    _one_line_error(_run("clip", "--images", str(tmp_path / "imgs"), code=2), "--prompts")


# ----------------------------------------------------------------------------- fd-shapes


def test_fd_shapes_command(fake_model):
    same = _json("fd-shapes", "shapes:train", "shapes:train", "--n", "200")["fd_shapes"]
    assert abs(same["value"]) < 1e-6 and same["settings"]["weights_sha256"] and same["n"] == 200
    good = _json("fd-shapes", "--model", "good", "--n", "300")["fd_shapes"]
    small = _json("fd-shapes", "--model", "small", "--n", "300")["fd_shapes"]
    print(f"FD-shapes vs shapes:test, n=300: right {good['value']:.1f}, x0.6 objects {small['value']:.1f}")
    assert small["value"] > 5 * good["value"]
    assert good["settings"]["source_b"] == "shapes:test" and good["settings"]["nfe"] > 0
    _one_line_error(_run("fd-shapes", "shapes:train", code=2), "two image sources")
    _one_line_error(_run("fd-shapes", "shapes:val", "shapes:test", code=2), "shapes:val")


# ----------------------------------------------------------------------------- a real model


@pytest.mark.slow
def test_every_command_runs_on_a_real_trained_model(tiny_overrides, tiny_data, tiny_clip_dir, tmp_path):
    from crossflow_core.recipe import load_recipe
    from crossflow_core.train.loop import train

    run = tmp_path / "run"
    train(load_recipe("shapes", [*tiny_overrides, "train.steps=2"]), tiny_data, run)
    common = ("--model", str(run), "--steps", "2", "--batch-size", "8")
    shapes = _json("shapes", *common, "--per-category", "1", "--n-samples", "2")
    assert shapes["shapes_geneval"]["n"] == 12 and shapes["shapes_geneval"]["model"].endswith("model")
    meta = tmp_path / "meta.jsonl"
    _run("shapes-metadata", str(meta), "--per-category", "1")
    _run("geneval", *common, "--metadata", str(meta), "--out", str(tmp_path / "ge"), "--n-samples", "2")
    assert len(geneval.read_layout(tmp_path / "ge")) == 6
    fd = _json("fd-shapes", *common, "--n", "16")["fd_shapes"]
    assert fd["value"] > 0 and fd["settings"]["steps"] == 2
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\ntwo blue squares\n")
    clip = _json("clip", *common, "--prompts", str(prompts), "--clip", str(tiny_clip_dir))
    assert clip["clip_cosine"]["n"] == 2
