"""Super-resolution as a CrossFlow task: the codec, the flow from the upsampled image, the
baselines, resume, export -> load, `crossflow upscale` and its bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from crossflow_cli.app import app
from crossflow_core.codecs import build_codecs
from crossflow_core.codecs.upsampled import downsample, low_res, upsample
from crossflow_core.data.arrays import load_training_arrays
from crossflow_core.encoders.latents import to_model_range
from crossflow_core.errors import CrossflowError
from crossflow_core.image_files import read_image, save_png
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import RecipeError, load_recipe
from crossflow_core.solvers import integrate
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.loop import train

SR_TINY = [
    "data.num_samples=48",
    "data.image_size=16",
    "data.shard_size=20",
    "source.factor=2",
    "model.unet_channels=[8, 16, 16]",
    "model.unet_attention=[false, false, true]",
    "model.unet_head_dim=8",
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.checkpoint_every=2",
    "train.sample_every=0",
    "train.log_every=1",
    "train.mixed_precision=no",
    "sample.steps=3",
]


def recipe(*extra: str):
    return load_recipe("sr_shapes", [*SR_TINY, *extra])


@pytest.fixture(scope="module")
def sr_data(tmp_path_factory) -> Path:
    from crossflow_core.data.prepare import prepare_dataset

    r = recipe()
    out = tmp_path_factory.mktemp("sr") / "data"
    prepare_dataset(r.data, r.source, r.target, out)
    return out


@pytest.fixture(scope="module")
def sr_run(sr_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sr") / "run"
    train(recipe("train.steps=4"), sr_data, out)
    return out


def test_training_source_equals_what_a_low_res_png_gives(sr_data, tmp_path):
    """The source built from the high-res shard PNG is bit-identical to the one built at inference
    from the 8-bit low-res PNG written to disk: training sees exactly what users feed."""
    r = recipe()
    source, target = build_codecs(r.source, r.target)
    arrays = load_training_arrays(sr_data, ("png",))
    idx = torch.arange(5)
    from_shards = source.from_fields(arrays, idx, torch.device("cpu")).x
    small = low_res(arrays["png"][idx], 2)
    paths = [save_png(small[i].permute(1, 2, 0).numpy(), tmp_path / f"{i}.png") for i in range(5)]
    from_files = source.encode([read_image(p) for p in paths], torch.device("cpu")).x
    assert torch.equal(from_shards, from_files)
    assert from_shards.shape == (5, 3, 16, 16) == target.from_fields(arrays, idx, torch.device("cpu")).shape


def test_degradation_properties():
    const = torch.full((1, 3, 16, 16), 0.25)
    assert torch.allclose(upsample(downsample(const, 4), 4), const, atol=1e-6)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert downsample(x, 2).shape == (2, 3, 8, 8) and upsample(downsample(x, 2), 2).shape == x.shape
    checker = (torch.arange(12)[:, None] + torch.arange(12)[None]) % 2 * 2.0 - 1  # +-1 at Nyquist
    flat = downsample(checker.expand(1, 3, 12, 12), 3)
    assert flat.abs().max() < 0.2  # anti-aliased: no spurious pattern survives
    with pytest.raises(CrossflowError, match="multiples of 3"):
        downsample(torch.zeros(1, 3, 16, 16), 3)
    # pixel target: uint8 -> latent -> decode is the identity
    r = recipe()
    _, target = build_codecs(r.source, r.target)
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    back = (target.decode(target.encode_images(img, torch.device("cpu"))) * 255).round().to(torch.uint8)
    assert torch.equal(back, img)


def test_zero_length_integration_returns_the_source():
    x0 = torch.randn(3, 3, 8, 8)
    out = integrate(lambda x, t: torch.ones_like(x), x0, steps=4, t0=0.3, t1=0.3)
    assert torch.equal(out, x0)


def test_a_zero_velocity_flow_returns_the_bicubic_upsampled_image(sr_data, tmp_path):
    """The DiT's output layer starts at zero: an untrained SR flow must return its source, the
    bicubic-upsampled low-res image (so the flow starts from the upsampled image, not noise)."""
    run = tmp_path / "run"
    train(recipe("model.arch=dit", "model.patch_size=4", "train.steps=0"), sr_data, run)
    pipe = CrossFlowPipeline.load(run, device="cpu")
    small = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    out = pipe.translate([small], pipe.defaults)
    want = (upsample(to_model_range(small[None]), 2) + 1) / 2
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)


def test_sr_resume_equals_uninterrupted(sr_data, tmp_path):
    train(recipe("train.steps=5"), sr_data, tmp_path / "whole")
    train(recipe("train.steps=2"), sr_data, tmp_path / "parts")
    assert train(recipe("train.steps=5"), sr_data, tmp_path / "parts").resumed_from == 2
    (a, sa), (b, sb) = (
        Checkpointer.load(Checkpointer(tmp_path / d, 1, 1).latest()) for d in ("whole", "parts")
    )
    assert sa["step"] == sb["step"] == 5
    for group in ("model", "ema", "optimizer"):
        assert a[group].keys() == b[group].keys()
        assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group


def test_export_load_batched_equals_single(sr_run, tmp_path):
    pipe = CrossFlowPipeline.load(sr_run, device="cpu")
    assert pipe.config.source["kind"] == "upsampled" and pipe.config.source["spec"] == {"factor": 2}
    rng = np.random.default_rng(1)
    smalls = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    batched = pipe.translate(smalls, pipe.defaults)
    singles = torch.cat(
        [pipe.translate([s], pipe.defaults.with_overrides(seed=i)) for i, s in enumerate(smalls)]
    )
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)  # conv kernels differ by batch size
    again = CrossFlowPipeline.load(sr_run / "model", device="cpu").translate(smalls, pipe.defaults)
    assert torch.equal(batched, again)
    assert not torch.equal(
        batched, (upsample(to_model_range(np.stack(smalls)), 2) + 1) / 2
    )  # it learned something


def test_baselines_share_the_network_and_differ_as_they_should(sr_data, tmp_path):
    fm = tmp_path / "fm"
    train(recipe("ve.kind=noise_concat", "train.steps=2"), sr_data, fm)
    pipe = CrossFlowPipeline.load(fm, device="cpu")
    index = json.loads((fm / "model" / "flow" / "config.json").read_text())
    assert index["args"]["cond_channels"] == 3  # the source is concatenated to the input
    small = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    a = pipe.translate([small], pipe.defaults.with_overrides(seed=0))
    assert torch.equal(a, pipe.translate([small], pipe.defaults.with_overrides(seed=0)))
    assert not torch.equal(
        a, pipe.translate([small], pipe.defaults.with_overrides(seed=1))
    )  # it starts from noise
    reg = recipe("flow.time_sampling=zero", "sample.steps=1", "train.steps=2")
    assert reg.flow.time_sampling == "zero"
    train(reg, sr_data, tmp_path / "reg")
    assert CrossFlowPipeline.load(tmp_path / "reg", device="cpu").nfe(reg.sample) == 1


def test_recipe_refuses_bad_pairs():
    with pytest.raises(RecipeError, match="not divisible by source.factor=3"):
        recipe("source.factor=3")
    with pytest.raises(RecipeError, match="ve.kind=text needs source.kind=text"):
        recipe("ve.kind=text")
    with pytest.raises(RecipeError, match="train.stage=two_stage pretrains a VE"):
        recipe("train.stage=two_stage")
    with pytest.raises(RecipeError, match="source.kind: invalid choice 'nope'"):
        recipe("source.kind=nope")


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def test_upscale_command_and_its_bad_inputs(sr_run, tmp_path):
    rng = np.random.default_rng(3)
    inputs = tmp_path / "in"
    save_png(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), inputs / "a.png")
    save_png(
        rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), inputs / "b.png"
    )  # another size, still allowed
    res = invoke("upscale", "--model", str(sr_run), str(inputs), "--out", str(tmp_path / "up"))
    assert res.exit_code == 0, res.output
    assert read_image(tmp_path / "up" / "a.png").shape == (16, 16, 3)
    assert read_image(tmp_path / "up" / "b.png").shape == (24, 32, 3)
    assert json.loads((tmp_path / "up" / "upscale.json").read_text())["factor"] == 2

    def refused(path: Path, match: str) -> None:
        out = tmp_path / f"out-{path.name}"
        res = invoke("upscale", "--model", str(sr_run), str(inputs / "a.png"), str(path), "--out", str(out))
        assert res.exit_code == 2, res.output
        assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not out.exists()  # nothing written, not even the good image

    save_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), tmp_path / "tiny.png")
    refused(tmp_path / "tiny.png", "smaller than the model's low-res size 8x8")
    (tmp_path / "notes.png").write_text("not an image")
    refused(tmp_path / "notes.png", "cannot read image")
    save_png(
        rng.integers(0, 256, (9, 8, 3), dtype=np.uint8), tmp_path / "odd.png"
    )  # 18 rows: not a multiple of 4
    refused(tmp_path / "odd.png", "cannot pass the network")
    refused(tmp_path / "missing.png", "does not exist")


def test_a_text_model_is_refused_by_upscale(tiny_overrides, tiny_data, tmp_path):
    from crossflow_core.upscale import upscale_files

    run = tmp_path / "t2i"
    train(load_recipe("shapes", [*tiny_overrides, "train.steps=1"]), tiny_data, run)
    pipe = CrossFlowPipeline.load(run, device="cpu")
    with pytest.raises(CrossflowError, match="not a super-resolution one"):
        upscale_files(pipe, [tmp_path], tmp_path / "o", pipe.defaults)


def test_eval_sr_of_a_model_and_of_bicubic(sr_run, tmp_path):
    from crossflow_core.data.shapes import ShapesWorld

    world = ShapesWorld(image_size=16, seed=9)
    for i in range(4):
        save_png(np.asarray(world.sample(i, "test").image), tmp_path / "hr" / f"{i}.png")
    res = invoke(
        "eval", "sr", str(tmp_path / "ev"), str(tmp_path / "hr"), "--model", str(sr_run), "--no-fid", "--json"
    )
    assert res.exit_code == 0, res.output
    values = {r["metric"]: r["value"] for r in json.loads(res.stdout)["results"]}
    assert (
        5 < values["psnr_mean"] < 60
        and sorted(p.name for p in (tmp_path / "ev" / "upscaled").iterdir())[0] == "0.png"
    )
    res = invoke(
        "eval", "sr", str(tmp_path / "bi"), str(tmp_path / "hr"), "--bicubic", "2", "--no-fid", "--json"
    )
    assert res.exit_code == 0, res.output
    res = invoke("eval", "sr", str(tmp_path / "bi"), str(tmp_path / "hr"), "--bicubic", "2", "--no-fid")
    assert res.exit_code == 2 and "is not empty" in res.stderr


def test_sr_in_vae_latent_space_precomputes_both_sides(tmp_path):
    """The paper-scale layout (sr_256) at toy size: a tiny AutoencoderKL; prepare stores the
    encoded upsampled source and the target latent, training reads only those, upscale decodes."""
    from diffusers import AutoencoderKL

    from crossflow_core.data.prepare import prepare_dataset

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(tmp_path / "vae")
    r = recipe(
        "target.kind=vae",
        f"target.vae={tmp_path / 'vae'}",
        "data.precompute_target=true",
        "model.unet_channels=[8, 16]",
        "model.unet_attention=[false, true]",
        "train.steps=2",
    )
    manifest = prepare_dataset(r.data, r.source, r.target, tmp_path / "data")
    assert {"source.npy", "moments.npy"} <= set(manifest.fields)
    assert manifest.extra["source"]["kind"] == "upsampled" and manifest.extra["feature_shapes"][
        "source.npy"
    ] == [4, 8, 8]
    source, target = build_codecs(r.source, r.target)
    assert source.train_fields(manifest.fields) + target.train_fields(manifest.fields) == (
        "source.npy",
        "moments.npy",
    )
    arrays = load_training_arrays(tmp_path / "data", ("png",))
    hr = arrays["png"][:3]
    want = target.space.encode(upsample(to_model_range(low_res(hr, 2)), 2))
    stored = load_training_arrays(tmp_path / "data", ("source.npy",))["source.npy"][:3].float()
    torch.testing.assert_close(stored, want, atol=2e-3, rtol=2e-3)  # float16 storage
    train(r, tmp_path / "data", tmp_path / "run")
    pipe = CrossFlowPipeline.load(tmp_path / "run", device="cpu")
    out = pipe.translate([low_res(hr[:1], 2)[0].permute(1, 2, 0).numpy()], pipe.defaults)
    assert out.shape == (1, 3, 16, 16) and 0 <= out.min() and out.max() <= 1


def test_prompts_to_an_sr_model_are_refused_in_one_line(sr_run):
    res = invoke("sample", "--model", str(sr_run), "a red circle", "--out", str(sr_run.parent / "never"))
    assert (
        res.exit_code == 2 and "source upsampled" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    )
    assert not (sr_run.parent / "never").exists()


def test_a_text_recipe_refuses_a_dataset_without_captions(tiny_overrides, tmp_path):
    from crossflow_core.data.prepare import prepare_dataset

    rng = np.random.default_rng(4)
    for i in range(10):
        save_png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), tmp_path / "pics" / f"{i}.png")
    r = recipe("data.image_size=32")
    # no captions
    prepare_dataset(r.data, r.source, r.target, tmp_path / "data", source_dir=tmp_path / "pics")
    with pytest.raises(CrossflowError, match="has no captions"):
        train(load_recipe("shapes", [*tiny_overrides, "train.steps=1"]), tmp_path / "data", tmp_path / "run")


def test_prepare_a_folder_recipe_without_a_folder_names_the_flag(tmp_path):
    res = invoke("prepare", "--recipe", "sr", "--out", str(tmp_path / "d"))
    assert res.exit_code == 2 and "pass --from FOLDER" in res.stderr and not (tmp_path / "d").exists()
