"""Monocular depth as a CrossFlow task: the shapes world's depth, depth sidecars, the codec, prepare,
train -> export -> `crossflow depth`, resume, `crossflow eval depth` and their bad inputs."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from crossflow_cli.app import app
from crossflow_core.codecs import build_target
from crossflow_core.data.arrays import load_training_arrays
from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.data.shapes import ShapesWorld
from crossflow_core.data.shapes_depth import (
    CAMERA_HEIGHT_M,
    GROUND_RANGE_M,
    PITCH_DEG,
    contact_depth,
    ground_depth,
)
from crossflow_core.data.sources import ShapesSource
from crossflow_core.depth_files import fit_image_and_depth, read_depth_file, save_depth_png
from crossflow_core.errors import CrossflowError
from crossflow_core.image_files import save_png
from crossflow_core.pipeline import CrossFlowPipeline
from crossflow_core.recipe import DepthTargetConfig, RecipeError, load_recipe
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.loop import train

DEPTH_TINY = [
    "data.num_samples=48",
    "data.image_size=16",
    "data.shard_size=20",
    "ve.width=8",
    "model.unet_channels=[8, 16, 16]",
    "model.unet_attention=[false, false, true]",
    "model.unet_head_dim=8",
    "train.batch_size=8",
    "train.warmup_steps=2",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "train.mixed_precision=no",
    "sample.steps=3",
]
# sha256 of the images and captions of samples 0..23 of both splits at 32 px, as rendered before
# depth existed: the text-to-image benchmarks depend on these bytes.
RGB_DIGEST = "57bb7d9f1efa8fa9a3ebcef0315f0901964fbe0de22f154b4a7182c6b20c927f"


def recipe(*extra: str):
    return load_recipe("depth_shapes", [*DEPTH_TINY, *extra])


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def depth_data(tmp_path_factory) -> Path:
    r = recipe()
    out = tmp_path_factory.mktemp("depth") / "data"
    prepare_dataset(r.data, r.source, r.target, out)
    return out


@pytest.fixture(scope="module")
def depth_run(depth_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("depth") / "run"
    train(recipe("train.steps=4"), depth_data, out)
    return out


def one_line(res, match: str, code: int = 2) -> None:
    assert res.exit_code == code, res.output
    assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


# --- the shapes world's depth ---------------------------------------------------------------


def test_rgb_images_and_captions_are_unchanged():
    h = hashlib.sha256()
    world = ShapesWorld(32)
    for split in ("train", "test"):
        for i in range(24):
            s = world.sample(i, split)
            h.update(s.image.tobytes())
            h.update(s.caption.encode())
    assert h.hexdigest() == RGB_DIGEST


def test_ground_plane_known_values_and_monotone():
    # the principal row (y_n = 0) lies at H / sin(pitch); the image edges at GROUND_RANGE_M
    assert ground_depth(16.0, 32) == pytest.approx(CAMERA_HEIGHT_M / math.sin(math.radians(PITCH_DEG)))
    assert GROUND_RANGE_M == pytest.approx((0.95555, 9.93653), rel=1e-4)
    rows = ground_depth(np.arange(64) + 0.5, 64)
    assert np.all(np.diff(rows) < 0)  # farther towards the top of the image (the horizon)


@pytest.mark.parametrize("size", [32, 48])
def test_depth_maps_follow_the_camera_and_the_objects(size):
    world = ShapesWorld(size, seed=1)
    from crossflow_core.data.shapes import coverage

    for split in ("train", "test"):
        for i in range(40):
            scene = world.sample(i, split).scene
            depth = world.depth(i, split)
            assert depth.shape == (size, size) and depth.dtype == np.float32
            ground = ground_depth(np.arange(size) + 0.5, size)[:, None] * np.ones((1, size))
            owned = np.zeros((size, size), bool)
            for o in scene.objects:
                cov = coverage(o.shape, o.cx, o.cy, o.size, 0, 0, size, size) >= 0.5
                z = contact_depth(o, size)
                assert np.all(depth[cov] == np.float32(z))  # one depth per object
                # nearer than the ground behind it (at its contact row: up to half a pixel)
                assert np.all(
                    z <= ground[cov] * (1 + 0.5 * np.abs(np.diff(ground[:, 0])).max() / ground[cov])
                )
                owned |= cov
            np.testing.assert_allclose(depth[~owned], ground[~owned], rtol=1e-6)  # the rest is ground
            assert np.array_equal(world.depth(i, split), depth)  # deterministic


def test_shapes_source_adds_depth_only_when_asked():
    plain = list(ShapesSource(32, 3, seed=0))
    deep = list(ShapesSource(32, 3, seed=0, with_depth=True))
    assert all(r.depth is None for r in plain)
    for a, b in zip(plain, deep):
        assert a.key == b.key and a.caption == b.caption and np.array_equal(a.image, b.image)
    assert np.array_equal(deep[2].depth, ShapesWorld(32).depth(2))


# --- the codec and the recipes --------------------------------------------------------------


@pytest.mark.parametrize("log", [False, True])
def test_codec_round_trip_and_range(log):
    codec = build_target(DepthTargetConfig(min_depth=0.5, max_depth=10.0, log=log))
    assert codec.latent_shape(24) == (1, 24, 24)
    d = torch.rand(3, 24, 24) * 9.5 + 0.5
    z = codec.encode(d)
    assert z.shape == (3, 1, 24, 24) and z.min() >= -1 and z.max() <= 1
    back = codec.decode(z.half())[:, 0]  # float16 latents, as stored features would be
    torch.testing.assert_close(back, d, rtol=5e-3, atol=0)
    ends = codec.encode(torch.tensor([[[0.5, 10.0, 0.1, 50.0]]]))
    assert ends.flatten().tolist() == [-1.0, 1.0, -1.0, 1.0]  # near -> -1, far -> +1, clipped outside
    mid = codec.encode(torch.tensor([[[math.sqrt(5.0) if log else 5.25]]]))
    assert abs(float(mid)) < 1e-6  # the geometric (log) or arithmetic (linear) middle maps to 0
    assert codec.decode(torch.full((1, 1, 2, 2), 3.0)).max() == 10.0  # decoding clamps


def test_recipes_load_and_refuse_bad_ranges():
    for name in ("depth_shapes", "depth_nyu", "depth_kitti"):
        r = load_recipe(name)
        assert r.task == "depth" and r.target.kind == "depth" and r.ve.kind == "image"
    assert load_recipe("depth_kitti").data.depth_scale == 256.0
    with pytest.raises(RecipeError, match="target.max_depth=1.0 must be > target.min_depth=2.0"):
        recipe("target.min_depth=2.0", "target.max_depth=1.0")
    with pytest.raises(RecipeError, match="target.log=true needs target.min_depth > 0"):
        recipe("target.min_depth=0")
    with pytest.raises(RecipeError, match="data.depth_scale=0.0 must be > 0"):
        recipe("data.depth_scale=0")
    res = invoke("recipes")
    assert res.exit_code == 0 and "depth_nyu" in res.stdout and "depth_kitti" in res.stdout


# --- depth files and folders ----------------------------------------------------------------


def test_depth_sidecars_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    depth = np.round(rng.uniform(0.3, 60.0, (7, 9)), 3).astype(np.float32)
    depth[0, 0] = 0  # no depth
    save_depth_png(depth, tmp_path / "a.depth.png")
    with Image.open(tmp_path / "a.depth.png") as im:
        assert im.mode.startswith("I;16") and np.asarray(im)[0, 0] == 0
    np.testing.assert_allclose(read_depth_file(tmp_path / "a.depth.png"), depth, atol=5e-4)  # millimetres
    np.save(tmp_path / "b.depth.npy", depth)
    assert np.array_equal(read_depth_file(tmp_path / "b.depth.npy"), depth)
    save_depth_png(depth, tmp_path / "k.depth.png", depth_scale=256.0)  # KITTI's units
    np.testing.assert_allclose(read_depth_file(tmp_path / "k.depth.png", 256.0), depth, atol=1 / 512 + 1e-6)


def write_pair(
    folder: Path, name: str, h: int, w: int, depth_h: int | None = None, kind: str = "png"
) -> None:
    """An image whose red channel is its column index, and a depth map of metres = 1 + column."""
    cols = np.arange(w)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (cols * 255 // max(w - 1, 1))[None]
    save_png(image, folder / f"{name}.png")
    depth = np.tile(1.0 + cols, (depth_h or h, 1)).astype(np.float32)
    if kind == "png":
        save_depth_png(depth, folder / f"{name}.depth.png")
    else:
        np.save(folder / f"{name}.depth.npy", depth)


def test_image_and_depth_are_cropped_alike(tmp_path):
    write_pair(tmp_path, "wide", 32, 64)  # shorter side 32 -> 16: x0.5, then the central 16 of 32 columns
    image, depth = fit_image_and_depth(tmp_path / "wide.png", tmp_path / "wide.depth.png", 16)
    assert image.size == (16, 16) and depth.shape == (16, 16)
    source_cols = depth[0] - 1  # nearest neighbour: each output column reads one source column
    assert np.all((source_cols >= 2 * np.arange(16) + 16) & (source_cols <= 2 * np.arange(16) + 17))
    assert np.all(depth == depth[:1])


def test_prepare_a_folder_with_depth_and_its_bad_inputs(tmp_path):
    good = tmp_path / "good"
    write_pair(good, "a", 20, 20)
    write_pair(good / "sub", "b", 20, 30, kind="npy")
    r = recipe()
    m = prepare_dataset(r.data, r.source, r.target, tmp_path / "data", source_dir=good)
    assert (
        m.num_samples == 2 and "depth.npy" in m.fields and m.extra["feature_shapes"]["depth.npy"] == [16, 16]
    )
    stored = load_training_arrays(tmp_path / "data", ("depth.npy",))["depth.npy"].float()
    assert stored[0].min() >= 1 and stored[0].max() <= 20 and stored[1].max() <= 30

    def refused(folder: Path, match: str) -> None:
        out = tmp_path / f"out-{folder.name}"
        res = invoke(
            "prepare",
            "--recipe",
            "depth_shapes",
            *sum((["--set", s] for s in DEPTH_TINY), []),
            "--from",
            str(folder),
            "--out",
            str(out),
        )
        one_line(res, match)
        assert not out.exists() and not list(tmp_path.glob(f".out-{folder.name}*"))  # nothing half-written

    missing = tmp_path / "missing"
    write_pair(missing, "a", 20, 20)
    save_png(np.zeros((20, 20, 3), np.uint8), missing / "lonely.png")
    refused(missing, "lonely.png has no depth map")
    wrong = tmp_path / "wrong"
    write_pair(wrong, "a", 20, 20)
    write_pair(wrong, "z", 20, 20, depth_h=18)
    refused(wrong, "z.depth.png is 20x18 but its image z.png is 20x20")
    corrupt = tmp_path / "corrupt"
    write_pair(corrupt, "a", 20, 20)
    write_pair(corrupt, "z", 20, 20, kind="npy")
    (corrupt / "z.depth.npy").write_bytes(b"not a numpy file")
    refused(corrupt, "cannot read depth map")
    eight_bit = tmp_path / "eightbit"
    write_pair(eight_bit, "a", 20, 20)
    save_png(np.zeros((20, 20, 3), np.uint8), eight_bit / "a.depth.png")
    refused(eight_bit, "not 16-bit greyscale")


def test_prepared_shapes_store_the_worlds_depth(depth_data):
    arrays = load_training_arrays(depth_data, ("png", "depth.npy"))
    world = ShapesWorld(16)
    for i in (0, 7, 47):
        np.testing.assert_allclose(arrays["depth.npy"][i].float().numpy(), world.depth(i), rtol=1e-3)
        assert np.array_equal(arrays["png"][i].permute(1, 2, 0).numpy(), world.sample(i).image)


# --- train, export, crossflow depth, eval ---------------------------------------------------


def test_depth_resume_equals_uninterrupted(depth_data, tmp_path):
    train(recipe("train.steps=5"), depth_data, tmp_path / "whole")
    train(recipe("train.steps=2"), depth_data, tmp_path / "parts")
    assert train(recipe("train.steps=5"), depth_data, tmp_path / "parts").resumed_from == 2
    (a, sa), (b, sb) = (
        Checkpointer.load(Checkpointer(tmp_path / d, 1, 1).latest()) for d in ("whole", "parts")
    )
    assert sa["step"] == sb["step"] == 5
    for group in ("model", "ema", "optimizer"):
        assert a[group].keys() == b[group].keys()
        assert all(torch.equal(a[group][k], b[group][k]) for k in a[group]), group


def test_depth_command_writes_16_bit_millimetres(depth_run, tmp_path):
    world = ShapesWorld(16, seed=3)
    for i in range(3):
        save_png(world.sample(i, "test").image, tmp_path / "in" / f"{i}.png")
    np.save(tmp_path / "in" / "0.depth.npy", world.depth(0, "test"))  # a sidecar in the folder: skipped
    res = invoke("depth", "--model", str(depth_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert res.exit_code == 0, res.output
    pipe = CrossFlowPipeline.load(depth_run, device="cpu")
    images = [world.sample(i, "test").image for i in range(3)]
    want = pipe.translate(images, pipe.defaults)[:, 0].numpy()
    record = json.loads((tmp_path / "out" / "depth.json").read_text())
    assert record["depth_scale"] == 1000.0 and [o["seed"] for o in record["outputs"]] == [0, 1, 2]
    for i in range(3):
        with Image.open(tmp_path / "out" / f"{i}.depth.png") as im:
            assert im.mode.startswith("I;16") and im.size == (16, 16)
            mm = np.asarray(im).astype(np.float64)
        np.testing.assert_allclose(mm / 1000, want[i], atol=5e-4 + 1e-6)
        assert 500 <= mm.min() and mm.max() <= 10000  # within [min_depth, max_depth]
        with Image.open(tmp_path / "out" / f"{i}.preview.png") as im:
            assert im.mode == "RGB" and im.size == (16, 16)
    assert not (tmp_path / "out" / "0.depth.depth.png").exists()


@pytest.fixture(scope="module")
def sr_model(tmp_path_factory) -> tuple[Path, Path]:
    """A prepared SR dataset (no depth) and a 1-step SR run: a model of another task."""
    tmp = tmp_path_factory.mktemp("sr")
    r = load_recipe(
        "sr_shapes",
        [
            "data.num_samples=16",
            "data.image_size=16",
            "source.factor=2",
            "model.unet_channels=[8, 16]",
            "model.unet_attention=[false, true]",
            "model.unet_head_dim=8",
            "train.batch_size=8",
            "train.steps=1",
            "train.sample_every=0",
            "train.mixed_precision=no",
        ],
    )
    prepare_dataset(r.data, r.source, r.target, tmp / "data")
    train(r, tmp / "data", tmp / "run")
    return tmp / "data", tmp / "run"


def test_depth_command_refuses_bad_inputs(depth_run, sr_model, tmp_path):
    sr = sr_model[1]
    save_png(ShapesWorld(16).sample(0).image, tmp_path / "ok.png")
    save_png(np.zeros((12, 16, 3), np.uint8), tmp_path / "small.png")
    (tmp_path / "broken.png").write_text("not an image")
    cases = [
        (sr, ["ok.png"], "not a depth one"),
        (depth_run, ["ok.png", "small.png"], "small.png is 16x12, but this depth model takes 16x16"),
        (depth_run, ["ok.png", "broken.png"], "cannot read image"),
        (depth_run, ["ok.png", "absent.png"], "does not exist"),
    ]
    for i, (model, files, match) in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = invoke("depth", "--model", str(model), *[str(tmp_path / f) for f in files], "--out", str(out))
        one_line(res, match)
        assert not out.exists()  # nothing written, not even the good image
    res = invoke("eval", "depth", "--model", str(sr), "--shapes", "2")
    one_line(res, "not a depth one")


def test_eval_depth_of_a_model_the_mean_baseline_and_a_folder(depth_run, depth_data, tmp_path):
    res = invoke("eval", "depth", "--model", str(depth_run), "--shapes", "4", "--json")
    assert res.exit_code == 0, res.output
    values = {r["metric"]: r["value"] for r in json.loads(res.stdout)["results"]}
    assert {"abs_rel", "delta1", "rmse", "abs_rel_aligned", "delta1_aligned", "rmse_aligned"} <= set(values)
    assert values["rmse_aligned"] <= values["rmse"] + 1e-9  # least squares can only lower the error
    # the same images and depths as a folder of sidecars score the same (the folder path is exact)
    world = ShapesWorld(16, seed=0)
    for i in range(4):
        save_png(world.sample(i, "test").image, tmp_path / "refs" / f"{i}.png")
        np.save(tmp_path / "refs" / f"{i}.depth.npy", world.depth(i, "test"))
    res = invoke("eval", "depth", "--model", str(depth_run), "--data", str(tmp_path / "refs"), "--json")
    assert res.exit_code == 0, res.output
    again = {r["metric"]: r["value"] for r in json.loads(res.stdout)["results"]}
    assert again == pytest.approx(values, rel=1e-9)
    # the mean baseline: the training set's per-pixel mean depth map, scored like a model
    res = invoke("eval", "depth", "--mean-of", str(depth_data), "--shapes", "4", "--json")
    assert res.exit_code == 0, res.output
    mean = {r["metric"]: r for r in json.loads(res.stdout)["results"]}
    stored = load_training_arrays(depth_data, ("depth.npy",))["depth.npy"].double().mean(0)
    gt = np.stack([world.depth(i, "test") for i in range(4)]).astype(np.float64)
    want = np.mean([np.mean(np.abs(stored.numpy() - g) / g) for g in gt])
    assert mean["abs_rel"]["value"] == pytest.approx(want, rel=1e-5)
    assert mean["abs_rel"]["settings"]["mean"] == "per-pixel mean map"


def test_eval_depth_refuses_references_without_depth(depth_run, tmp_path):
    save_png(ShapesWorld(16).sample(0).image, tmp_path / "plain" / "0.png")
    res = invoke("eval", "depth", "--model", str(depth_run), "--data", str(tmp_path / "plain"))
    one_line(res, "0.png has no depth map")
    write_pair(tmp_path / "odd", "a", 16, 16, depth_h=15)
    res = invoke("eval", "depth", "--model", str(depth_run), "--data", str(tmp_path / "odd"))
    one_line(res, "a.depth.png is 16x15 but its image a.png is 16x16")
    res = invoke("eval", "depth", "--model", str(depth_run))
    one_line(res, "pass --data FOLDER")


def test_a_depth_recipe_refuses_a_dataset_without_depth(sr_model, tmp_path):
    sr_data, _ = sr_model
    with pytest.raises(CrossflowError, match="holds no depth maps"):
        train(recipe("train.steps=1"), sr_data, tmp_path / "run")
    res = invoke("eval", "depth", "--mean-of", str(sr_data), "--shapes", "2")
    one_line(res, "holds no depth maps")
