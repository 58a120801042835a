"""Super-resolution evaluation: degradation, bicubic baseline, PSNR / SSIM, folder pairing, CLI.

Tiny images (16x16 to 24x24) keep every test well under a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import typer
from typer.testing import CliRunner

from crossflow_cli.eval_sr_cmd import eval_sr_command
from crossflow_core.errors import CrossflowError, MissingResourceError
from crossflow_core.eval import inception
from crossflow_core.eval import sr_metrics as sr
from crossflow_core.image_files import read_image, save_png


def _smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """float [n, 3, size, size] in [0, 1]: low-frequency colour fields (photo-like, not noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _write(folder: Path, images: torch.Tensor, names: list[str] | None = None) -> list[Path]:
    names = names or [f"{i:03d}.png" for i in range(len(images))]
    return [save_png(im, folder / name) for im, name in zip(images, names)]


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_identical_is_inf_not_capped():
    x = _smooth_images(2)
    scores = sr.psnr_ssim(x, x.clone())
    assert torch.isinf(scores.psnr).all() and (scores.psnr > 0).all()  # torchmetrics does not cap
    assert sr.mean_std(scores.psnr) == sr.MeanStd(math.inf, None, 2)


def test_psnr_of_known_mse_is_10_log10_of_its_inverse():
    ref = torch.full((2, 3, 16, 16), 0.5, dtype=torch.float64)
    sign = torch.ones(16, 16, dtype=torch.float64)
    sign[::2] = -1  # +-d alternating rows: squared error exactly d^2 everywhere
    d = torch.tensor([0.125, 0.03125], dtype=torch.float64)
    out = ref + d[:, None, None, None] * sign
    psnr = sr.psnr_ssim(out, ref).psnr
    expected = [10 * math.log10(1 / float(v) ** 2) for v in d]
    # Exact up to torchmetrics' float32 constant 10 / ln(10) (relative error ~5e-8).
    assert psnr.tolist() == pytest.approx(expected, rel=1e-7, abs=0)
    assert psnr[0].item() == pytest.approx(10 * math.log10(64), rel=1e-7, abs=0)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = _smooth_images(3)
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(x.shape, generator=g)
    ssim_same = sr.psnr_ssim(x, x.clone()).ssim
    assert ssim_same.tolist() == pytest.approx([1.0] * 3, abs=1e-12)
    little = sr.psnr_ssim((x + 0.02 * noise).clamp(0, 1), x).ssim
    lots = sr.psnr_ssim((x + 0.2 * noise).clamp(0, 1), x).ssim
    assert (lots < little).all() and (little < 1.0).all() and (lots < 0.6).all()


def _ssim_index_m(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s ssim_index.m, literally (one channel in [0, 1]): fspecial('gaussian', 11, 1.5),
    filter2(..., 'valid'), K = (0.01, 0.03), mean of the SSIM map."""
    from scipy.signal import correlate2d

    t = np.arange(-5, 6)
    w = np.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * 1.5**2))
    w /= w.sum()

    def f(x: np.ndarray) -> np.ndarray:
        return correlate2d(x, w, mode="valid")

    c1, c2 = 0.01**2, 0.03**2
    mu1, mu2 = f(a), f(b)
    s11, s22, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


def _noisy_pair(h: int = 24, w: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    x = F.interpolate(torch.rand(2, 3, 5, 5, generator=g), size=(h, w), mode="bilinear").clamp(0, 1)
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1).double(), x.double()


def test_ssim_is_wang_et_al_on_the_valid_region_averaged_over_rgb():
    out, ref = _noisy_pair()
    ssim = sr.psnr_ssim(out, ref).ssim
    for i in range(2):
        channels = [_ssim_index_m(out[i, c].numpy(), ref[i, c].numpy()) for c in range(3)]
        assert ssim[i].item() == pytest.approx(float(np.mean(channels)), abs=1e-12)


def test_ssim_and_psnr_equal_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    out, ref = _noisy_pair()
    scores = sr.psnr_ssim(out, ref)
    for i in range(2):
        a, b = out[i].permute(1, 2, 0).numpy(), ref[i].permute(1, 2, 0).numpy()
        kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        ssim = metrics.structural_similarity(b, a, data_range=1.0, channel_axis=2, **kw)
        assert scores.ssim[i].item() == pytest.approx(ssim, abs=1e-12)
        psnr = metrics.peak_signal_noise_ratio(b, a, data_range=1.0)
        assert scores.psnr[i].item() == pytest.approx(psnr, rel=1e-7)


def test_psnr_ssim_rejects_bad_shapes():
    x = _smooth_images(1)
    with pytest.raises(CrossflowError, match="must both be"):
        sr.psnr_ssim(x, x[:, :, :8])
    with pytest.raises(CrossflowError, match="at least 11x11"):
        sr.psnr_ssim(x[:, :, :8, :8], x[:, :, :8, :8])


def test_mean_std_is_population_std():
    s = sr.mean_std(torch.tensor([1.0, 3.0]))
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 2)


# ----------------------------------------------------------------------------- degradation


@pytest.mark.parametrize(("value", "value_range"), [(-0.3, (-1.0, 1.0)), (0.7, (0.0, 1.0))])
def test_degrade_then_upsample_keeps_a_constant(value, value_range):
    x = torch.full((2, 3, 16, 16), value)
    low = sr.degrade(x, 4, value_range)
    assert low.shape == (2, 3, 4, 4)
    back = sr.upsample(low, 4, value_range)
    assert back.shape == x.shape
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)


def test_degrade_and_upsample_clamp_to_the_range():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(1, 3, 16, 16, generator=g) > 0.5).float()  # hard edges: bicubic overshoots
    raw = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False)
    assert raw.min() < 0 and raw.max() > 1
    up = sr.upsample(x, 2, (0.0, 1.0))
    assert up.min() >= 0 and up.max() <= 1
    assert sr.upsample(x * 2 - 1, 2).min() >= -1  # default: the model range


def test_degrade_with_a_factor_that_does_not_divide_raises_one_line():
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(CrossflowError) as err:
        sr.degrade(x, 3)
    msg = str(err.value)
    assert "16x16" in msg and "3" in msg and "\n" not in msg and "--" not in msg
    with pytest.raises(CrossflowError, match="16x12.*factor of 8"):
        sr.degrade(torch.zeros(1, 3, 16, 12), 8)
    for bad in (0, -2, 2.0):
        with pytest.raises(CrossflowError, match=">= 1"):
            sr.degrade(x, bad)
    with pytest.raises(CrossflowError, match=">= 1"):
        sr.upsample(x, 0)


def test_antialias_turns_a_nyquist_checkerboard_grey_instead_of_aliasing():
    i = torch.arange(24)
    checker = ((i[:, None] + i[None]) % 2).float().expand(1, 3, 24, 24).contiguous()
    low = sr.degrade(checker, 3, (0.0, 1.0))
    assert low.shape == (1, 3, 8, 8)
    assert (low - 0.5).abs().max() < 0.02  # flat grey: the pattern is above the new Nyquist limit
    # Without the anti-aliasing filter the same resize is a full-contrast (aliased) checkerboard,
    # so the assertion above is what antialias=True buys.
    aliased = F.interpolate(checker, size=(8, 8), mode="bicubic", antialias=False, align_corners=False)
    assert aliased.std() > 0.4


# ----------------------------------------------------------------------------- folders


def test_pair_folders_matches_stems_across_extensions(tmp_path):
    from PIL import Image

    imgs = _smooth_images(4)
    _write(tmp_path / "out", imgs[:3], ["b.png", "a.png", "10.png"])
    _write(tmp_path / "ref", imgs, ["a.png", "b.png", "10.png", "unpaired.png"])
    jpg = tmp_path / "ref" / "c.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(jpg)
    save_png(imgs[0], tmp_path / "out" / "c.png")
    pairs = sr.pair_folders(tmp_path / "out", tmp_path / "ref")
    assert [p.name for p in pairs] == ["10", "a", "b", "c"]  # the outputs' natural order
    assert pairs[-1].reference == jpg and all(p.size == (16, 16) for p in pairs)
    assert [p.reference.name for p in pairs[:3]] == ["10.png", "a.png", "b.png"]


def test_pair_folders_errors(tmp_path):
    imgs = _smooth_images(2)
    _write(tmp_path / "out", imgs, ["x.png", "y.png"])
    _write(tmp_path / "ref", imgs[:1], ["x.png"])
    with pytest.raises(CrossflowError, match=r"output y\.png has no reference named y\.\*"):
        sr.pair_folders(tmp_path / "out", tmp_path / "ref")

    save_png(_smooth_images(1, size=32)[0], tmp_path / "ref" / "y.png")
    with pytest.raises(CrossflowError) as err:
        sr.pair_folders(tmp_path / "out", tmp_path / "ref")
    assert "y.png" in str(err.value) and "16x16" in str(err.value) and "32x32" in str(err.value)

    (tmp_path / "empty").mkdir()
    with pytest.raises(CrossflowError, match="no images"):
        sr.pair_folders(tmp_path / "empty", tmp_path / "ref")
    with pytest.raises(CrossflowError, match="does not exist"):
        sr.pair_folders(tmp_path / "missing", tmp_path / "ref")


def test_bicubic_baseline_folder_keeps_names_and_scales_sizes(tmp_path):
    low = _smooth_images(2, size=8)
    _write(tmp_path / "low", low[:1], ["cat.png"])
    from PIL import Image

    Image.fromarray(np.full((6, 10, 3), 128, np.uint8)).save(tmp_path / "low" / "dog.jpg")
    written = sr.bicubic_baseline_folder(tmp_path / "low", 4, tmp_path / "up")
    assert [p.name for p in written] == ["cat.png", "dog.png"]
    assert read_image(tmp_path / "up" / "cat.png").shape == (32, 32, 3)
    assert read_image(tmp_path / "up" / "dog.png").shape == (24, 40, 3)
    stored = torch.from_numpy(read_image(tmp_path / "low" / "cat.png")).permute(2, 0, 1)[None] / 255.0
    expected = (sr.upsample(stored, 4, (0.0, 1.0))[0] * 255).round().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(read_image(tmp_path / "up" / "cat.png"), expected.astype(np.uint8))
    assert not [p for p in (tmp_path / "up").iterdir() if p.name.startswith(".")]  # no temp files left


def test_degrade_folder_then_baseline_scores_below_identity(tmp_path):
    hr = _smooth_images(3, size=16)
    _write(tmp_path / "hr", hr)
    sr.degrade_folder(tmp_path / "hr", 2, tmp_path / "lr")
    assert read_image(tmp_path / "lr" / "000.png").shape == (8, 8, 3)
    sr.bicubic_baseline_folder(tmp_path / "lr", 2, tmp_path / "bicubic")
    results = {r.metric: r for r in sr.evaluate_sr_folders(tmp_path / "bicubic", tmp_path / "hr", fid=False)}
    assert list(results) == ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std"]
    assert 20 < results["psnr_mean"].value < math.inf and 0.5 < results["ssim_mean"].value < 1
    assert results["psnr_mean"].n == 3 and results["psnr_mean"].settings["colour_space"] == "RGB (not Y)"


# ----------------------------------------------------------------------------- CLI


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:  # a group, so the command is invoked by name as under `crossflow eval`
        pass

    app.command("sr")(eval_sr_command)
    return app


@pytest.fixture
def sr_folders(tmp_path) -> tuple[Path, Path]:
    hr = _smooth_images(4, size=16, seed=3)
    noisy = (hr + 0.05 * torch.randn(hr.shape, generator=torch.Generator().manual_seed(4))).clamp(0, 1)
    return _write(tmp_path / "out", noisy)[0].parent, _write(tmp_path / "ref", hr)[0].parent


def test_cli_json_no_fid(sr_folders, tmp_path):
    out_dir, ref_dir = sr_folders
    res = CliRunner().invoke(
        _app(), ["sr", str(out_dir), str(ref_dir), "--no-fid", "--json", "--out", str(tmp_path / "r.json")]
    )
    assert res.exit_code == 0, res.output
    values = {r["metric"]: r for r in json.loads(res.stdout)["results"]}
    assert set(values) == {"psnr_mean", "psnr_std", "ssim_mean", "ssim_std"}
    pairs = sr.pair_folders(out_dir, ref_dir)
    direct = sr.score_pairs(pairs)
    assert values["psnr_mean"]["value"] == pytest.approx(float(direct.psnr.mean()), rel=1e-12)
    assert values["ssim_std"]["value"] == pytest.approx(float(direct.ssim.std(correction=0)), rel=1e-12)
    assert values["psnr_mean"]["n"] == 4 and 20 < values["psnr_mean"]["value"] < 40
    assert json.loads((tmp_path / "r.json").read_text())["results"][0]["metric"] == "psnr_mean"


def test_cli_table(sr_folders):
    res = CliRunner().invoke(_app(), ["sr", *map(str, sr_folders), "--no-fid"])
    assert res.exit_code == 0, res.output
    assert "PSNR (dB, RGB)" in res.stdout and "±" in res.stdout and "n = 4 pairs" in res.stdout


def test_cli_missing_inception_weights_is_the_eval_fid_error(sr_folders, monkeypatch):
    monkeypatch.setattr(inception, "default_weights_path", lambda: None)
    res = CliRunner().invoke(_app(), ["sr", *map(str, sr_folders)])
    assert res.exit_code == MissingResourceError.exit_code == 1
    assert res.stderr.strip() == f"error: {inception.missing_weights_message()}"
    assert "Traceback" not in res.output


def test_cli_user_error_is_one_line(sr_folders, tmp_path):
    out_dir, _ = sr_folders
    (tmp_path / "none").mkdir()
    res = CliRunner().invoke(_app(), ["sr", str(out_dir), str(tmp_path / "none"), "--no-fid"])
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "has no reference" in res.stderr


def test_fid_runs_through_the_standard_path(sr_folders, tmp_path, monkeypatch):
    """FID/KID through compute_metrics with a random Inception at 75 px and the cheap 64 layer."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    torch.manual_seed(0)
    weights = tmp_path / "random-inception.pth"
    net = inception.inception_skeleton()
    for m in net.modules():  # He init: features that vary across images (the default is nearly flat)
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    torch.save(net.state_dict(), weights)
    out_dir, ref_dir = sr_folders
    kw = dict(weights=weights, feature_layer="64", use_cache=False)
    results = {r.metric: r for r in sr.evaluate_sr_folders(out_dir, ref_dir, fid=True, **kw)}
    assert list(results)[4:] == ["fid", "kid_mean", "kid_std"]
    assert results["fid"].value > 0 and results["fid"].settings["n_pairs"] == 4
    same = {r.metric: r.value for r in sr.evaluate_sr_folders(ref_dir, ref_dir, fid=True, **kw)}
    assert abs(same["fid"]) < 1e-3 * results["fid"].value  # zero up to sqrtm noise (rank-3 covariances)
    assert same["psnr_mean"] == math.inf and same["psnr_std"] is None and same["ssim_mean"] == 1.0
