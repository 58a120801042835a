"""Training: resume == uninterrupted (bit-identical on CPU), stages, export -> load -> same samples."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import load_recipe
from crossflow_core.sample import CrossFlowPipeline, SampleSettings
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.loop import train


def run(tiny_overrides, data: Path, out: Path, *extra: str):
    return train(load_recipe("shapes", [*tiny_overrides, *extra]), data, out)


def final_groups(run_dir: Path):
    latest = Checkpointer(run_dir, 1, 1).latest()
    assert latest is not None
    return Checkpointer.load(latest)


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_resume_equals_uninterrupted(tiny_overrides, tiny_data, tmp_path, arch):
    tiny_overrides = [*tiny_overrides, f"model.arch={arch}"]
    run(tiny_overrides, tiny_data, tmp_path / "whole", "train.steps=5")
    run(tiny_overrides, tiny_data, tmp_path / "parts", "train.steps=2")
    result = run(tiny_overrides, tiny_data, tmp_path / "parts", "train.steps=5")
    assert result.resumed_from == 2
    (whole, whole_state), (parts, parts_state) = (
        final_groups(tmp_path / "whole"),
        final_groups(tmp_path / "parts"),
    )
    assert whole_state["step"] == parts_state["step"] == 5
    assert whole_state["sampler"] == parts_state["sampler"]
    for group in ("model", "ema", "optimizer"):
        assert whole[group].keys() == parts[group].keys()
        for key in whole[group]:
            assert torch.equal(whole[group][key], parts[group][key]), f"{group}.{key} differs after resume"
    with (tmp_path / "parts" / "log.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4, 5]
    # and training did something: the weights moved away from the step-2 checkpoint's EMA start
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in whole["model"].values())


def test_run_refuses_a_different_recipe(tiny_overrides, tiny_data, tmp_path):
    run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=1")
    with pytest.raises(CrossflowError, match="was trained with train.lr"):
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=2", "train.lr=0.1")
    with pytest.raises(CrossflowError, match="already at step 1"):
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=0")


def test_stages_train_the_right_parts(tiny_overrides, tiny_data, tmp_path):
    def weights(run_dir: Path, prefix: str):
        return {k: v for k, v in final_groups(run_dir)[0]["model"].items() if k.startswith(prefix)}

    run(tiny_overrides, tiny_data, tmp_path / "ve", "train.steps=2", "train.stage=ve")
    run(tiny_overrides, tiny_data, tmp_path / "ve0", "train.steps=0", "train.stage=ve")
    flow_after, flow_before = weights(tmp_path / "ve", "flow."), weights(tmp_path / "ve0", "flow.")
    assert all(
        torch.equal(flow_after[k], flow_before[k]) for k in flow_before
    )  # VE pretraining leaves the flow alone
    ve_after, ve_before = weights(tmp_path / "ve", "ve."), weights(tmp_path / "ve0", "ve.")
    assert any(not torch.equal(ve_after[k], ve_before[k]) for k in ve_before)

    run(
        tiny_overrides,
        tiny_data,
        tmp_path / "sep",
        "train.steps=4",
        "train.stage=separate",
        "train.ve_steps=2",
    )
    run(
        tiny_overrides,
        tiny_data,
        tmp_path / "sep2",
        "train.steps=2",
        "train.stage=separate",
        "train.ve_steps=2",
    )
    ve4, ve2 = weights(tmp_path / "sep", "ve."), weights(tmp_path / "sep2", "ve.")
    assert all(torch.equal(ve4[k], ve2[k]) for k in ve2)  # frozen after its pretraining
    flow4, flow2 = weights(tmp_path / "sep", "flow."), weights(tmp_path / "sep2", "flow.")
    assert any(not torch.equal(flow4[k], flow2[k]) for k in flow2)


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_export_load_gives_identical_samples(tiny_overrides, tiny_data, tmp_path, arch):
    run(tiny_overrides, tiny_data, tmp_path / "run", "train.steps=3", f"model.arch={arch}")
    settings = SampleSettings(steps=3, solver="heun", cfg_scale=2.0, seed=7)
    prompts = ["a red circle", "two blue squares", "a green triangle above a red square"]
    first = CrossFlowPipeline.load(tmp_path / "run").generate(prompts, settings)
    again = CrossFlowPipeline.load(tmp_path / "run" / "model").generate(prompts, settings)
    assert first.shape == (3, 3, 32, 32)
    assert torch.equal(first, again)
    assert first.min() >= 0 and first.max() <= 1
    pipe = CrossFlowPipeline.load(tmp_path / "run")
    single = torch.cat(
        [
            pipe.generate([p], SampleSettings(steps=3, solver="heun", cfg_scale=2.0, seed=7 + i))
            for i, p in enumerate(prompts)
        ]
    )
    torch.testing.assert_close(first, single, atol=1e-5, rtol=0)
    other_seed = pipe.generate(prompts, SampleSettings(steps=3, solver="heun", cfg_scale=2.0, seed=8))
    assert not torch.equal(first, other_seed)
    # the exported weights are the EMA weights of the final checkpoint
    groups, _ = final_groups(tmp_path / "run")
    ema = groups["ema"]
    flow_weights = pipe.flow.state_dict()
    assert flow_weights and all(torch.equal(v.cpu(), ema[f"flow.{k}"]) for k, v in flow_weights.items())
    assert not all(torch.equal(ema[k], groups["model"][k]) for k in ema)  # EMA, not the raw weights


def test_a_run_that_failed_before_training_can_restart_with_another_recipe(
    tiny_overrides, tiny_data, tmp_path
):
    with pytest.raises(CrossflowError, match="fewer than train.batch_size=1000"):
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=1", "train.batch_size=1000")
    assert not (tmp_path / "r" / "model").exists()
    assert run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=1").step == 1
