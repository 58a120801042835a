"""`crossflow train --dry-run`: FLOPs against a hand count, params against a real build, the
paper-scale recipe sized with no network and no weights, and the CLI's table / JSON / errors."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from crossflow_cli.app import app
from crossflow_core.recipe import load_recipe
from crossflow_core.train.dry_run import (
    UnknownShapeError,
    build_meta_system,
    dry_run,
    parse_assumptions,
    shape_facts,
)
from crossflow_core.train.system import CrossFlowSystem

# A tiny DiT system: pixels 3x32x32, patch 4 (N = 64 tokens), width 32, 2 blocks, 2 heads; VE on
# 12 MiniLM tokens (384-d), width 32, 1 layer, ffn 64, reduce 32 -> 16 -> 8; CNN tower width 8.
TINY_DIT = [
    "source.max_length=12",
    "ve.width=32",
    "ve.depth=1",
    "ve.heads=2",
    "ve.ffn=64",
    "ve.reduce_layers=2",
    "ve.reduction=encoder",
    "ve.image_encoder_width=8",
    "model.arch=dit",
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "model.patch_size=4",
    "train.batch_size=8",
]


def dit_macs(c: int, s: int, p: int, w: int, depth: int, mlp: int = 4) -> tuple[int, int]:
    """Multiply-adds of one sample through the DiT flow network (latent c x s x s, patch p,
    width w): (MACs of layers whose input needs a gradient, MACs of those whose input needs none).

    Patch embed conv, time MLP, per block adaLN / qkv / scores / values / proj / MLP, final
    adaLN and projection. Only time_mlp[0] (on the sinusoidal features of t) has an input that
    needs no gradient; x_t = f(z0 from the VE, x1) needs one in the joint phase."""
    n, hid = (s // p) ** 2, mlp * w
    block = w * 6 * w + n * w * 3 * w + n * n * w + n * n * w + n * w * w + 2 * n * w * hid
    return n * w * c * p * p + w * w + depth * block + w * 2 * w + n * w * p * p * c, 256 * w


def hand_count_macs(b: int) -> dict[str, tuple[int, int]]:
    """Multiply-adds of one forward of the tiny DiT system at batch b, per component, as
    (MACs whose layer input needs a gradient, MACs of layers whose input needs none).

    FlopCounterMode's conventions: 2 FLOPs per MAC; a matmul's backward is two matmuls of the
    forward's size (grad wrt input, grad wrt weight), so such a layer costs 3x its forward;
    a layer whose input needs no gradient (the data, or t's sinusoidal features) computes only
    its weight gradient: 2x. Conv backward alike. Bias adds, norms, softmax are not counted."""
    c, s = 3, 32
    flow, flow_no_grad_input = dit_macs(c, s, p=4, w=32, depth=2)
    # VE: input projection (of the LM tokens: no gradient), one post-LN encoder layer
    # (packed in-proj, scores, values, out-proj, FFN), two reduction stages (an encoder layer at
    # the stage's width, then a Linear halving it), to (mu, logvar).
    length, d, vw, ffn, numel = 12, 384, 32, 64, 3 * 32 * 32

    def layer(w: int) -> int:
        return length * w * 3 * w + 2 * length * length * w + length * w * w + 2 * length * w * ffn

    stages = sum(layer(w) + length * w * (w // 2) for w in (vw, vw // 2))
    ve = layer(vw) + stages + length * (vw // 4) * 2 * numel
    ve_no_grad_input = length * d * vw
    # L_enc: the CNN tower on the target (first conv's input is data), its head, InfoNCE logits.
    tw = 8
    conv1 = s * s * tw * c * 9
    tower = (s // 2) ** 2 * 2 * tw * tw * 9 + (s // 4) ** 2 * 4 * tw * 2 * tw * 9
    head = 64 * tw * 4 * tw + 4 * tw * numel
    return {
        "flow": (b * flow, b * flow_no_grad_input),
        "ve": (b * ve, b * ve_no_grad_input),
        "objective": (b * (tower + head) + b * b * numel, b * conv1),
    }


def test_flops_per_step_equal_the_hand_count():
    recipe = load_recipe("shapes", TINY_DIT)
    report = dry_run(recipe)
    macs = hand_count_macs(8)
    step = sum(2 * (3 * grad + 2 * no_grad) for grad, no_grad in macs.values())
    forward = {name: 2 * (grad + no_grad) for name, (grad, no_grad) in macs.items()}
    assert report.flops_per_step == step
    assert report.flops_forward_by_component == {**forward, "other": 0}
    assert report.flops_forward == sum(forward.values())
    assert report.flops_forward_per_sample == sum(forward.values()) / 8


def test_flops_scale_with_the_processes():
    recipe = load_recipe("shapes", TINY_DIT)
    one, two = dry_run(recipe, 1), dry_run(recipe, 2)
    assert two.batch_per_gpu == 4
    macs = hand_count_macs(4)
    assert two.flops_per_step == sum(2 * (3 * g + 2 * n) for g, n in macs.values())
    assert two.flops_per_step < one.flops_per_step
    assert two.memory.ddp_buckets == 4 * two.trainable_params and one.memory.ddp_buckets == 0


@pytest.mark.parametrize("overrides", [TINY_DIT, ["model.arch=unet", "ve.objective=text_reconstruction"]])
def test_meta_params_equal_a_real_cpu_build(overrides):
    recipe = load_recipe("shapes", overrides)
    facts = shape_facts(recipe)
    real = CrossFlowSystem.from_recipe(recipe, facts.spec, facts.latent_shape)
    meta = build_meta_system(recipe, facts)
    assert all(p.is_meta for p in meta.parameters())
    assert {k: v.shape for k, v in meta.state_dict().items()} == {
        k: v.shape for k, v in real.state_dict().items()
    }
    report = dry_run(recipe)
    for name in ("ve", "flow", "objective"):
        assert report.params[name] == sum(p.numel() for p in getattr(real, name).parameters())
    assert report.params_total == report.trainable_params == sum(p.numel() for p in real.parameters())


def test_minilm_token_dim_matches_the_embedded_model():
    from crossflow_core.encoders.text import resolve_name

    config = json.loads((Path(resolve_name("minilm")) / "config.json").read_text())
    assert shape_facts(load_recipe("shapes")).spec == {"num_tokens": 16, "token_dim": config["hidden_size"]}


def dit_params(width: int, depth: int, patch: int, channels: int) -> int:
    """Parameters of the FlowTransformer (DiT with adaLN-Zero, mlp ratio 4, CFG indicator)."""
    w = width
    block = (w * 3 * w + 3 * w) + (w * w + w) + (w * 4 * w + 4 * w + 4 * w * w + w) + (w * 6 * w + 6 * w)
    embed = channels * patch * patch * w + w + (256 * w + w) + (w * w + w) + 2 * w
    final = (w * 2 * w + 2 * w) + (w * patch * patch * channels + patch * patch * channels)
    return embed + depth * block + final


@pytest.fixture
def no_network_no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dry run must not touch the network or load weights")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("crossflow_core.encoders.latents._load_vae", refuse)
    monkeypatch.setattr("crossflow_core.encoders.text.TextEncoder.from_config", refuse)


def test_t2i_256_at_paper_scale_without_network_or_weights(no_network_no_weights):
    recipe = load_recipe("t2i_256")
    start = time.perf_counter()
    report = dry_run(recipe, num_processes=8)
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"the t2i_256 dry run took {elapsed:.1f}s"
    assert report.latent_shape == (4, 32, 32) and report.spec == {"num_tokens": 77, "token_dim": 768}
    # DiT-H/2 (width 1280, depth 36, patch 2) on 4x32x32 latents: 1,067,667,216 parameters, 12%
    # above the paper's 0.95B, which is the whole CrossFlow model of the paper's DiMR-based config.
    assert report.params["flow"] == dit_params(1280, 36, 2, 4) == 1_067_667_216
    assert 1.0 < report.params["flow"] / 0.95e9 < 1.15
    w, length, d = 768, 77, 768

    def layer(w: int) -> int:  # one post-LN encoder layer: attention, FFN 1024, two LayerNorms
        return (3 * w * w + 3 * w) + (w * w + w) + (w * 1024 + 1024 + 1024 * w + w) + 4 * w

    # the official reduction stages: an encoder layer at 768, 384, 192, each then a Linear halving
    reduce = sum(layer(k) + k * (k // 2) + k // 2 for k in (768, 384, 192))
    ve = (d * w + w) + length * w + 11 * layer(w) + reduce + (length * 96 * 2 * 4096 + 2 * 4096)
    assert report.params["ve"] == ve
    assert 1.1e9 < report.params_total < 1.25e9
    print(
        f"t2i_256: params {report.params}, total {report.params_total:,}; "
        f"{report.flops_per_step / 1e12:.1f} TFLOP/step/GPU; {report.memory.total / 2**30:.1f} GiB/GPU "
        f"({elapsed:.1f}s)"
    )
    # FLOPs: the flow's forward is the hand count of `dit_macs` at 128 samples per GPU, exactly,
    # and the flow dominates the step (fwd + bwd ~ 3x the forward).
    n, width, depth = 256, 1280, 36
    grad, no_grad = dit_macs(4, 32, p=2, w=width, depth=depth)
    assert report.flops_forward_by_component["flow"] == 128 * 2 * (grad + no_grad)
    assert 0.97 < 128 * 2 * (3 * grad + 2 * no_grad) / report.flops_per_step < 1.0
    # Memory: fp32 weights, grads, 2 AdamW moments, EMA, DDP buckets; then the activations. Under
    # bf16 autocast a DiT block saves per token and channel: the fp32 residual and norm outputs
    # (2 x 2 x 4 B), the bf16 inputs of qkv, proj (= attention out), fc2 and the outputs of proj,
    # fc1 (4 wide), fc2 (2 + 6 + 2 + 2 + 8 + 2 B) and q, k, v (6 B): 48 B. The VE, the tower and the
    # bf16 weight copies add a little.
    m = report.memory
    p = report.params_total
    assert (m.weights, m.grads, m.optimizer, m.ema, m.ddp_buckets) == (4 * p, 4 * p, 8 * p, 4 * p, 4 * p)
    blocks = 48 * n * width * depth * report.batch_per_gpu
    assert blocks < m.activations < 1.15 * blocks
    assert m.total == 24 * p + m.activations
    assert "bf16" in m.activation_dtype


def test_bf16_autocast_saves_less_than_fp32():
    bf16 = dry_run(load_recipe("shapes", TINY_DIT + ["train.mixed_precision=bf16"]))
    fp32 = dry_run(load_recipe("shapes", TINY_DIT + ["train.mixed_precision=no"]))
    assert 0 < bf16.memory.activations < fp32.memory.activations
    assert bf16.flops_per_step == fp32.flops_per_step


def test_shape_facts_from_local_configs_and_explicit_values(tmp_path):
    lm, vae = tmp_path / "lm", tmp_path / "vae_model"
    lm.mkdir()
    (lm / "config.json").write_text(json.dumps({"model_type": "t5", "d_model": 4096}))
    (vae / "vae").mkdir(parents=True)
    (vae / "vae" / "config.json").write_text(
        json.dumps({"latent_channels": 16, "block_out_channels": [128, 256, 512, 512]})
    )
    recipe = load_recipe("t2i_256", [f"source.encoder={lm}", f"target.vae={vae}"])
    facts = shape_facts(recipe)
    assert facts.spec["token_dim"] == 4096 and facts.latent_shape == (16, 32, 32)
    unknown = load_recipe("t2i_256", ["source.encoder=someone/unknown-lm", "target.vae=someone/unknown-vae"])
    with pytest.raises(UnknownShapeError, match="token_dim"):
        shape_facts(unknown)
    facts = shape_facts(unknown, parse_assumptions(["token_dim=1024"]))
    assert facts.spec["token_dim"] == 1024 and facts.latent_shape == (4, 32, 32)
    assert any("assumed SD-style" in note for note in facts.notes)
    with pytest.raises(Exception, match="KEY=N"):
        parse_assumptions(["width=3"])


runner = CliRunner()
SETS = [item for o in TINY_DIT for item in ("--set", o)]


def test_cli_dry_run_prints_the_table_without_data():
    result = runner.invoke(app, ["train", "--recipe", "shapes", *SETS, "--dry-run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for text in ("params: flow", "FLOPs per step per GPU", "memory per GPU (estimate)", "activations"):
        assert text in result.output


def test_cli_dry_run_json_and_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["train", "--recipe", "shapes", *SETS, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_processes"] == 2 and report["batch_per_gpu"] == 4
    assert report["flops_per_step"] == sum(2 * (3 * g + 2 * n) for g, n in hand_count_macs(4).values())
    assert report["memory"]["total"] > report["memory"]["activations"] > 0


def test_cli_train_without_data_fails_with_one_line():
    result = runner.invoke(app, ["train", "--recipe", "shapes"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--data" in lines[0] and "--dry-run" in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_unknown_token_dim_names_the_flag():
    result = runner.invoke(
        app, ["train", "--recipe", "t2i_256", "--set", "source.encoder=someone/unknown-lm", "--dry-run"]
    )
    assert result.exit_code == 2
    assert "--assume token_dim=N" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", ["depth_shapes", "sr_shapes"])
def test_image_task_shape_facts_equal_the_codecs_and_a_real_build(name):
    """Image sources (depth) and upsampled ones (SR): the dry run's facts are what the codecs
    say, and its meta system has the real system's parameters."""
    from crossflow_core.codecs import build_codecs

    recipe = load_recipe(name)
    facts = shape_facts(recipe)
    source, target = build_codecs(recipe.source, recipe.target, image_size=recipe.data.image_size)
    assert facts.latent_shape == tuple(target.latent_shape(recipe.data.image_size))
    if recipe.source.kind == "image":
        assert facts.spec == source.spec()
    real = CrossFlowSystem.from_recipe(recipe, facts.spec, facts.latent_shape)
    report = dry_run(recipe)
    assert report.params_total == sum(p.numel() for p in real.parameters())
    assert report.flops_per_step > 0
