"""prepare -> shards + manifest -> load_training_arrays, atomic output, and the CLI command."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from crossflow_cli.prepare_cmd import prepare_command
from crossflow_core.data import prepare as prepare_mod
from crossflow_core.data.arrays import load_training_arrays
from crossflow_core.data.manifest import MANIFEST_NAME, Manifest
from crossflow_core.data.shards import iter_records, verify_shards
from crossflow_core.data.sources import load_rgb
from crossflow_core.errors import CrossflowError, OutputExistsError
from crossflow_core.recipe import DataConfig, PixelTargetConfig, TextSourceConfig, VAETargetConfig

MINILM = TextSourceConfig(encoder="minilm", max_length=12)
PIXELS = PixelTargetConfig()
NO_TEXT = DataConfig(
    source="shapes", image_size=32, num_samples=40, seed=1, shard_size=16, precompute_source=False
)


@pytest.fixture(scope="module")
def shapes_data(tiny_data) -> Path:
    """conftest's session dataset: 64 shapes samples (seed 0), shards of 40, MiniLM with L = 12."""
    return tiny_data


def test_manifest_fields(shapes_data):
    m = Manifest.load(shapes_data)
    assert m.num_samples == 64 and [s.count for s in m.shards] == [40, 24]
    assert m.fields == ("png", "txt", "json", "tokens.npy", "mask.npy")
    assert m.image_size == 32 and m.latent_shape == (3, 32, 32) and not m.has_latents
    assert (m.latent_scale, m.latent_shift) == (1.0, 0.0) and m.latent["kind"] == "pixels"
    assert m.text_embedding_shape == (12, 384)
    assert m.text_encoder["name"] == "minilm" and m.text_encoder["hidden_size"] == 384
    assert m.source == {"kind": "shapes", "split": "train", "seed": 0, "num_samples": 64, "image_size": 32}
    assert m.skipped == {} and m.notes == (
        "text features stored: tokens.npy, mask.npy",
        "target latents are the pixels (to_model_range of png): no latent.npy stored",
    )
    # the codecs that made the dataset, recorded for the checks at train time
    assert m.extra["source"] == m.text_encoder and m.extra["target"] == m.latent
    assert m.extra["feature_shapes"] == {"tokens.npy": [12, 384], "mask.npy": [12]}
    c = m.captions
    assert c.count == 64 and c.max_length == 12 and c.truncated == 0 and 3 <= c.max_tokens <= 12
    raw = json.loads((shapes_data / MANIFEST_NAME).read_text())
    assert raw["crossflow_version"] and raw["created"] and raw["format_version"] == 1
    verify_shards(shapes_data)


def test_arrays_equal_the_source(shapes_data):
    from crossflow_core.data.shapes import ShapesWorld
    from crossflow_core.encoders.text import TextEncoder

    a = load_training_arrays(shapes_data)
    assert set(a.fields) == {"png", "txt", "tokens.npy", "mask.npy"}  # every stored field but json
    world = ShapesWorld(image_size=32, seed=0)
    want = np.stack([world.sample(i).image for i in range(64)])
    images, captions, tokens, mask = a["png"], a["txt"], a["tokens.npy"], a["mask.npy"]
    assert images.dtype == torch.uint8 and images.shape == (64, 3, 32, 32)
    assert np.array_equal(images.permute(0, 2, 3, 1).numpy(), want)
    assert captions == [world.sample(i).caption for i in range(64)]
    assert tokens.dtype == torch.float16 and tokens.shape == (64, 12, 384)
    assert mask.dtype == torch.bool and mask.shape == (64, 12)
    assert "latent.npy" not in a and len(a) == 64
    emb = TextEncoder.from_config(MINILM).encode(captions)
    assert torch.equal(mask, emb.mask)
    torch.testing.assert_close(tokens.float(), emb.tokens, atol=2e-3, rtol=1e-3)  # float16 storage
    records = list(iter_records(shapes_data))
    assert [r.caption for r in records] == captions
    assert all(r.meta["category"] == world.sample(i).spec.category for i, r in enumerate(records))
    assert np.array_equal(np.stack([r.tokens for r in records]), tokens.numpy())
    # only the requested fields are read; a missing one is a one-line error
    only = load_training_arrays(shapes_data, ("tokens.npy", "mask.npy"))
    assert set(only.fields) == {"tokens.npy", "mask.npy"} and torch.equal(only["tokens.npy"], tokens)
    with pytest.raises(CrossflowError) as info:
        load_training_arrays(shapes_data, ("png", "latent.npy"))
    assert "\n" not in str(info.value) and "it has no latent.npy" in str(info.value)


def test_prepare_is_deterministic_and_reports_progress(tmp_path):
    calls = []
    for name in ("a", "b"):
        prepare_mod.prepare_dataset(
            NO_TEXT, MINILM, PIXELS, tmp_path / name, progress=lambda done, total: calls.append((done, total))
        )
    assert calls[-1] == (40, 40)
    first, second = Manifest.load(tmp_path / "a"), Manifest.load(tmp_path / "b")
    assert [s.sha256 for s in first.shards] == [s.sha256 for s in second.shards]  # byte-identical shards


def test_output_folder_rules(tmp_path):
    out = tmp_path / "ds"
    prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, out)
    with pytest.raises(OutputExistsError, match=r"is not empty: replace the dataset there \(overwrite\)"):
        prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, out)
    m = prepare_mod.prepare_dataset(replace(NO_TEXT, num_samples=5), MINILM, PIXELS, out, overwrite=True)
    assert m.num_samples == 5 and Manifest.load(out).num_samples == 5
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "shard-000000.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp folders left
    other = tmp_path / "mine"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(CrossflowError, match="refusing to delete"):
        prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, other, overwrite=True)
    assert (other / "precious.txt").exists()
    with pytest.raises(CrossflowError, match="is a file"):
        prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, other / "precious.txt")
    (tmp_path / "empty").mkdir()
    prepare_mod.prepare_dataset(replace(NO_TEXT, num_samples=3), MINILM, PIXELS, tmp_path / "empty")
    empty = load_training_arrays(tmp_path / "empty")
    assert set(empty.fields) == {"png", "txt"} and "tokens.npy" not in empty  # precompute_source=False
    assert Manifest.load(tmp_path / "empty").text_encoder is None


def test_interrupted_prepare_leaves_nothing_complete_looking(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare_mod.prepare_dataset(replace(NO_TEXT, num_samples=6), MINILM, PIXELS, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = prepare_mod.ShardWriter.write_files
    calls = {"n": 0}

    def failing(self, key, files):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt
        real(self, key, files)

    monkeypatch.setattr(prepare_mod.ShardWriter, "write_files", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the old dataset is untouched
    calls["n"] = 0
    with pytest.raises(KeyboardInterrupt):
        prepare_mod.prepare_dataset(NO_TEXT, MINILM, PIXELS, tmp_path / "fresh")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial output, no temp folder


def _folder(root: Path) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(root / f"img.{i}.png")
        (root / f"img.{i}.txt").write_text(f"random picture number {i}")
    (root / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "bad.txt").write_text("unreadable")
    Image.new("RGB", (9, 9)).save(root / "lonely.png")
    return root


def test_prepare_from_folder(tmp_path):
    src = _folder(tmp_path / "src")
    data = replace(NO_TEXT, source="folder", path=str(src), image_size=16)
    m = prepare_mod.prepare_dataset(data, MINILM, PIXELS, tmp_path / "out")
    assert m.num_samples == 5
    assert m.skipped == {"image_without_caption": 1, "unreadable_image": 1}
    assert m.source["kind"] == "folder" and m.source["skipped_examples"]["unreadable_image"] == ["bad.jpg"]
    a = load_training_arrays(tmp_path / "out")
    for i in range(5):
        want = np.asarray(load_rgb(src / f"img.{i}.png", 16))
        assert np.array_equal(a["png"][i].permute(1, 2, 0).numpy(), want)
        assert a["txt"][i] == f"random picture number {i}"
    with pytest.raises(CrossflowError, match="overlaps"):
        prepare_mod.prepare_dataset(data, MINILM, PIXELS, src / "inside", source_dir=src)


def test_vae_latents_are_precomputed(tmp_path):
    from diffusers import AutoencoderKL

    from crossflow_core.encoders.latents import build_latent_space, to_model_range

    torch.manual_seed(0)
    AutoencoderKL(
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.7,
    ).save_pretrained(tmp_path / "vae")
    lat = VAETargetConfig(vae=str(tmp_path / "vae"))
    # 40 samples: the VAE encodes 32 at a time, so the stored latents cross a batch boundary
    data = replace(NO_TEXT, num_samples=40, image_size=16, precompute_target=True)
    m = prepare_mod.prepare_dataset(data, MINILM, lat, tmp_path / "out")
    assert m.has_latents and m.latent_shape == (4, 8, 8) and m.latent_scale == pytest.approx(0.7)
    assert "moments.npy" in m.fields and m.latent["kind"] == "vae" and m.extra["target"] == m.latent
    a = load_training_arrays(tmp_path / "out")
    space = build_latent_space(lat)
    dist = space.vae.encode(to_model_range(a["png"])).latent_dist
    moments = a["moments.npy"]
    assert moments.dtype == torch.float16 and moments.shape == (40, 8, 8, 8)
    torch.testing.assert_close(moments[:, :4].float(), dist.mean.half().float())
    torch.testing.assert_close(moments[:, 4:].float(), dist.logvar.half().float())
    # the mode read back from the moments is the latent encode() gives, scaled
    want = space.encode(to_model_range(a["png"]))
    torch.testing.assert_close(space.from_moments(moments, sample=False), want, atol=2e-3, rtol=2e-3)


def test_vae_posterior_draws_follow_the_stored_moments():
    """from_moments(sample=True): mean + std * eps, scaled: over many draws the mean is the mode's
    and the std is scale * exp(logvar / 2) (a wrong sign of the log-variance fails)."""
    from crossflow_core.codecs.images import ImageTarget
    from crossflow_core.encoders.latents import VAELatentSpace

    class FakeVAE(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.config = type("C", (), {"scaling_factor": 0.5, "shift_factor": 0.25, "latent_channels": 2,
                                         "block_out_channels": (8, 8)})()

    space = VAELatentSpace(FakeVAE(), name="fake")
    mean = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).expand(20000, 2, 1, 1)
    logvar = torch.tensor([0.0, math.log(4.0)]).view(1, 2, 1, 1).expand(20000, 2, 1, 1)
    moments = torch.cat([mean, logvar], 1)
    torch.manual_seed(0)
    z = space.from_moments(moments, sample=True)
    mode = (torch.tensor([1.0, -2.0]) - 0.25) * 0.5
    torch.testing.assert_close(z.mean(0).flatten(), mode, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0).flatten(), torch.tensor([1.0, 2.0]) * 0.5, atol=0.02, rtol=0)
    assert torch.equal(space.from_moments(moments, sample=False)[0].flatten(), mode)
    sampled, mode = ImageTarget(space, "sample"), ImageTarget(space, "mode")
    fields = {"moments.npy": moments[:4].half()}
    idx = torch.arange(4)
    assert not torch.equal(sampled.from_fields(fields, idx, "cpu"), sampled.from_fields(fields, idx, "cpu"))
    assert torch.equal(mode.from_fields(fields, idx, "cpu"), mode.from_fields(fields, idx, "cpu"))


def test_cli_prepare(tmp_path):
    app = typer.Typer()
    app.command("prepare")(prepare_command)
    app.command("noop")(lambda: None)  # keep typer in multi-command mode
    runner = CliRunner()
    out = tmp_path / "data"
    args = [
        "prepare",
        "--recipe",
        "shapes",
        "--out",
        str(out),
        "--set",
        "data.num_samples=24",
        "--set",
        "data.precompute_source=false",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "prepared 24 samples in 1 shards" in res.output and str(out) in res.output
    assert Manifest.load(out).num_samples == 24
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "error:" in res.output and "is not empty" in res.output
    assert "(pass --overwrite to replace it)" in res.output
    res = runner.invoke(app, [*args, "--overwrite", "--set", "data.num_samples=10"])
    assert res.exit_code == 0 and Manifest.load(out).num_samples == 10
    src = _folder(tmp_path / "src")
    res = runner.invoke(
        app,
        [
            "prepare",
            "--from",
            str(src),
            "--out",
            str(tmp_path / "f"),
            "--set",
            "data.precompute_source=false",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "image_without_caption=1" in res.output and "unreadable_image=1" in res.output
    res = runner.invoke(app, ["prepare", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "g")])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_stale_partial_folders_of_dead_runs_are_removed(tmp_path):
    dead = tmp_path / ".ds.partial-999999999"
    (dead / "x").mkdir(parents=True)
    alive = tmp_path / f".ds.partial-{os.getppid()}"  # a live process's folder is left alone
    alive.mkdir()
    prepare_mod.prepare_dataset(replace(NO_TEXT, num_samples=2), MINILM, PIXELS, tmp_path / "ds")
    assert not dead.exists() and alive.exists()


def test_folder_of_only_unreadable_images_is_a_user_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    (src / "a.txt").write_text("a caption")
    data = replace(NO_TEXT, source="folder", path=str(src), image_size=16)
    with pytest.raises(CrossflowError, match="every image was skipped"):
        prepare_mod.prepare_dataset(data, MINILM, PIXELS, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
