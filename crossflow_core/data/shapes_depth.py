"""Depth maps of the shapes world (the depth task's ground truth), in metres.

The camera: a pinhole at `CAMERA_HEIGHT_M` = 1 m above a flat ground plane, pitched down by
`PITCH_DEG` = 35 degrees, vertical (and horizontal) field of view `FOV_DEG` = 60 degrees, principal
point at the image centre. Pixel (row r, column c) has its centre at y = r + 0.5 (y down) and the
normalised image coordinate y_n = (y - S/2) / f with f = (S/2) / tan(FOV/2) pixels, so the scene of
an index is the same at every image size S. Depth is z-depth (along the optical axis, as NYUv2 and
KITTI store it): the ground at image height y lies at

    z(y) = H / (y_n cos(pitch) + sin(pitch)),

the same along a row and growing towards the top of the image (the horizon, y_n = -tan(pitch), is
above the image since pitch > FOV/2): about 0.97 m at the bottom row and 8.7 m at the top row of a
32 px image (0.955 m and 9.93 m at the image edges, `GROUND_RANGE_M`).

The objects are flat cut-outs facing the camera (perpendicular to the optical axis) whose lowest
point rests on the ground: the bottom of the bounding square, y_c = cy + size / 2, for all three
shapes (the circle touches it, the square and triangle stand on it). Each object therefore has one
constant depth, z(y_c), which is nearer than the ground at every row it covers (at its contact row
up to half a pixel: the ground there is at most that much nearer). A pixel belongs to an object
when the object covers at least half of it (the RGB rendering's 4x4 supersampled coverage), so
depth maps are not anti-aliased (no depths mixed at edges). Objects never touch in this world;
where two would overlap, the nearer occludes (painted far to near). The RGB images are not changed
by any of this.
"""

from __future__ import annotations

import math

import numpy as np

CAMERA_HEIGHT_M = 1.0
PITCH_DEG = 35.0
FOV_DEG = 60.0
COVERAGE_THRESHOLD = 0.5  # a pixel is an object's when the object covers at least this fraction


def focal_px(image_size: int) -> float:
    """The focal length in pixels of an image of side `image_size`."""
    return (image_size / 2) / math.tan(math.radians(FOV_DEG) / 2)


def ground_depth(y: np.ndarray | float, image_size: int) -> np.ndarray:
    """z-depth (m) of the ground plane at image height y (pixels from the top, continuous)."""
    yn = (np.asarray(y, np.float64) - image_size / 2) / focal_px(image_size)
    pitch = math.radians(PITCH_DEG)
    return CAMERA_HEIGHT_M / (yn * math.cos(pitch) + math.sin(pitch))


GROUND_RANGE_M = (float(ground_depth(1.0, 1)), float(ground_depth(0.0, 1)))  # bottom and top image edges


def contact_depth(obj, image_size: int) -> float:
    """The depth (m) of an object: the ground's at its contact row y = cy + size / 2."""
    return float(ground_depth(obj.cy + obj.size / 2, image_size))


def render_depth(scene, image_size: int) -> np.ndarray:
    """The depth map of a `Scene` (module docstring): float32 [H, W] metres, all finite and > 0."""
    from crossflow_core.data.shapes import _check_size, coverage

    _check_size(image_size)
    rows = ground_depth(np.arange(image_size) + 0.5, image_size)
    depth = np.repeat(rows[:, None], image_size, axis=1)
    for o in sorted(scene.objects, key=lambda o: -contact_depth(o, image_size)):  # far first: near occludes
        h = o.size / 2
        x0, x1 = max(int(np.floor(o.cx - h)), 0), min(int(np.ceil(o.cx + h)), image_size)
        y0, y1 = max(int(np.floor(o.cy - h)), 0), min(int(np.ceil(o.cy + h)), image_size)
        inside = coverage(o.shape, o.cx, o.cy, o.size, y0, x0, y1 - y0, x1 - x0) >= COVERAGE_THRESHOLD
        depth[y0:y1, x0:x1][inside] = contact_depth(o, image_size)
    return depth.astype(np.float32)
