"""Real-dataset inputs of `prepare`: COCO captions, img2dataset-style WebDataset tars, decoding
workers (byte-identical output for any number) and resuming a killed prepare."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
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
from crossflow_core.data import source_decode
from crossflow_core.data.arrays import load_training_arrays
from crossflow_core.data.inputs import detect_input
from crossflow_core.data.manifest import MANIFEST_NAME, Manifest
from crossflow_core.data.prepare_resume import PROGRESS_NAME
from crossflow_core.data.source_coco import CocoSource
from crossflow_core.data.source_webdataset import WebDatasetSource, expand_shards
from crossflow_core.data.sources import load_rgb
from crossflow_core.errors import CrossflowError
from crossflow_core.recipe import DataConfig, PixelTargetConfig, TextSourceConfig, load_recipe

SIZE = 16
MINILM = TextSourceConfig(encoder="minilm", max_length=12)
PIXELS = PixelTargetConfig()
NO_TEXT = DataConfig(image_size=SIZE, shard_size=4, precompute_source=False)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _image(seed: int, fmt: str = "JPEG") -> bytes:
    """A 24x20 image: a random colour plus noise."""
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.integers(0, 256, 3) + rng.integers(-40, 40, (20, 24, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def _pixels(data: bytes) -> np.ndarray:
    return np.asarray(load_rgb(io.BytesIO(data), SIZE))  # type: ignore[arg-type]


def _coco(root: Path, images: list[tuple[int, str, bytes | None]], captions: list[tuple[int, int, str]]):
    (root / "images").mkdir(parents=True)
    for _, name, data in images:
        if data is not None:
            (root / "images" / name).write_bytes(data)
    ann = {"info": {"description": "test"},
           "images": [{"id": i, "file_name": name, "width": 24, "height": 20} for i, name, _ in images],
           "annotations": [{"id": a, "image_id": i, "caption": c} for a, i, c in captions]}
    (root / "captions.json").write_text(json.dumps(ann))
    return root


@pytest.fixture()
def coco(tmp_path) -> Path:
    """2 captions per image; c.jpg corrupt, gone.jpg missing, e.jpg only empty captions, f.jpg none."""
    images = [(1, "a.jpg", _image(1)), (2, "b.png", _image(2, "PNG")), (3, "c.jpg", b"\xff\xd8\xff no jpeg"),
              (4, "gone.jpg", None), (5, "e.jpg", _image(5)), (6, "f.jpg", _image(6))]
    captions = [
        (10, 1, "a red\n square"), (11, 1, "a red box"), (20, 2, "a green thing"), (21, 2, "  "),
        (30, 3, "corrupt one"), (31, 3, "corrupt two"), (40, 4, "missing one"), (41, 4, "missing two"),
        (50, 5, ""), (51, 5, " \n"), (90, 99, "an unknown image"),
    ]
    return _coco(tmp_path / "coco", images, captions)


def _coco_data(root: Path, **changes) -> DataConfig:
    paths = {"path": str(root / "captions.json"), "images": str(root / "images")}
    return replace(NO_TEXT, source="coco", **paths, **changes)


def test_coco_all_and_first(coco, tmp_path):
    m = prepare_mod.prepare_dataset(_coco_data(coco), MINILM, PIXELS, tmp_path / "all")
    assert m.num_samples == 3 and m.skipped == {
        "caption_without_image": 1, "empty_caption": 3, "image_without_caption": 1,
        "missing_image": 1, "unreadable_image": 1,
    }
    assert m.source["kind"] == "coco" and m.source["captions"] == "all"
    assert m.source["skipped_examples"]["unreadable_image"] == ["c.jpg"]
    assert m.source["skipped_examples"]["missing_image"] == ["gone.jpg"]
    a = load_training_arrays(tmp_path / "all")
    assert a["txt"] == ["a red square", "a red box", "a green thing"]  # file order, whitespace collapsed
    want = [_pixels((coco / "images" / n).read_bytes()) for n in ("a.jpg", "a.jpg", "b.png")]
    assert np.array_equal(a["png"].permute(0, 2, 3, 1).numpy(), np.stack(want))  # resized + centre-cropped

    first = _coco_data(coco, coco_captions="first")
    m = prepare_mod.prepare_dataset(first, MINILM, PIXELS, tmp_path / "first")
    assert m.num_samples == 2 and m.skipped == {
        "caption_without_image": 1, "empty_caption": 1, "image_without_caption": 1,
        "missing_image": 1, "unreadable_image": 1,
    }
    assert load_training_arrays(tmp_path / "first")["txt"] == ["a red square", "a green thing"]
    src = CocoSource(coco / "captions.json", coco / "images", SIZE)
    records = list(src)
    assert [r.meta["caption_id"] for r in records] == [10, 11, 20] and records[0].meta["image_id"] == 1
    assert len({r.key for r in records}) == 3 and [r.key for r in records] == sorted(r.key for r in records)


def _tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for ext, data in files.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def _member_end(path: Path, name: str) -> int:
    with tarfile.open(path) as tar:
        m = tar.getmember(name)
        return m.offset_data + m.size


@pytest.fixture()
def shards(tmp_path) -> Path:
    root = tmp_path / "shards"
    root.mkdir()
    caption = json.dumps({"caption": "a json caption", "url": "http://x/1.jpg", "status": "success"})
    _tar(root / "00000.tar", [
        ("000000000", {"jpg": _image(1), "txt": b"a text caption"}),
        ("000000001", {"jpg": _image(2), "json": caption.encode()}),
        ("000000002", {"jpg": b"\xff\xd8\xff broken", "txt": b"corrupt"}),
        ("000000003", {"png": _image(3, "PNG"), "txt": b"  \n"}),  # empty caption
        ("000000004", {"txt": b"a caption without its image"}),
        ("000000005", {"webp": _image(4, "WEBP"), "json": b'{"url": "no caption"}'}),
    ])
    cut = _tar(root / "00001.tar", [
        ("000010000", {"jpg": _image(5), "txt": b"before the cut"}),
        ("000010001", {"jpg": _image(6), "txt": b"cut off"}),
    ])
    data = cut.read_bytes()
    cut.write_bytes(data[: _member_end(cut, "000010001.jpg") - 100])  # truncated inside an image
    (root / "00002.tar").write_bytes(b"this is not a tar file at all" * 30)
    (root / "00000.parquet").write_bytes(b"PAR1")  # img2dataset's other outputs are ignored
    return root


def test_webdataset_input(shards, tmp_path):
    data = replace(NO_TEXT, source="webdataset", path=str(shards))
    m = prepare_mod.prepare_dataset(data, MINILM, PIXELS, tmp_path / "out")
    assert m.num_samples == 3 and m.skipped == {
        "caption_without_image": 1, "empty_caption": 1, "image_without_caption": 1,
        "truncated_tar": 1, "unreadable_image": 1, "unreadable_tar": 1,
    }
    assert m.source["kind"] == "webdataset" and m.source["tars"] == 3
    assert m.source["skipped_examples"]["truncated_tar"] == ["00001.tar"]
    a = load_training_arrays(tmp_path / "out")
    assert a["txt"] == ["a text caption", "a json caption", "before the cut"]
    want = [_pixels(_image(i)) for i in (1, 2, 5)]
    assert np.array_equal(a["png"].permute(0, 2, 3, 1).numpy(), np.stack(want))
    records = list(WebDatasetSource(str(shards / "0000[01].tar"), SIZE))  # a glob
    assert [r.meta.get("url") for r in records] == [None, "http://x/1.jpg", None]
    assert [r.meta["caption_from"] for r in records] == ["txt", "json", "txt"]
    assert [p.name for p in expand_shards(str(shards / "{00000..00001}.tar"))] == ["00000.tar", "00001.tar"]


def test_a_tar_cut_anywhere_keeps_a_prefix_of_its_samples(tmp_path):
    want = [f"caption {i}" for i in range(3)]
    full = _tar(tmp_path / "full.tar", [(f"k{i}", {"jpg": _image(i), "txt": c.encode()})
                                        for i, c in enumerate(want)])
    end = -(-_member_end(full, "k2.txt") // 512) * 512  # where the end-of-archive blocks start
    data = full.read_bytes()
    (tmp_path / "cuts").mkdir()
    for cut in [*range(0, len(data), 256), end + 1023, end + 1024]:
        path = tmp_path / "cuts" / f"{cut}.tar"
        path.write_bytes(data[:cut])
        src = WebDatasetSource(str(path), SIZE)
        captions = [r.caption for r in src]
        if cut >= end + 1024:  # both zero blocks present: a whole archive
            assert captions == want and src.skipped == {}, cut
        else:
            assert captions == want[: len(captions)] and len(captions) < 3, cut
            assert src.skipped in ({"truncated_tar": 1}, {"unreadable_tar": 1}), cut


def _many(root: Path, n: int = 70) -> Path:
    """n images with 2 captions each, from a small vocabulary (captions repeat across shards)."""
    words = ["a red square", "a green circle", "a blue triangle", "a yellow star", "two grey dots"]
    images = [(i, f"{i:03d}.jpg", _image(100 + i)) for i in range(n)]
    captions = [(2 * i + j, i, f"{words[(i + j) % 5]} {(i * j) % 3}") for i in range(n) for j in range(2)]
    return _coco(root, images, captions)


def _digest(folder: Path) -> dict[str, str]:
    out = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.pop("created")
    out[MANIFEST_NAME] = json.dumps(manifest, sort_keys=True)
    return out


def test_workers_give_byte_identical_output(tmp_path):
    root = _many(tmp_path / "many")
    data = _coco_data(root, shard_size=50)
    one = prepare_mod.prepare_dataset(data, MINILM, PIXELS, tmp_path / "w1")
    prepare_mod.prepare_dataset(replace(data, workers=2), MINILM, PIXELS, tmp_path / "w2")
    assert one.num_samples == 140 and _digest(tmp_path / "w1") == _digest(tmp_path / "w2")
    tars = tmp_path / "tars"
    tars.mkdir()
    for t in range(2):
        _tar(tars / f"{t:05d}.tar", [(f"{t}{i:04d}", {"jpg": _image(t * 100 + i), "txt": f"c {i}".encode()})
                                     for i in range(40)])
    data = replace(NO_TEXT, source="webdataset", path=str(tars / "*.tar"), shard_size=30)
    prepare_mod.prepare_dataset(data, MINILM, PIXELS, tmp_path / "t1")
    prepare_mod.prepare_dataset(replace(data, workers=2), MINILM, PIXELS, tmp_path / "t2")
    assert _digest(tmp_path / "t1") == _digest(tmp_path / "t2")
    assert Manifest.load(tmp_path / "t1").num_samples == 80


# Run prepare on the COCO set given in argv[1] (JSON) and SIGKILL this process right after the
# progress record of its second shard is written. Same torch threads as the test process: the
# encoder's bits depend on them (as they would for two uninterrupted runs).
KILLED_PREPARE = r"""
import json, os, signal, sys
from dataclasses import replace
import torch
import crossflow_core.data.prepare_resume as pr
real = pr.Resume._save
def save(self):
    real(self)
    if len(self.records) >= 2:
        os.kill(os.getpid(), signal.SIGKILL)
pr.Resume._save = save
from crossflow_core.data.prepare import prepare_dataset
from crossflow_core.recipe import load_recipe
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
r = load_recipe("shapes", args["sets"])
prepare_dataset(replace(r.data, **args["data"]), r.source, r.target, args["out"])
"""


def _prepare(out: Path, sets: list[str], data: dict, **changes) -> Manifest:
    r = load_recipe("shapes", sets)
    return prepare_mod.prepare_dataset(replace(r.data, **{**data, **changes}), r.source, r.target, out)


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_overrides) -> tuple[Path, list[str], dict]:
    """The partial folder a prepare of 140 samples (shards of 20) left when killed after 2 shards."""
    base = tmp_path_factory.mktemp("killed")
    root, sets = _many(base / "many"), tiny_overrides
    data = {"source": "coco", "path": str(root / "captions.json"), "images": str(root / "images"),
            "shard_size": 20, "image_size": SIZE}
    out = base / "out"
    args = json.dumps({"sets": sets, "data": data, "out": str(out), "threads": torch.get_num_threads()})
    done = subprocess.run([sys.executable, "-c", KILLED_PREPARE, args], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    (partial,) = base.glob(".out.partial-*")
    assert not out.exists() and sorted(p.name for p in partial.glob("shard-*.tar"))[:2] == [
        "shard-000000.tar", "shard-000001.tar"]
    return partial, sets, data


@pytest.fixture(scope="module")
def clean(killed, tmp_path_factory) -> dict[str, str]:
    _, sets, data = killed
    out = tmp_path_factory.mktemp("clean") / "out"
    _prepare(out, sets, data)
    return _digest(out)


def _counting(monkeypatch, decodes: bool = True) -> dict[str, int]:
    """Count samples precomputed by the codecs and (with `decodes`) images decoded in this process
    (data.workers=1: worker processes are not counted)."""
    counts = {"precompute": 0, "decode": 0}
    real_build, real_decode = prepare_mod.build_codecs, source_decode.decode_image

    def build(*args, **kwargs):
        codecs = real_build(*args, **kwargs)
        for codec in codecs:
            def precompute(samples, real=codec.precompute):
                counts["precompute"] += len(samples)
                return real(samples)
            codec.precompute = precompute
        return codecs

    def decode(task):
        counts["decode"] += 1
        return real_decode(task)

    monkeypatch.setattr(prepare_mod, "build_codecs", build)
    if decodes:
        monkeypatch.setattr(source_decode, "decode_image", decode)
    return counts


def _adopt(partial: Path, here: Path) -> Path:
    """A copy of the killed run's partial folder beside `here / out`."""
    shutil.copytree(partial, here / partial.name)
    return here / "out"


def test_resumed_prepare_keeps_complete_shards(killed, clean, tmp_path, monkeypatch):
    partial, sets, data = killed
    out = _adopt(partial, tmp_path)
    counts = _counting(monkeypatch)
    m = _prepare(out, sets, data)
    assert m.num_samples == 140 and _digest(out) == clean  # byte-identical shards and manifest
    assert counts == {"precompute": 100, "decode": 50}  # only samples 40.. (images 20..) were redone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and not (out / PROGRESS_NAME).exists()


def test_resume_with_other_workers_redoes_a_corrupt_shard(killed, clean, tmp_path, monkeypatch):
    partial, sets, data = killed
    out = _adopt(partial, tmp_path)
    shard = tmp_path / partial.name / "shard-000001.tar"
    raw = bytearray(shard.read_bytes())
    raw[1000] ^= 1  # same size, other bytes: its record no longer matches
    shard.write_bytes(bytes(raw))
    counts = _counting(monkeypatch, decodes=False)  # decoded in 2 worker processes
    _prepare(out, sets, data, workers=2)  # data.workers is not part of the fingerprint
    assert _digest(out) == clean and counts["precompute"] == 120


def test_a_partial_folder_of_other_settings_or_inputs_is_not_reused(killed, clean, tmp_path, monkeypatch):
    partial, sets, data = killed
    out = _adopt(partial, tmp_path)
    counts = _counting(monkeypatch)
    _prepare(out, sets, data, precompute_source=False)  # other settings: started fresh
    assert counts["decode"] == 70 and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    out = _adopt(partial, tmp_path / "b")
    image = Path(data["images"]) / "000.jpg"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # an input changed
    try:
        counts["precompute"] = 0
        _prepare(out, sets, data)
    finally:
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert counts["precompute"] == 140 and _digest(out) == clean



APP = typer.Typer()
APP.command("prepare")(prepare_command)
APP.command("noop")(lambda: None)  # keep typer in multi-command mode


def test_cli_coco_and_shards(coco, shards, tmp_path):
    runner = CliRunner()
    base = ["prepare", "--set", "data.precompute_source=false", "--set", f"data.image_size={SIZE}"]
    inputs = ["--from", str(coco / "captions.json"), "--images", str(coco / "images")]
    res = runner.invoke(APP, [*base, *inputs, "--coco-captions", "first", "--workers", "2",
                                 "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "prepared 2 samples" in res.output and "missing_image=1" in res.output
    assert Manifest.load(tmp_path / "c").source["captions"] == "first"
    res = runner.invoke(APP, [*base, "--from", str(shards / "0000[0-2].tar"), "-o", str(tmp_path / "w")])
    assert res.exit_code == 0, res.output
    assert "prepared 3 samples" in res.output and "truncated_tar=1" in res.output
    assert detect_input(shards).kind == "webdataset" and detect_input(coco / "images").kind == "folder"


def test_bad_inputs_are_one_line_and_write_nothing(coco, tmp_path):
    runner = CliRunner()
    (tmp_path / "not_coco.json").write_text(json.dumps({"images": "nope"}))
    (tmp_path / "instances.json").write_text('{"images": [], "annotations": [{"image_id": 1, "bbox": []}]}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.md").write_text("no data here")
    images = ["--images", str(coco / "images")]
    cases = [
        (["--from", str(tmp_path / "nope")], "does not exist"),
        (["--from", str(tmp_path / "not_coco.json"), *images], "is not COCO captions JSON"),
        (["--from", str(tmp_path / "instances.json"), *images], "without captions"),
        (["--from", str(tmp_path / "empty")], "holds neither images"),
        (["--from", str(tmp_path / "shards-*.tar")], "no .tar file"),
        (["--from", str(coco / "captions.json")], "pass --images DIR"),
        (["--from", str(coco / "images"), *images], "--images is the image folder of COCO annotations"),
        (["--from", str(coco / "captions.json"), "--images", str(tmp_path / "nope")], "does not exist"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases:
        res = runner.invoke(APP, ["prepare", *args, "--out", str(tmp_path / "out")])
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert res.output.strip().startswith("error:") and res.output.strip().count("\n") == 0, res.output
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp folder
    with pytest.raises(CrossflowError, match="data.source=coco needs the folder of its images"):
        prepare_mod.prepare_dataset(replace(_coco_data(coco), images=None), MINILM, PIXELS, tmp_path / "x")
