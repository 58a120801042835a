"""The VE's official reduction stages, the contrastive temperature forms, the EMA's decay, the VE's
logged signal, and the demo's strict single-object check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossflow_core.codecs import SourceBatch
from crossflow_core.data.shapes import CATEGORIES, Scene, ShapeObject, render, scene_for
from crossflow_core.errors import CrossflowError
from crossflow_core.eval.shapes_checker import score, score_alone
from crossflow_core.eval.shapes_demo import COMPOSITIONS, demo_samples, single_object_specs
from crossflow_core.recipe import RecipeError, load_recipe
from crossflow_core.train.loop import ema_start_share, make_ema
from crossflow_core.train.system import ve_signal
from crossflow_core.ve import TextVariationalEncoder, VEOutput
from crossflow_core.ve_objectives import logit_multiplier


def _ve(reduction: str, reduce_layers: int = 2) -> TextVariationalEncoder:
    return TextVariationalEncoder(
        24, 6, (3, 8, 8), width=32, depth=1, heads=2, ffn=64, dropout=0.0,
        reduce_layers=reduce_layers, reduction=reduction,
    ).eval()


def test_encoder_reduction_stages_attend_then_halve():
    ve = _ve("encoder")
    widths = [(stage.layer.self_attn.embed_dim, stage.halve.in_features, stage.halve.out_features)
              for stage in ve.reduce]
    assert widths == [(32, 32, 16), (16, 16, 8)]
    assert ve.to_moments.in_features == 6 * 8
    # the stage mixes tokens: changing one real token moves every other position's output
    torch.manual_seed(0)
    h = torch.randn(1, 6, 32)
    pad = torch.zeros(1, 6, dtype=torch.bool)
    moved = h.clone()
    moved[0, 0] += 1.0
    stage = ve.reduce[0]
    assert not torch.allclose(stage(h, pad)[0, 1:], stage(moved, pad)[0, 1:])
    # the linear form is a per-token map: other positions do not move
    lin = _ve("linear")
    assert torch.allclose(lin.reduce(h)[0, 1:], lin.reduce(moved)[0, 1:])


@pytest.mark.parametrize("reduction", ["encoder", "linear"])
def test_reduction_ignores_padding_and_batches(reduction):
    torch.manual_seed(0)
    ve = _ve(reduction)
    tokens = torch.randn(3, 6, 24)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    other = tokens.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 24) * 100
    zero = torch.zeros(3, 3, 8, 8)
    mu = ve(SourceBatch(tokens, mask), noise=zero).mu
    torch.testing.assert_close(mu, ve(SourceBatch(other, mask), noise=zero).mu)
    single = torch.cat([ve(SourceBatch(tokens[i : i + 1], mask[i : i + 1]), noise=zero[:1]).mu
                        for i in range(3)])
    torch.testing.assert_close(mu, single, atol=1e-5, rtol=1e-5)
    # the mask is used: calling the padding real changes the first caption's latent
    assert not torch.allclose(mu[0], ve(SourceBatch(other, torch.ones_like(mask)), noise=zero).mu[0])


def test_reduction_is_a_recipe_choice_and_old_exports_rebuild():
    assert load_recipe("t2i_256").ve.reduction == "encoder"  # the official stages by default
    assert load_recipe("shapes").ve.reduction == "linear"  # the CPU demo's measured choice
    ve = TextVariationalEncoder(24, 6, (3, 8, 8))  # arguments stored before `reduction` existed
    assert ve.reduction == "linear" and ve.init_args["reduction"] == "linear"
    with pytest.raises(CrossflowError, match="reduction"):
        _ve("conv")
    with pytest.raises(RecipeError, match="ve.heads"):
        load_recipe("shapes", ["ve.reduction=encoder", "ve.width=24", "ve.heads=4", "ve.reduce_layers=3"])


def test_logit_scale_forms():
    s = torch.tensor(math.log(1 / 0.07))
    assert logit_multiplier(s, "raw").item() == pytest.approx(2.659, abs=1e-3)
    assert logit_multiplier(s, "exp").item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert logit_multiplier(torch.tensor(9.0), "exp").item() == pytest.approx(100.0)  # CLIP's cap
    assert load_recipe("shapes", ["ve.logit_scale_form=raw"]).ve.logit_scale_form == "raw"
    with pytest.raises(RecipeError):
        load_recipe("shapes", ["ve.logit_scale_form=log"])


def _ema_after(values, tc):
    p = torch.nn.Parameter(torch.tensor([values[0]]))
    ema = make_ema([p], tc)
    for v in values:
        p.data.fill_(v)
        ema.step([p])
    return ema.shadow_params[0].item()


def test_ema_decay_means_what_the_recipe_says():
    tc = load_recipe("shapes", ["train.ema_decay=0.9", "train.ema_warmup=false"]).train
    values = [1.0, 2.0, 4.0, 8.0]
    expected = values[0]  # the first update copies the weights
    for v in values[1:]:
        expected = 0.9 * expected + 0.1 * v
    assert _ema_after(values, tc) == pytest.approx(expected, rel=1e-6)
    # the warm-up ramp is an option: decay (1 + s) / (10 + s) at update s + 1, capped at 0.9
    warm = load_recipe("shapes", ["train.ema_decay=0.9", "train.ema_warmup=true"]).train
    ramp = values[0]
    for s, v in enumerate(values[1:], start=1):
        d = min(0.9, (1 + s) / (10 + s))
        ramp = d * ramp + (1 - d) * v
    assert _ema_after(values, warm) == pytest.approx(ramp, rel=1e-6)
    assert abs(ramp - expected) > 0.1  # the two rules really differ


def test_ve_signal():
    mu = torch.randn(1, 3, 4, 4).repeat(5, 1, 1, 1)
    logvar = torch.full_like(mu, math.log(0.25))
    mu_std, sigma = ve_signal(VEOutput(z0=mu, mu=mu, logvar=logvar))
    assert mu_std.item() == 0.0 and sigma.item() == pytest.approx(0.5)
    spread = torch.stack([torch.full((3, 4, 4), float(k)) for k in range(4)])
    mu_std, sigma = ve_signal(VEOutput(z0=spread, mu=spread))
    assert mu_std.item() == pytest.approx(torch.arange(4.0).std().item()) and sigma.item() == 0.0


def _scene(*objects) -> Scene:
    return Scene(tuple(ShapeObject(*o) for o in objects))


def test_score_alone_refuses_extra_objects():
    spec = single_object_specs()[0]  # a red circle
    alone = render(_scene(("circle", "red", 10.0, 10.0, 10.0)), 32)
    crowded = render(_scene(("circle", "red", 10.0, 10.0, 10.0), ("square", "blue", 24.0, 24.0, 8.0)), 32)
    assert score(alone, spec).correct and score_alone(alone, spec).correct
    assert score(crowded, spec).correct  # GenEval's colors rule allows the extra square
    result = score_alone(crowded, spec)
    assert not result.correct and "alone, found 2" in result.reason


class _FakePipeline:
    """Draws the ground truth of each prompt (plus, with `extra`, a second object)."""

    def __init__(self, extra: bool) -> None:
        self.extra, self.seeds = extra, []

    def generate(self, prompts, settings):
        specs = {s.prompt: s for s in single_object_specs()}
        images = []
        for i, prompt in enumerate(prompts):
            seed = settings.seed + i
            self.seeds.append(seed)
            spec = specs.get(prompt)
            if spec is None:
                images.append(np.full((32, 32, 3), 245, np.uint8))
                continue
            rng = np.random.default_rng(seed)
            objects = list(scene_for(spec, rng, 32).objects)
            if self.extra:
                far = 6.0 if objects[0].cx > 16 else 26.0
                objects.append(ShapeObject("square", "green", far, far, 7.0))
            images.append(render(Scene(tuple(objects)), 32))
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("extra", [False, True])
def test_demo_report_counts_a_second_object_as_a_miss(tmp_path, extra):
    settings = load_recipe("shapes").sample.with_overrides(seed=100)
    pipe = _FakePipeline(extra)
    report = demo_samples(pipe, settings, tmp_path, seeds=2)
    assert report["total"] == 36 and report["seeds"] == 2
    assert pipe.seeds == list(range(100, 100 + 36 + len(COMPOSITIONS)))  # one seed per image
    if not extra:
        assert report["single_object_accuracy"] == 1.0 and not report["misses"]
    else:
        assert report["single_object_accuracy"] == 0.0
        assert report["colour_and_shape_extra_objects_allowed"] == 1.0
        assert report["more_than_one_object"] == 1.0
    assert set(report["per_prompt"].values()) == ({2} if not extra else {0})
    for name in ("single_objects.png", "single_objects_all_seeds.png", "compositions.png"):
        assert (tmp_path / name).is_file()


def test_shapes_data_mix_weights_categories():
    from crossflow_core.data.sources import ShapesSource, build_source

    mix = ("single_object", "colors", "single_object", "two_object")
    recipe = load_recipe("shapes", [f"data.categories=[{','.join(mix)}]", "data.num_samples=8"])
    source = build_source(recipe.data)
    cats = [record.meta["category"] for record in source]
    assert cats == [mix[k % 4] for k in range(8)]
    assert source.describe()["categories"] == list(mix)
    default = ShapesSource(32, 6, 0)
    assert [r.meta["category"] for r in default] == list(CATEGORIES)
    assert "categories" not in default.describe()  # the default mix keeps older manifests unchanged


def test_short_runs_are_warned_of_a_stale_ema():
    overrides = ["train.ema_warmup=false", "train.ema_decay=0.999", "train.steps=320"]
    short = load_recipe("shapes", overrides).train
    assert ema_start_share(short) == pytest.approx(0.999**319)  # ~73%: warned at train start
    assert ema_start_share(load_recipe("shapes", ["train.ema_warmup=true"]).train) == 0.0
    assert ema_start_share(load_recipe("t2i_256").train) < 1e-40
