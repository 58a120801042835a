"""FID / KID / IS through torch-fidelity's own network and metric functions, on CPU.

The reference is torch-fidelity's `calculate_metrics` on the same folders with the same weights
file: a randomly initialised torch-fidelity Inception (so no download or wheel is needed). Fast
tests shrink torch-fidelity's resize target to 75 px (the smallest Inception input) and use the
"192" feature layer; the full 299 px / 2048-d comparison is marked slow.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from typer.testing import CliRunner

from crossflow_core.errors import MissingResourceError
from crossflow_core.eval import fid as fidmod
from crossflow_core.eval.fid import FolderImages, ShardImages, TensorImages, compute_metrics, image_source
from crossflow_core.eval.inception import (
    check_images,
    inception_skeleton,
    missing_weights_message,
)

N = 20


def _random_inception(path: Path, seed: int = 0) -> Path:
    """A torch-fidelity Inception with He-normal convs and a random classifier, saved as a state dict."""
    torch.manual_seed(seed)
    net = inception_skeleton()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.nn.init.normal_(net.fc.weight, std=1.0)
    torch.nn.init.normal_(net.fc.bias, std=0.1)
    torch.save(net.state_dict(), path)
    return path


def _informative_classifier(weights: Path, images: torch.Tensor, out: Path) -> Path:
    """Same network; fc made blind to the mean feature and scaled so logits vary by ~3 across images
    (a random fc on a random network gives an Inception score of 1.000..., too flat to test)."""
    state = torch.load(weights, weights_only=True)
    with torch.inference_mode():
        (f,) = fidmod.prepare_extractor(dict(state))(images)
    mu = f.mean(0)
    w = state["fc.weight"] - (state["fc.weight"] @ mu)[:, None] * mu[None] / mu.dot(mu)
    w = w * (3.0 / (f @ w.T).std())
    torch.save({**state, "fc.weight": w.contiguous()}, out)
    return out


def _write_folder(images: torch.Tensor, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _random_inception(tmp_path_factory.mktemp("w") / "random-inception.pth")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, torch.Tensor]:
    """Two clearly different sets of 32x32 renders: A (shapes) and B (colour-inverted others)."""
    root = tmp_path_factory.mktemp("img")
    imgs = check_images(2 * N)
    a = _write_folder(imgs[:N], root / "a")
    b = _write_folder(255 - imgs[N:], root / "b")
    return a, b, imgs[:N]


@pytest.fixture
def small_inception(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch-fidelity resizes to 75x75 instead of 299x299 (both paths read this attribute)."""
    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


def _torch_fidelity(a: Path, b: Path, weights: Path, layer: str, **kw) -> dict[str, float]:
    import torch_fidelity

    return torch_fidelity.calculate_metrics(
        input1=str(a),
        input2=str(b),
        feature_extractor_weights_path=str(weights),
        feature_layer_fid=layer,
        feature_layer_kid=layer,
        cuda=False,
        cache=False,
        verbose=False,
        save_cpu_ram=True,
        **kw,
    )


def _values(results) -> dict[str, float | None]:
    return {r.metric: r.value for r in results}


def test_fid_kid_equal_torch_fidelity(small_inception, weights, folders, tmp_path):
    a, b, _ = folders
    kw = dict(weights=weights, cache_dir=tmp_path, kid_subset_size=N, metrics=("fid", "kid"))
    ours = _values(compute_metrics(a, b, feature_layer="192", **kw))
    ref = _torch_fidelity(a, b, weights, "192", fid=True, kid=True, kid_subset_size=N)
    assert ours["fid"] > 1.0  # the two sets really differ, so the comparison means something
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
    # every KID subset is the whole set here, so its std is rounding noise on both sides
    kid = ref["kernel_inception_distance_mean"]
    assert abs(ours["kid_std"] - ref["kernel_inception_distance_std"]) < 1e-5 * kid


def test_isc_equals_torch_fidelity(small_inception, weights, folders, tmp_path):
    """The Inception score needs the whole network: 8 images keep torch-fidelity's own run short."""
    a, b, imgs = folders
    a8 = _write_folder(imgs[:8], tmp_path / "a8")
    weights = _informative_classifier(weights, imgs, tmp_path / "w.pth")
    ours = _values(compute_metrics(a8, b, weights=weights, use_cache=False, metrics=("isc",), isc_splits=2))
    import torch_fidelity

    ref = torch_fidelity.calculate_metrics(
        input1=str(a8), isc=True, isc_splits=2, feature_extractor_weights_path=str(weights),
        cuda=False, cache=False, verbose=False, save_cpu_ram=True,
    )
    assert ours["isc_mean"] > 1.5  # informative enough for the comparison to mean something
    assert ours["isc_mean"] == pytest.approx(ref["inception_score_mean"], rel=1e-4)
    assert ours["isc_std"] == pytest.approx(ref["inception_score_std"], rel=1e-3, abs=1e-6)


def test_fid_same_set_is_zero_and_cache_skips_extraction(
    small_inception, weights, folders, tmp_path, monkeypatch
):
    a, b, _ = folders
    calls = []
    real = fidmod.extract_features

    def counting(src, *args, **kwargs):
        calls.append(src.name)
        return real(src, *args, **kwargs)

    monkeypatch.setattr(fidmod, "extract_features", counting)
    kw = dict(weights=weights, cache_dir=tmp_path, metrics=("fid", "kid"), kid_subset_size=N)
    kw["feature_layer"] = "64"
    first = compute_metrics(a, b, **kw)
    assert len(calls) == 2 and first[0].settings["cache_a"] == first[0].settings["cache_b"] == "miss"
    again = compute_metrics(a, b, **kw)
    assert len(calls) == 2, "a cached source was extracted again"
    assert {r.settings["cache_b"] for r in again} == {"hit"}
    assert _values(again) == _values(first)
    same = compute_metrics(a, a, **kw)
    assert len(calls) == 2
    assert abs(_values(same)["fid"]) < 1e-6 * _values(first)["fid"]
    # unbiased MMD^2 of a set with itself (every subset = the whole set): (2/m)(mean k_ij,i!=j - mean k_ii)
    f = fidmod.extract_features(FolderImages.scan(a), fidmod.prepare_extractor(weights, ["64"]))["64"]
    k = (f.astype(np.float64) @ f.T.astype(np.float64) / f.shape[1] + 1) ** 3
    off = (k.sum() - np.trace(k)) / (N * (N - 1))
    assert _values(same)["kid_mean"] == pytest.approx(2 / N * (off - np.trace(k) / N), rel=1e-2)
    # a changed file changes the source identity: the cache must not answer for it
    a2 = tmp_path / "a2"
    shutil.copytree(a, a2)
    compute_metrics(a2, b, **kw)
    n = len(calls)
    assert compute_metrics(a2, b, **kw)[0].settings["cache_a"] == "hit" and len(calls) == n
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(a2 / "000.png")
    assert compute_metrics(a2, b, **kw)[0].settings["cache_a"] == "miss"
    assert calls[n:] == [str(a2.resolve())]


def test_tensor_shard_and_folder_sources_agree(small_inception, weights, folders, tmp_path):
    a, b, imgs = folders
    kw = dict(weights=weights, use_cache=False, metrics=("fid",), feature_layer="64")
    ref = _values(compute_metrics(a, b, **kw))["fid"]
    # float images in [0, 1] (the sampler's output) quantise back to the same uint8 pixels
    as_float = imgs.float() / 255
    assert _values(compute_metrics(as_float, b, **kw))["fid"] == pytest.approx(ref, rel=1e-6)
    assert _values(compute_metrics(imgs, b, **kw))["fid"] == pytest.approx(ref, rel=1e-6)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "manifest.json").write_text("{}")
    for s, part in enumerate((imgs[:12], imgs[12:])):
        with tarfile.open(shards / f"shard-{s:06d}.tar", "w") as tar:
            for i, im in enumerate(part):
                for ext, data in (("txt", b"caption"), ("png", _png(im))):
                    info = tarfile.TarInfo(f"{s}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    src = image_source(shards)
    assert isinstance(src, ShardImages) and len(src) == N
    assert torch.equal(torch.stack([src.read(i) for i in range(N)]), imgs)
    assert _values(compute_metrics(shards, b, **kw))["fid"] == pytest.approx(ref, rel=1e-6)


def _png(im: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(im.permute(1, 2, 0).numpy()).save(buf, format="PNG")
    return buf.getvalue()


def test_batch_size_and_mixed_sizes(small_inception, weights, folders, tmp_path):
    a, b, imgs = folders
    kw = dict(weights=weights, use_cache=False, metrics=("fid",), feature_layer="64")
    one = _values(compute_metrics(a, b, batch_size=1, **kw))["fid"]  # batched == one at a time
    seven = _values(compute_metrics(a, b, batch_size=7, **kw))["fid"]
    assert seven == pytest.approx(one, rel=1e-5)
    # a folder of mixed sizes (recursive) is read in sorted order and batched per size
    mixed = tmp_path / "mixed"
    _write_folder(imgs[:6], mixed / "x32")
    big = torch.nn.functional.interpolate(imgs[6:10].float(), size=48).round().to(torch.uint8)
    _write_folder(big, mixed / "y48")
    (mixed / "x32" / ".00007.png.tmp-1.png").write_bytes(b"half-written")  # hidden: skipped
    src = FolderImages.scan(mixed)
    assert [p.parent.name for p in src.files] == ["x32"] * 6 + ["y48"] * 4
    net = fidmod.prepare_extractor(weights, ["64"])
    feats = fidmod.extract_features(src, net, batch_size=8)["64"]
    single = fidmod.extract_features(TensorImages.of(big[:1]), net, batch_size=1)["64"]
    assert feats.shape == (10, 64)
    np.testing.assert_allclose(feats[6], single[0], rtol=1e-5, atol=1e-6)


def test_converted_weights_report_no_inception_score(small_inception, folders, tmp_path):
    a, b, _ = folders
    w = tmp_path / "no-fc.pth"
    state = torch.load(_random_inception(w), weights_only=True)
    state["fc.weight"].zero_()
    state["fc.bias"].zero_()
    torch.save(state, w)
    res = compute_metrics(a, b, weights=w, use_cache=False, metrics=("fid", "isc"), feature_layer="64")
    by = {r.metric: r for r in res}
    assert by["fid"].value is not None and by["fid"].value > 0
    assert by["isc_mean"].value is None and by["isc_std"].value is None
    assert "classifier" in by["isc_mean"].settings["unavailable"]
    s = by["fid"].settings
    assert s["n_a"] == s["n_b"] == N and s["resize"] == "torch-fidelity bilinear 299"
    assert len(s["weights_sha256"]) == 64 and s["feature_layer"] == "64"


def test_missing_weights_is_one_line(tmp_path, monkeypatch, folders):
    monkeypatch.setenv("CROSSFLOW_CACHE", str(tmp_path / "empty-cache"))
    a, b, _ = folders
    with pytest.raises(MissingResourceError) as exc:
        compute_metrics(a, b)
    msg = str(exc.value)
    assert msg == missing_weights_message() and "\n" not in msg
    assert 'pip install "crossflow[fid]" && crossflow eval weights inception' in msg
    assert "--weights" not in msg  # the core names no CLI flag; the CLI adds it (test below)


def _cli() -> typer.Typer:
    from crossflow_cli.eval_fid_cmd import register

    app = typer.Typer()
    register(app)
    return app


def test_cli_json_and_missing_weights(small_inception, weights, folders, tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSFLOW_CACHE", str(tmp_path / "cache"))
    a, b, _ = folders
    runner = CliRunner()
    out = tmp_path / "res.json"
    args = ["fid", str(a), str(b), "--weights", str(weights), "--metrics", "fid", "--feature-layer", "64"]
    args += ["--nfe", "8"]
    res = runner.invoke(_cli(), [*args, "--json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    (fid,) = doc["results"]
    assert fid["metric"] == "fid" and fid["value"] > 0 and fid["settings"]["nfe"] == 8
    assert json.loads(out.read_text()) == doc
    table = runner.invoke(_cli(), args)
    assert table.exit_code == 0 and "fid" in table.stdout and "hit" in table.stdout
    missing = runner.invoke(_cli(), ["fid", str(a), str(b)])
    assert missing.exit_code == 1
    lines = missing.stderr.splitlines()
    assert len(lines) == 1 and "crossflow eval weights inception" in lines[0], missing.stderr
    assert "--weights" in lines[0] and missing.stdout == ""


@pytest.mark.slow
def test_full_size_fid_kid_equal_torch_fidelity(weights, folders, tmp_path):
    """The standard setting: 299x299 resize and 2048-d pool3 features (about a minute on 2 cores)."""
    a, b, _ = folders
    kw = dict(weights=weights, cache_dir=tmp_path, kid_subset_size=N, metrics=("fid", "kid"))
    ours = _values(compute_metrics(a, b, **kw))
    ref = _torch_fidelity(a, b, weights, "2048", fid=True, kid=True, kid_subset_size=N)
    assert ours["fid"] == pytest.approx(ref["frechet_inception_distance"], rel=1e-4)
    assert ours["kid_mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-4)
