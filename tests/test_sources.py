"""Sources: the shapes world and a deliberately messy folder of images + captions."""

from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crossflow_core.data.sources import FolderSource, ShapesSource, build_source, load_rgb, safe_key
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig

SIZE = 16
KEY_RE = re.compile(r"[A-Za-z0-9_-]+")


def _png16_grey(value: int, w: int = 20, h: int = 20) -> bytes:
    raw = b"".join(b"\x00" + np.full(w, value, ">u2").tobytes() for _ in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _solid(mode: str, colour, size=(24, 20)) -> Image.Image:
    im = Image.new(mode, size, colour)
    if mode == "P":
        im.putpalette([0, 0, 0, 50, 50, 50, 90, 90, 90, 10, 200, 30] + [0] * (256 * 3 - 12))
    return im


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


@pytest.fixture()
def messy(tmp_path) -> Path:
    root = tmp_path / "messy"
    root.mkdir()
    _solid("RGB", (200, 10, 10)).save(root / "a.png")
    _write(root / "a.txt", "a red\n  square\n")
    _solid("CMYK", (0, 255, 255, 0)).save(root / "sub" / "b.JPG" if (root / "sub").mkdir() is None else "")
    _write(root / "sub" / "b.txt", "\ufeffa cmyk red")  # UTF-8 BOM
    (root / "sub" / "deeper").mkdir()
    rgba = _solid("RGBA", (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 24, 10))  # top half fully transparent -> white
    rgba.save(root / "sub" / "deeper" / "c.webp", lossless=True)
    _write(root / "sub" / "deeper" / "c.txt", "blue with a transparent top")
    _solid("P", 3).save(root / "d.bmp")
    _solid("LA", (90, 255)).save(root / "e.PNG")
    ptrans = _solid("P", 3)
    ptrans.paste(0, (0, 0, 24, 10))
    ptrans.save(root / "ptrans.png", transparency=0)  # palette index 0 transparent -> white
    _write(root / "ptrans.txt", "palette with transparency")
    _write(
        root / "captions.jsonl",
        json.dumps({"image": "d.bmp", "caption": "palette"})
        + "\n\n"
        + json.dumps({"path": "missing.png", "text": "gone"})
        + "\n",
    )
    _write(root / "meta" / "f.png", _png16_grey(32768))
    _solid("RGB", (0, 200, 0)).save(root / "meta" / "multi.jpeg")
    _write(
        root / "meta" / "metadata.jsonl",
        "\n".join(
            [
                json.dumps({"file_name": "f.png", "text": "sixteen bit grey"}),
                json.dumps({"file_name": "multi.jpeg", "text": "green one"}),
                json.dumps({"file_name": "multi.jpeg", "caption": ["green two", "green three"]}),
                json.dumps({"file_name": "../e.PNG", "text": "grey with alpha"}),
            ]
        ),
    )
    wide = Image.new("RGB", (40, 20), (255, 0, 0))
    wide.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue; EXIF says rotate 90 CW
    exif = wide.getexif()
    exif[0x0112] = 6
    wide.save(root / "rot.jpg", exif=exif, quality=95)
    _write(root / "rot.txt", "rotated")
    _solid("RGB", (1, 2, 3)).save(root / "nocap.png")  # no caption
    _write(root / "orphan.txt", "a caption without its image")
    _solid("RGB", (1, 2, 3)).save(root / "empty.png")
    _write(root / "empty.txt", "  \n ")
    _write(root / "corrupt.png", b"\x89PNG\r\n\x1a\nnot really a png")
    _write(root / "corrupt.txt", "corrupt")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    _write(root / "truncated.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])
    _write(root / "truncated.txt", "truncated")
    _solid("RGB", (9, 9, 9)).save(root / "weird name.v2.png")
    _write(root / "weird name.v2.txt", "dots and spaces")
    _solid("RGB", (9, 9, 9)).save(root / ".hidden" / "x.png" if (root / ".hidden").mkdir() is None else "")
    _write(root / ".hidden" / "x.txt", "hidden")
    _write(root / "README.md", "# my data")
    return root


def test_messy_folder(messy):
    src = FolderSource(messy, SIZE)
    records = list(src)
    by_file = {}
    for r in records:
        by_file.setdefault(r.meta["file"], []).append(r)
    assert sorted(by_file) == [
        "a.png",
        "d.bmp",
        "e.PNG",
        "meta/f.png",
        "meta/multi.jpeg",
        "ptrans.png",
        "rot.jpg",
        "sub/b.JPG",
        "sub/deeper/c.webp",
        "weird name.v2.png",
    ]
    assert [r.caption for r in by_file["meta/multi.jpeg"]] == ["green one", "green two", "green three"]
    assert by_file["a.png"][0].caption == "a red square"  # whitespace collapsed
    assert by_file["sub/b.JPG"][0].caption == "a cmyk red"  # BOM stripped
    assert by_file["e.PNG"][0].caption == "grey with alpha"  # jsonl path relative to its folder
    assert dict(src.skipped) == {
        "image_without_caption": 1,
        "caption_without_image": 2,
        "empty_caption": 1,
        "unreadable_image": 2,
    }
    assert src.describe()["skipped_examples"]["unreadable_image"] == ["corrupt.png", "truncated.jpg"]
    keys = [r.key for r in records]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert all(KEY_RE.fullmatch(k) for k in keys)
    for r in records:
        arr = np.asarray(r.image)
        assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8
    px = {f: np.asarray(rs[0].image).astype(int) for f, rs in by_file.items()}
    assert np.abs(px["a.png"] - [200, 10, 10]).max() <= 1
    assert px["sub/b.JPG"][..., 0].min() > 200 and px["sub/b.JPG"][..., 1:].max() < 60  # CMYK -> red
    c = px["sub/deeper/c.webp"]
    assert (c[1] == 255).all() and (c[-2] == [0, 0, 255]).all()  # alpha composited on white
    assert np.abs(px["d.bmp"] - [10, 200, 30]).max() == 0  # palette
    assert np.abs(px["e.PNG"] - 90).max() <= 1  # LA, opaque
    assert (px["ptrans.png"][1] == 255).all() and (px["ptrans.png"][-2] == [10, 200, 30]).all()
    assert np.abs(px["meta/f.png"] - 128).max() <= 1  # 16-bit grey scaled, not clipped to 255
    rot = px["rot.jpg"]  # after EXIF rotation: red on top, blue at the bottom
    assert rot[1, 13, 0] > 200 and rot[1, 13, 2] < 60
    assert rot[14, 2, 2] > 200 and rot[14, 2, 0] < 60
    again = list(FolderSource(messy, SIZE))
    assert [r.key for r in again] == keys
    for a, b in zip(again, records, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    list(src)  # iterating again does not double the counts
    assert src.skipped["unreadable_image"] == 2


def test_bad_jsonl_lines_name_file_and_line(tmp_path):
    root = tmp_path / "d"
    _solid("RGB", (0, 0, 0)).save(root / "a.png" if root.mkdir() is None else "")
    _write(root / "captions.jsonl", json.dumps({"file_name": "a.png", "text": "ok"}) + "\n{broken\n")
    with pytest.raises(CrossflowError, match=r"captions.jsonl:2: invalid JSON") as info:
        FolderSource(root, SIZE)
    assert "\n" not in str(info.value)
    _write(root / "captions.jsonl", json.dumps({"name": "a.png", "text": "ok"}) + "\n")
    with pytest.raises(CrossflowError, match=r"captions.jsonl:1: no image file name"):
        FolderSource(root, SIZE)
    _write(root / "captions.jsonl", json.dumps({"file_name": "a.png", "text": 3}) + "\n")
    with pytest.raises(CrossflowError, match=r"captions.jsonl:1: no caption"):
        FolderSource(root, SIZE)
    _write(root / "captions.jsonl", "[1, 2]\n")
    with pytest.raises(CrossflowError, match=r"captions.jsonl:1: expected a JSON object"):
        FolderSource(root, SIZE)


def test_folder_without_pairs_is_one_line_error(tmp_path):
    root = tmp_path / "imgs"
    _solid("RGB", (0, 0, 0)).save(root / "a.png" if root.mkdir() is None else "")
    with pytest.raises(CrossflowError) as info:
        FolderSource(root, SIZE)
    msg = str(info.value)
    assert "\n" not in msg and str(root) in msg and "metadata.jsonl" in msg and ".txt" in msg
    with pytest.raises(CrossflowError, match="does not exist"):
        FolderSource(tmp_path / "nope", SIZE)
    with pytest.raises(CrossflowError, match="data.source=folder needs a folder: set data.path=FOLDER"):
        build_source(DataConfig(source="folder"))


def test_folder_without_captions_for_a_task_that_reads_no_text(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    _solid("RGB", (10, 20, 30)).save(root / "a.png")
    _solid("RGB", (40, 50, 60)).save(root / "b.png")
    _write(root / "b.txt", "a caption")
    src = build_source(DataConfig(source="folder", path=str(root), image_size=SIZE), require_captions=False)
    records = sorted(src, key=lambda r: r.caption)
    assert [r.caption for r in records] == ["", "a caption"]
    assert all(np.asarray(r.image).shape == (SIZE, SIZE, 3) for r in records)
    assert [r.caption for r in FolderSource(root, SIZE)] == ["a caption"]  # captions required by default
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CrossflowError) as info:
        FolderSource(empty, SIZE, require_captions=False)
    msg = str(info.value)
    assert "\n" not in msg and "no image in" in msg and ".png" in msg


def test_resize_shorter_side_and_centre_crop(tmp_path):
    arr = np.zeros((10, 30, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:20] = (0, 255, 0)
    arr[:, 20:] = (0, 0, 255)
    Image.fromarray(arr).save(tmp_path / "w.png")
    out = np.asarray(load_rgb(tmp_path / "w.png", 20)).astype(int)  # upscaled x2, middle third kept
    assert out.shape == (20, 20, 3)
    assert np.abs(out[:, 6:14] - (0, 255, 0)).max() <= 2  # away from the Lanczos support of the edges
    assert out[..., 1].mean() > 230 and out[..., [0, 2]].mean() < 20


def test_safe_key():
    assert safe_key("sub dir/a.b.c") == "sub_dir_a_b_c"
    assert safe_key("...") == "x" and len(safe_key("y" * 500)) == 60


def test_shapes_source_matches_world():
    from crossflow_core.data.shapes import ShapesWorld

    src = build_source(DataConfig(source="shapes", image_size=32, num_samples=7, seed=3))
    assert isinstance(src, ShapesSource) and len(src) == 7
    records = list(src)
    world = ShapesWorld(image_size=32, seed=3)
    for i, r in enumerate(records):
        s = world.sample(i, "train")
        assert np.array_equal(r.image, s.image) and r.caption == s.caption
        assert r.meta["category"] == s.spec.category and r.meta["geneval"] == s.spec.to_geneval()
        assert KEY_RE.fullmatch(r.key)
        json.dumps(r.meta)  # JSON-able
    assert src.describe() == {
        "kind": "shapes",
        "split": "train",
        "seed": 3,
        "num_samples": 7,
        "image_size": 32,
    }
