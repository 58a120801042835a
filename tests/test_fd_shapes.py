"""FD-shapes: the shipped feature network, the Fréchet distance, and what moves it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crossflow_core.errors import MissingResourceError
from crossflow_core.eval import fd_shapes as fds
from crossflow_core.eval import fd_shapes_train as fdt

N = 400  # images per side: enough for stable comparisons, ~1 s of features on a CPU


@pytest.fixture(scope="module")
def fnet() -> fds.FeatureNet:
    return fds.load_feature_net()


@pytest.fixture(scope="module")
def train_feats(fnet) -> np.ndarray:
    return fds.extract_features(fnet, fds.world_images("train", N))


def test_shipped_asset_is_small_and_matches_its_sidecar(fnet):
    sidecar = json.loads(fds.WEIGHTS_PATH.with_suffix(".json").read_text())
    assert fds.WEIGHTS_PATH.stat().st_size < 500_000
    assert sidecar["sha256"] == fnet.sha256 == fds.file_sha256(fds.WEIGHTS_PATH)
    assert sidecar["network"] == fds.NETWORK_NAME and "fid" not in fds.NETWORK_NAME
    assert sidecar["parameters"] == sum(p.numel() for p in fnet.net.parameters())


def test_frechet_distance_closed_form():
    # b = 2a + 3: mu_b = 2 mu_a + 3, S_b = 4 S_a, (S_a S_b)^1/2 = 2 S_a => FD = |mu_a + 3|^2 + tr S_a
    g = np.random.default_rng(0)
    a = g.normal(size=(500, 6)) @ g.normal(size=(6, 6))
    mu, cov = a.mean(0), np.cov(a, rowvar=False)
    expected = float(((mu + 3) ** 2).sum() + np.trace(cov))
    assert fds.frechet_distance(a, 2 * a + 3) == pytest.approx(expected, rel=1e-6)
    assert fds.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert fds.frechet_distance(a, a + 1.0) == pytest.approx(6.0, rel=1e-6)  # a pure shift of the mean


def test_fd_of_a_set_with_itself_is_zero(fnet, train_feats):
    assert abs(fds.frechet_distance(train_feats, train_feats)) < 1e-6


def test_fd_is_small_for_same_world_and_large_for_shifted_worlds(fnet, train_feats):
    def fd(images):
        return fds.frechet_distance(train_feats, fds.extract_features(fnet, images))

    disjoint = fd(fds.world_images("train", N, start=N))
    test = fd(fds.world_images("test", N))
    colour = fd(fds.colour_shifted(fds.world_images("train", N)))
    size = fd(fds.size_shifted("train", N, factor=0.6))
    print(f"FD-shapes n={N}: disjoint {disjoint:.1f} test {test:.1f} colour {colour:.1f} size {size:.1f}")
    assert test < 3 * disjoint  # the held-out split is the same world (up to held-out combos)
    assert colour > 5 * test and size > 5 * test


def test_64px_renders_reduce_to_the_32px_features(fnet, train_feats):
    same_scenes_64 = fds.extract_features(fnet, fds.world_images("train", N, image_size=64))
    other_scenes_32 = fds.extract_features(fnet, fds.world_images("train", N, start=N))
    assert fds.frechet_distance(train_feats, same_scenes_64) < 0.1 * fds.frechet_distance(
        train_feats, other_scenes_32
    )


def test_float_input_is_quantised_like_saved_pngs(fnet):
    images = fds.world_images("test", 8)
    as_float = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(fds.extract_features(fnet, images), fds.extract_features(fnet, as_float))
    np.testing.assert_array_equal(
        fds.extract_features(fnet, images), fds.extract_features(fnet, list(images))
    )


def test_the_shipped_network_is_trained(fnet):
    x, t = fdt.dataset("test", 200, seed=0)
    acc = fdt.head_accuracy(fnet.net, x, t)
    assert acc["count"] > 0.95 and acc["quadrants_exact"] > 0.9 and acc["size_mae"] < 0.02


def test_training_is_reproducible(tmp_path):
    torch.manual_seed(123)  # train() seeds itself; the caller's RNG state must not matter
    a = fdt.train(tmp_path / "a" / "w.safetensors", n_train=64, epochs=1, seed=3, n_eval=16)
    b = fdt.train(tmp_path / "b" / "w.safetensors", n_train=64, epochs=1, seed=3, n_eval=16)
    assert a["sha256"] == b["sha256"]
    assert json.loads((tmp_path / "a" / "w.json").read_text())["sha256"] == a["sha256"]
    fds.load_feature_net(tmp_path / "a" / "w.safetensors")


def test_missing_weights_is_one_line(tmp_path):
    with pytest.raises(MissingResourceError, match="crossflow eval weights fd-shapes") as exc:
        fds.load_feature_net(tmp_path / "none.safetensors")
    assert "\n" not in str(exc.value) and "--" not in str(exc.value)
