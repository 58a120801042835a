"""Depth metrics on hand-computed maps; least-squares alignment recovers a known scale and shift."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crossflow_core.errors import CrossflowError
from crossflow_core.eval.depth_metrics import DepthScores, align_scale_shift, depth_metrics

# One 2x2 image, written out:
#   gt   = [[1, 2], [4, 8]]      pred = [[1.2, 2], [3, 8]]
#   |d - d*| / d* = 0.2, 0, 0.25, 0            -> AbsRel = 0.45 / 4 = 0.1125
#   (d - d*)^2 / d* = 0.04, 0, 0.25, 0         -> SqRel  = 0.29 / 4 = 0.0725
#   (d - d*)^2 = 0.04, 0, 1, 0                 -> RMSE   = sqrt(1.04 / 4) = sqrt(0.26) = 0.50990
#   log ratios ln 1.2, 0, ln 0.75, 0           -> RMSE-log = sqrt((ln^2 1.2 + ln^2 0.75) / 4) = 0.17030
#   max(d/d*, d*/d) = 1.2, 1, 4/3, 1           -> delta1 (< 1.25) = 3/4; delta2 (< 1.5625) = 1
GT = [[1.0, 2.0], [4.0, 8.0]]
PRED = [[1.2, 2.0], [3.0, 8.0]]


def check_hand_example(s: DepthScores, rel: float = 1e-12) -> None:
    assert s.abs_rel == pytest.approx(0.1125, rel=rel)
    assert s.sq_rel == pytest.approx(0.0725, rel=rel)
    assert s.rmse == pytest.approx(math.sqrt(0.26), rel=rel)
    assert s.rmse_log == pytest.approx(math.sqrt((math.log(1.2) ** 2 + math.log(0.75) ** 2) / 4), rel=rel)
    assert s.delta1 == 0.75 and s.delta2 == 1.0 and s.delta3 == 1.0
    assert s.n_pixels == 4


def test_hand_computed_metrics_numpy_and_torch() -> None:
    check_hand_example(depth_metrics(np.array([PRED]), np.array([GT])))
    check_hand_example(depth_metrics(torch.tensor([PRED], dtype=torch.float64), torch.tensor([GT])))
    # float32 inputs are scored in float64, but 1.2 is already rounded in float32: ~1e-7 relative
    check_hand_example(depth_metrics(torch.tensor([PRED]), torch.tensor([GT])), rel=1e-6)
    check_hand_example(depth_metrics(np.array(PRED), np.array(GT)))  # one [H, W] map


def test_invalid_pixels_are_ignored() -> None:
    # Add a column of invalid ground truth (0, NaN, inf, negative, and one masked out) with
    # garbage (even NaN) predictions: the metrics equal the hand example's.
    gt = np.array([[1.0, 2.0, 0.0, np.nan, 3.0], [4.0, 8.0, np.inf, -1.0, 5.0]])
    pred = np.array([[1.2, 2.0, 99.0, np.nan, 50.0], [3.0, 8.0, -7.0, np.inf, 0.01]])
    mask = np.ones_like(gt, dtype=bool)
    mask[:, 4] = False
    check_hand_example(depth_metrics(pred[None], gt[None], mask[None]))
    s = depth_metrics(pred[None], gt[None], mask[None], align="scale_shift")
    assert s.n_pixels == 4


def test_metrics_average_per_image_then_over_images() -> None:
    # Image A is the hand example (4 pixels, AbsRel 0.1125). Image B has one valid pixel
    # (gt 2, pred 3): AbsRel 0.5. Per image then mean: (0.1125 + 0.5) / 2 = 0.30625; pooling all
    # 5 pixels would give (0.45 + 0.5) / 5 = 0.19.
    gt = np.array([GT, [[2.0, 0.0], [0.0, 0.0]]])
    pred = np.array([PRED, [[3.0, 1.0], [1.0, 1.0]]])
    s = depth_metrics(pred, gt)
    assert s.abs_rel == pytest.approx(0.30625, rel=1e-12)
    assert s.delta1 == pytest.approx((0.75 + 0.0) / 2)  # 3/2 >= 1.25 in image B
    assert s.n_pixels == 5 and s.n_images == 2


def test_alignment_recovers_scale_and_shift() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 10.0, size=(3, 16, 24))
    scales, shifts = np.array([2.5, 0.1, 40.0]), np.array([0.7, -3.0, 12.0])
    pred = (gt - shifts[:, None, None]) / scales[:, None, None]  # so that s * pred + t == gt
    aligned, s, t = align_scale_shift(pred, gt, None)
    assert isinstance(aligned, np.ndarray) and aligned.shape == gt.shape
    np.testing.assert_allclose(aligned, gt, atol=1e-6, rtol=0)
    np.testing.assert_allclose(s, scales, rtol=1e-9)
    np.testing.assert_allclose(t, shifts, rtol=1e-9, atol=1e-9)
    scores = depth_metrics(pred, gt, align="scale_shift")
    assert scores.abs_rel < 1e-9 and scores.rmse < 1e-8 and scores.delta1 == 1.0
    assert depth_metrics(pred, gt).abs_rel > 0.5  # unaligned, the same maps are far off


def test_alignment_ignores_invalid_pixels_and_returns_torch() -> None:
    gt = torch.linspace(1.0, 5.0, 20, dtype=torch.float64).reshape(1, 4, 5)
    pred = (gt - 0.5) / 3.0
    pred[0, 0, 0] = 1e6  # an outlier where gt is invalid
    gt[0, 0, 0] = 0.0
    pred[0, 3, 4] = float("nan")  # masked out
    valid = torch.ones_like(gt, dtype=torch.bool)
    valid[0, 3, 4] = False
    aligned, s, t = align_scale_shift(pred, gt, valid)
    assert isinstance(aligned, torch.Tensor) and aligned.dtype == torch.float64
    assert float(s[0]) == pytest.approx(3.0, rel=1e-12) and float(t[0]) == pytest.approx(0.5, rel=1e-12)
    ok = valid & (gt > 0)
    torch.testing.assert_close(aligned[ok], gt[ok], atol=1e-6, rtol=0)


def test_scale_only_alignment() -> None:
    gt = np.array([GT])
    s = depth_metrics(gt / 3.0, gt, align="scale")
    assert s.abs_rel < 1e-12 and s.delta1 == 1.0
    # A shifted prediction is not fixed by a scale alone, but is by scale and shift.
    assert depth_metrics(gt / 3.0 + 1.0, gt, align="scale").abs_rel > 0.05
    assert depth_metrics(gt / 3.0 + 1.0, gt, align="scale_shift").abs_rel < 1e-12


def test_non_positive_predictions_are_clamped() -> None:
    # pred <= 0 is clamped to eps = 1e-6 before ratios and logs: AbsRel = (1 - 1e-6) per pixel.
    s = depth_metrics(np.array([[[-1.0, 0.0]]]), np.array([[[1.0, 2.0]]]))
    assert s.abs_rel == pytest.approx(((1 - 1e-6) + (2 - 1e-6) / 2) / 2, rel=1e-12)
    assert math.isfinite(s.rmse_log) and s.delta3 == 0.0


def test_depth_range_masks_gt_and_clips_predictions() -> None:
    # range (0.5, 10): gt 20 is invalid; the prediction 12 is clipped to 10:
    # AbsRel = (|1 - 1| / 1 + |10 - 5| / 5) / 2 = 0.5
    s = depth_metrics(np.array([[[1.0, 3.0, 12.0]]]), np.array([[[1.0, 20.0, 5.0]]]), depth_range=(0.5, 10.0))
    assert s.abs_rel == pytest.approx(0.5, rel=1e-12) and s.n_pixels == 2


def test_constant_prediction_aligns_to_the_mean() -> None:
    gt = np.array([GT])
    aligned, s, t = align_scale_shift(np.full_like(gt, 3.0), gt)
    assert s[0] == 0.0 and t[0] == pytest.approx(3.75) and np.allclose(aligned, 3.75)


def test_errors() -> None:
    with pytest.raises(CrossflowError, match=r"pred has shape \(2, 4, 4\) but gt has shape \(2, 4, 5\)"):
        depth_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 5)))
    with pytest.raises(CrossflowError, match=r"pred has shape \(1, 3, 3\) but gt has shape \(1, 4, 4\)"):
        align_scale_shift(np.ones((1, 3, 3)), np.ones((1, 4, 4)))
    gt = np.ones((3, 2, 2))
    gt[1] = 0.0
    with pytest.raises(CrossflowError, match="image 1 has no valid ground-truth pixel"):
        depth_metrics(np.ones((3, 2, 2)), gt)
    mask = np.ones((3, 2, 2), dtype=bool)
    mask[2] = False
    with pytest.raises(CrossflowError, match="image 2 has no valid"):
        align_scale_shift(np.ones((3, 2, 2)), np.ones((3, 2, 2)), mask)
    with pytest.raises(CrossflowError, match=r"valid mask has shape \(1, 2, 3\)"):
        depth_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)), np.ones((1, 2, 3), dtype=bool))
    with pytest.raises(CrossflowError, match="unknown depth alignment 'affine'"):
        depth_metrics(np.ones((1, 2, 2)), np.ones((1, 2, 2)), align="affine")  # type: ignore[arg-type]
    with pytest.raises(CrossflowError, match=r"\[N, H, W\]"):
        depth_metrics(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)))
    pred = np.ones((1, 2, 2))
    pred[0, 1, 1] = np.nan
    with pytest.raises(CrossflowError, match="image 0: the prediction is not finite"):
        depth_metrics(pred, np.ones((1, 2, 2)))
