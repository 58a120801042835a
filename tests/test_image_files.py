"""Image files: save -> read is the identity, float tensors are quantised once, writes are atomic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from crossflow_core.errors import CrossflowError
from crossflow_core.eval import generate as gen
from crossflow_core.image_files import (
    list_images,
    read_image,
    save_grid,
    save_images,
    save_png,
    to_uint8,
)


def _random_uint8(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_uint8_png_round_trip_is_the_identity(tmp_path):
    image = _random_uint8(13, 17, 3)
    path = save_png(image, tmp_path / "sub" / "a.png")
    assert path == tmp_path / "sub" / "a.png"
    back = read_image(path)
    assert back.dtype == np.uint8 and back.shape == (13, 17, 3)
    np.testing.assert_array_equal(back, image)


def test_float_tensor_is_quantised_like_to_uint8(tmp_path):
    x = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0], x[1, 0, 0] = -0.5, 1.5  # out of range: clamped
    back = read_image(save_png(x, tmp_path / "f.png"))
    expected = to_uint8(x[None])[0]
    np.testing.assert_array_equal(back, expected)
    assert back[0, 0, 0] == 0 and back[0, 0, 1] == 255
    # to_uint8 rounds: v -> round(255 v); and is the inverse of / 255 on uint8 values
    u = _random_uint8(2, 5, 5, 3, seed=2)
    as_float = torch.from_numpy(u).permute(0, 3, 1, 2).float() / 255
    np.testing.assert_array_equal(to_uint8(as_float), u)
    assert to_uint8(u) is u  # uint8 [N, H, W, 3] passes through
    with pytest.raises(ValueError):
        save_png(torch.rand(1, 4, 4), tmp_path / "bad.png")


def test_grid_matches_torchvision_layout(tmp_path):
    images = torch.from_numpy(_random_uint8(5, 3, 6, 6, seed=3)).float() / 255
    grid = read_image(save_grid(images, tmp_path / "grid.png", nrow=3))
    assert grid.shape == (2 + 2 * (6 + 2), 2 + 3 * (6 + 2), 3)  # padding 2 around every tile
    np.testing.assert_array_equal(grid[2:8, 2:8], to_uint8(images[:1])[0])
    np.testing.assert_array_equal(grid[10:16, 2:8], to_uint8(images[3:4])[0])  # row 2, column 1
    assert (grid[:2] == 255).all() and (grid[-8:, -8:] == 255).all()  # white padding and empty slot


def test_writes_are_atomic_and_leave_no_temp_file(tmp_path, monkeypatch):
    save_images(_random_uint8(3, 4, 4, 3), tmp_path)
    save_grid(torch.rand(2, 3, 4, 4), tmp_path / "grid.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png", "00002.png", "grid.png"]

    def crash(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a png")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_png(_random_uint8(4, 4, 3), tmp_path / "00000.png")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.png", "00001.png", "00002.png", "grid.png"]
    np.testing.assert_array_equal(read_image(tmp_path / "00000.png"), _random_uint8(3, 4, 4, 3)[0])


def test_unreadable_file_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(CrossflowError, match="broken.png") as exc:
        read_image(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(CrossflowError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_list_images_natural_order_without_hidden_files(tmp_path):
    for name in ("10.png", "2.png", "1.jpg", ".3.tmp-1.png", "notes.txt", "b.WEBP"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["1.jpg", "2.png", "10.png", "b.WEBP"]


def test_old_imports_still_work():
    assert gen.save_png is save_png and gen.read_image is read_image and gen.list_images is list_images
    assert gen.to_uint8 is to_uint8 and gen.save_images is save_images
