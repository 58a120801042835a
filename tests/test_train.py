"""Training: resume == uninterrupted (bit-identical on CPU), stages, export -> load -> same samples."""

from __future__ import annotations

import csv
import dataclasses
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
    with pytest.raises(CrossflowError, match="was trained with train.lr") as info:
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=2", "train.lr=0.1")
    assert "start a new run directory, or set train.lr=0.001 to continue it" in str(info.value)
    with pytest.raises(CrossflowError, match="already at step 1") as info:
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=0")
    assert "raise train.steps to continue, or start a new run directory" in str(info.value)
    assert "--" not in str(info.value)  # the core cites no CLI flag


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
    # sample.temperature scales the VE's noise: z0 - mu is linear in it, 0 gives z0 = mu for any seed
    seeds = [7, 8, 9]
    mu = pipe.encode(prompts).z0
    for tau in (0.0, 0.5):
        z0 = pipe.encode(prompts, seeds, temperature=tau).z0
        torch.testing.assert_close(z0 - mu, tau * (pipe.encode(prompts, seeds).z0 - mu), atol=1e-6, rtol=0)
    cold = SampleSettings(steps=3, solver="heun", cfg_scale=2.0, seed=7, temperature=0.0)
    cold_other_seed = dataclasses.replace(cold, seed=8)
    assert torch.equal(pipe.generate(prompts, cold), pipe.generate(prompts, cold_other_seed))
    assert not torch.equal(pipe.generate(prompts, cold), first)
    # the exported weights are the EMA weights of the final checkpoint
    groups, _ = final_groups(tmp_path / "run")
    ema = groups["ema"]
    flow_weights = pipe.flow.state_dict()
    assert flow_weights and all(torch.equal(v.cpu(), ema[f"flow.{k}"]) for k, v in flow_weights.items())
    assert not all(torch.equal(ema[k], groups["model"][k]) for k in ema)  # EMA, not the raw weights


def test_a_run_that_failed_before_training_can_restart_with_another_recipe(
    tiny_overrides, tiny_data, tmp_path
):
    with pytest.raises(CrossflowError, match="fewer than train.batch_size=1000") as info:
        run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=1", "train.batch_size=1000")
    assert "set train.batch_size=64 or prepare more data" in str(info.value) and "--" not in str(info.value)
    assert not (tmp_path / "r" / "model").exists()
    assert run(tiny_overrides, tiny_data, tmp_path / "r", "train.steps=1").step == 1


def test_system_loss_terms_by_phase(tiny_overrides):
    """One batch through `CrossFlowSystem` (Batch = SourceBatch + target latents) in each phase."""
    from crossflow_core.codecs import SourceBatch
    from crossflow_core.train.system import Batch, CrossFlowSystem

    recipe = load_recipe("shapes", tiny_overrides)
    spec, latent_shape = {"num_tokens": 12, "token_dim": 24}, (3, 16, 16)
    torch.manual_seed(0)
    system = CrossFlowSystem.from_recipe(recipe, spec, latent_shape)
    assert system.ve.init_args["num_tokens"] == 12 and system.ve.init_args["token_dim"] == 24
    assert tuple(system.flow.init_args["latent_shape"]) == latent_shape
    mask = torch.ones(8, 12, dtype=torch.bool)
    mask[:, 6:] = False
    batch = Batch(
        source=SourceBatch(torch.randn(8, 12, 24), mask), target=torch.rand(8, *latent_shape) * 2 - 1
    )

    def grads(phase):
        system.zero_grad(set_to_none=True)
        out = system(batch, phase)
        out.total.backward()
        has = {
            part: any(
                p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(system, part).parameters()
            )
            for part in ("ve", "flow", "objective")
        }
        return out, has

    out, has = grads("joint")
    assert all(v > 0 for v in out.as_floats().values())
    torch.testing.assert_close(
        out.total, out.fm + recipe.ve.enc_weight * out.enc + recipe.ve.kl_weight * out.kl
    )
    assert has == {"ve": True, "flow": True, "objective": True}
    out, has = grads("ve")
    assert out.fm == 0 and out.enc > 0 and out.kl > 0
    assert has == {"ve": True, "flow": False, "objective": True}
    out, has = grads("flow")
    assert out.enc == 0 and out.kl == 0 and out.fm > 0
    assert has == {"ve": False, "flow": True, "objective": False}  # the VE is frozen


@pytest.mark.parametrize(
    "mean, std, low, high", [(0.0, 1.0, 0.02, 0.98), (4.0, 0.2, 0.95, 1.0), (-4.0, 0.2, 0.0, 0.05)]
)
def test_recipe_time_mean_and_std_set_the_training_times(tiny_overrides, mean, std, low, high):
    """flow.time_mean / time_std reach the loss step: t = sigmoid(mean + std * n) as the flow sees it."""
    from crossflow_core.codecs import SourceBatch
    from crossflow_core.train.system import Batch, CrossFlowSystem

    recipe = load_recipe("shapes", [*tiny_overrides, f"flow.time_mean={mean}", f"flow.time_std={std}"])
    torch.manual_seed(0)
    system = CrossFlowSystem.from_recipe(recipe, {"num_tokens": 6, "token_dim": 24}, (3, 16, 16))
    seen = []
    system.flow.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach().clone()))
    source = SourceBatch(torch.randn(256, 6, 24), torch.ones(256, 6, dtype=torch.bool))
    batch = Batch(source, torch.zeros(256, 3, 16, 16))
    with torch.no_grad():
        system(batch, "joint")
    t = seen[0]
    assert t.shape == (256,) and low <= float(t.min()) and float(t.max()) <= high
    expected = torch.sigmoid(torch.tensor(mean))  # the median of t
    assert abs(float(t.median()) - float(expected)) < 0.05


def test_export_layout_and_pre_seam_models_still_load(tiny_overrides, tiny_data, tmp_path):
    """RUN/model is model_index.json + ve/ + flow/; a model exported before the task seam
    (config.json + one model.safetensors with ve./flow. prefixes) loads to the same samples."""
    import json

    from safetensors.torch import load_file, save_file

    from crossflow_core.export import load_exported

    run(tiny_overrides, tiny_data, tmp_path / "run", "train.steps=2")
    model = tmp_path / "run" / "model"
    assert sorted(p.name for p in model.iterdir()) == ["flow", "model_index.json", "ve"]
    index = json.loads((model / "model_index.json").read_text())
    assert (index["format"], index["version"], index["task"], index["step"]) == (
        "crossflow-model",
        2,
        "t2i",
        2,
    )
    assert index["latent_shape"] == [3, 32, 32] and index["image_size"] == 32
    assert index["source"]["kind"] == "text" and index["source"]["spec"] == {
        "num_tokens": 12,
        "token_dim": 384,
    }
    assert index["source"]["identity"]["name"] == "minilm" and index["target"]["kind"] == "pixels"
    assert json.loads((model / "ve" / "config.json").read_text())["class"] == "TextVariationalEncoder"
    assert json.loads((model / "flow" / "config.json").read_text())["class"] == "FlowUNet"
    exported = load_exported(tmp_path / "run")
    assert exported.index.recipe == load_recipe("shapes", [*tiny_overrides, "train.steps=2"])
    assert exported.index.latent_shape == (3, 32, 32) and exported.index.step == 2

    # the same weights in the pre-seam layout (format version 1)
    old = tmp_path / "old" / "model"
    old.mkdir(parents=True)
    weights = {
        f"{part}.{k}": v
        for part in ("ve", "flow")
        for k, v in load_file(model / part / "model.safetensors").items()
    }
    save_file(weights, old / "model.safetensors")
    recipe = exported.index.recipe.to_dict()
    source = recipe.pop("source")
    recipe.pop("target"), recipe.pop("task"), recipe["ve"].pop("kind")
    recipe["text_encoder"] = {
        "name": source["encoder"],
        "max_length": source["max_length"],
        "embedding_scale": source["embedding_scale"],
    }
    recipe["latents"] = {"kind": "pixels", "vae": None, "scale_factor": None, "shift_factor": None}
    recipe["data"]["precompute_text"] = recipe["data"].pop("precompute_source")
    recipe["data"]["precompute_latents"] = recipe["data"].pop("precompute_target")
    (old / "config.json").write_text(
        json.dumps(
            {
                "format": "crossflow-model",
                "version": 1,
                "recipe": recipe,
                "shapes": {"latent_shape": [3, 32, 32], "num_tokens": 12, "token_dim": 384},
                "image_size": 32,
                "text_encoder": index["source"]["identity"],
                "latent_space": index["target"]["identity"],
                "step": 2,
            }
        )
    )
    legacy = load_exported(tmp_path / "old")
    assert legacy.index.recipe == exported.index.recipe
    assert legacy.index.source["spec"] == index["source"]["spec"] and legacy.index.latent_shape == (3, 32, 32)
    for part in ("ve", "flow"):
        new_sd, old_sd = getattr(exported, part).state_dict(), getattr(legacy, part).state_dict()
        assert new_sd.keys() == old_sd.keys() and all(torch.equal(new_sd[k], old_sd[k]) for k in new_sd)
    settings = SampleSettings(steps=2, solver="euler", cfg_scale=2.0, seed=3)
    prompts = ["a red circle", "two blue squares"]
    assert torch.equal(
        CrossFlowPipeline.load(tmp_path / "old").generate(prompts, settings),
        CrossFlowPipeline.load(tmp_path / "run").generate(prompts, settings),
    )
    # damaged exports are one-line errors naming the file
    (model / "flow" / "model.safetensors").unlink()
    with pytest.raises(CrossflowError, match="model.safetensors is missing: re-export the model"):
        load_exported(model)


def test_sample_settings_are_the_recipe_sample_section(tiny_overrides):
    from crossflow_core.recipe import RecipeError, SampleConfig

    assert SampleSettings is SampleConfig
    defaults = load_recipe("shapes", tiny_overrides).sample
    settings = defaults.with_overrides(steps=4, solver="heun", seed=None)
    assert (settings.steps, settings.solver, settings.seed) == (4, "heun", defaults.seed)  # None keeps
    assert settings.settings() == {
        "steps": 4,
        "solver": "heun",
        "cfg_scale": defaults.cfg_scale,
        "batch_size": defaults.batch_size,
        "seed": defaults.seed,
        "temperature": defaults.temperature,
    }
    with pytest.raises(
        RecipeError, match="sample.solver: invalid choice 'rk9'; expected one of: euler, heun"
    ):
        defaults.with_overrides(solver="rk9")
    with pytest.raises(RecipeError, match=r"sample.steps=0 must be > 0"):
        SampleSettings(steps=0).check()
    with pytest.raises(RecipeError, match=r"sample.batch_size=0 must be > 0"):
        SampleSettings(batch_size=0).check()
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(RecipeError, match=r"sample.temperature=.* must be a number >= 0"):
            SampleSettings(temperature=bad).check()


def test_runs_with_different_mixed_precision_in_one_process(tiny_overrides, tiny_data, tmp_path):
    """accelerate keeps one process-wide state; train() must not refuse a second precision."""
    for i, precision in enumerate(["no", "bf16", "no"]):
        result = run(
            tiny_overrides,
            tiny_data,
            tmp_path / f"r{i}",
            "train.steps=1",
            f"train.mixed_precision={precision}",
        )
        assert result.step == 1 and (result.model_dir / "model_index.json").is_file()


def test_previews_show_the_trained_flow_as_crossflow_sample_draws_it(tiny_overrides, tiny_data, tmp_path):
    """Training previews: none in the VE-only phase (the flow is untrained there); the last one is
    what `crossflow sample` draws from the exported model (seeds 0.., sample.temperature)."""
    import numpy as np

    from crossflow_core.image_files import read_image

    prompts = ["a red circle", "a blue square"]
    extra = [
        "train.stage=two_stage", "train.ve_steps=2", "train.steps=4", "train.sample_every=1",
        "sample.temperature=0.5", f"sample.prompts={prompts}",
    ]
    run(tiny_overrides, tiny_data, tmp_path / "run", *extra)
    previews = sorted(p.name for p in (tmp_path / "run" / "samples").glob("step_*.png"))
    assert previews == ["step_00000003.png", "step_00000004.png"]

    grid = read_image(tmp_path / "run" / "samples" / "step_00000004.png").astype(int)
    settings = load_recipe("shapes", [*tiny_overrides, *extra]).sample.with_overrides(seed=0)
    drawn = CrossFlowPipeline.load(tmp_path / "run").generate(prompts, settings)
    expected = (drawn * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().astype(int)
    for i in range(len(prompts)):  # torchvision's grid: 2-pixel padding around 32x32 cells
        cell = grid[2:34, 2 + 34 * i : 34 + 34 * i]
        assert np.abs(cell - expected[i]).max() <= 1
    hot = CrossFlowPipeline.load(tmp_path / "run").generate(prompts, settings.with_overrides(temperature=1.0))
    assert not torch.allclose(hot, drawn, atol=2 / 255)  # the temperature is what makes them agree
