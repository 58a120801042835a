"""The CLI as users type it (typer's CliRunner): prepare -> train -> sample / arith / interp."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from crossflow_cli.app import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def sets(overrides: list[str]) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_overrides) -> Path:
    """prepare -> train (3 steps) through the CLI, as a user would."""
    root = tmp_path_factory.mktemp("cli")
    result = invoke("prepare", "--recipe", "shapes", "--out", root / "data", *sets(tiny_overrides))
    assert result.exit_code == 0, result.output
    manifest = json.loads((root / "data" / "manifest.json").read_text())
    assert manifest["num_samples"] == 64

    def train(steps: int):
        out = root / "run"
        return invoke(
            "train",
            "--recipe",
            "shapes",
            "--data",
            root / "data",
            "--out",
            out,
            *sets(tiny_overrides),
            "--set",
            f"train.steps={steps}",
        )

    result = train(3)
    assert result.exit_code == 0, result.output
    model = root / "run" / "model"
    assert (model / "model_index.json").is_file()
    for component in ("ve", "flow"):
        assert (model / component / "config.json").is_file()
        assert (model / component / "model.safetensors").is_file()
    assert (root / "run" / "loss.png").is_file()
    result = train(4)  # the same command with more steps continues the run
    assert result.exit_code == 0, result.output
    assert "resuming from step 3" in result.output
    return root / "run"


def test_sample_writes_pngs_and_grid(trained_run, tmp_path):
    out = tmp_path / "img"
    result = invoke(
        "sample", "--model", trained_run, "a red circle", "a blue square", "--out", out, "--steps", "2"
    )
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["0000_a-red-circle.png", "0001_a-blue-square.png", "grid.png"]
    assert Image.open(out / "0000_a-red-circle.png").size == (32, 32)
    meta = json.loads((out / "samples.json").read_text())
    assert meta["nfe"] == 4 and [s["seed"] for s in meta["samples"]] == [0, 1]


def test_arith_and_interp(trained_run, tmp_path):
    result = invoke(
        "arith",
        "--model",
        trained_run,
        '"a red circle" + "a blue square" - "a red circle"',
        "--out",
        tmp_path / "a",
        "--steps",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "result.png").is_file()
    assert Image.open(tmp_path / "a" / "terms_and_result.png").size[0] > 3 * 32
    assert json.loads((tmp_path / "a" / "arith.json").read_text())["start"] == "standardized"
    result = invoke(
        "interp",
        "--model",
        trained_run,
        "a red circle",
        "a blue square",
        "--frames",
        "3",
        "--out",
        tmp_path / "i",
        "--steps",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "i").glob("frame_*.png"))) == 3
    assert json.loads((tmp_path / "i" / "interp.json").read_text())["start"] == "standardized"


def test_arith_and_interp_start_modes(trained_run, tmp_path):
    """--start sample: one prompt alone starts from its VE z0 for --seed, as `crossflow sample`."""
    import numpy as np

    common = ["--model", trained_run, "--steps", "2"]
    assert invoke("sample", "a red circle", "--seed", "5", "--out", tmp_path / "s", *common).exit_code == 0
    out = tmp_path / "a"
    result = invoke("arith", '"a red circle"', "--start", "sample", "--seed", "5", "--out", out, *common)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "a" / "arith.json").read_text())
    assert record["start"] == "sample" and record["settings"]["seed"] == 5
    sampled = np.asarray(Image.open(tmp_path / "s" / "0000_a-red-circle.png"), dtype=np.int16)
    for name in ("result.png", "term_0_a-red-circle.png"):
        drawn = np.asarray(Image.open(tmp_path / "a" / name), dtype=np.int16)
        assert np.abs(drawn - sampled).max() <= 1  # the same start up to float rounding
    out = tmp_path / "i"
    result = invoke("interp", "a red circle", "a blue square", "--start", "mu", "--out", out, *common)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "i" / "interp.json").read_text())["start"] == "mu"
    for command in ("arith", "interp"):
        help_text = " ".join(runner.invoke(app, [command, "--help"]).output.split())
        assert "--start" in help_text and "standardized" in help_text and "sample" in help_text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["arith", "--model", "{run}", "dog + - cat"], 2, "expected a term at column 7"),
        (["arith", "--model", "{run}", '"unclosed'], 2, "column"),
        (["arith", "--model", "{run}", "a", "--start", "noise"], 2, "--start: invalid choice 'noise'"),
        (
            ["interp", "--model", "{run}", "a", "b", "--start", "z"],
            2,
            "--start: invalid choice 'z'; expected one of: standardized, sample, mu",
        ),
        (["arith", "--model", "{run}", "a - a"], 2, "start from mu"),
        (
            ["sample", "--model", "{run}", "x", "--solver", "rk9"],
            2,
            "--solver: invalid choice 'rk9'; expected one of: euler, heun",
        ),
        (["sample", "--model", "{run}", "x", "--solver", "rk_9"], 2, "--solver: invalid choice 'rk_9'"),
        (["sample", "--model", "{run}", "x", "--steps", "0"], 2, "--steps=0 must be > 0"),
        (["sample", "--model", "{run}", "x", "--batch-size", "0"], 2, "--batch-size=0 must be > 0"),
        (
            ["sample", "--model", "{run}", "x", "--temperature", "-1"],
            2,
            "--temperature=-1.0 must be a number >= 0",
        ),
        (["sample", "--model", "{run}"], 2, "no prompts"),
        (["sample", "--model", "/nonexistent/run", "x"], 2, "does not exist"),
        (["interp", "--model", "{run}", "a", "b", "--frames", "1"], 2, "--frames must be at least 2"),
        (["train", "--recipe", "nope", "--data", "{run}", "--out", "{run}"], 2, "unknown recipe 'nope'"),
        (
            ["train", "--data", "/nonexistent", "--out", "{tmp}/r", "--set", "train.stepz=1"],
            2,
            "unknown key 'train.stepz'",
        ),
        (["train", "--data", "/nonexistent", "--out", "{tmp}/r"], 2, "/nonexistent"),
        (["prepare", "--out", "{tmp}/d", "--from", "/nonexistent/folder"], 2, "/nonexistent/folder"),
    ],
)
def test_bad_input_gets_one_line_and_nonzero_exit(trained_run, tmp_path, args, code, message):
    args = [a.replace("{run}", str(trained_run)).replace("{tmp}", str(tmp_path)) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r" / "model").exists()


def test_eval_fid_generates_from_a_model(trained_run, tmp_path, monkeypatch):
    """`crossflow eval fid --model RUN --prompts FILE REF`: generate, then FID against REF (NFE recorded)."""
    import torch

    from crossflow_core.eval.inception import inception_skeleton

    monkeypatch.setenv("CROSSFLOW_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    net = inception_skeleton()
    torch.save(net.state_dict(), tmp_path / "random_inception.pth")
    ref = tmp_path / "ref"
    ref.mkdir()
    from crossflow_core.data.shapes import ShapesWorld

    world = ShapesWorld(32, 0)
    for i in range(4):
        Image.fromarray(world.sample(i).image).save(ref / f"{i}.png")
    prompts = ["a red circle", "a blue square", "two green triangles", "a yellow circle"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n")
    args = [
        "eval",
        "fid",
        "--model",
        trained_run,
        "--prompts",
        tmp_path / "prompts.txt",
        ref,
        "--weights",
        tmp_path / "random_inception.pth",
        "--metrics",
        "fid",
        "--feature-layer",
        "64",
        "--steps",
        "2",
        "--cfg-scale",
        "2",
        "--json",
        "--save-images",
        tmp_path / "gen",
    ]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    (fid,) = json.loads(result.stdout)["results"]
    assert fid["value"] > 0 and fid["n"] == 4
    assert fid["settings"]["nfe"] == 4  # 2 Euler steps, CFG doubles each
    assert len(list((tmp_path / "gen").glob("*.png"))) == 4
    bad = runner.invoke(app, ["eval", "fid", "--model", str(trained_run), str(ref)])
    assert bad.exit_code == 2 and "--model needs --prompts" in bad.output
