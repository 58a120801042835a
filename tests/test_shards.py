"""Shard writer/reader round trip, WebDataset/tar compatibility, atomicity, and the manifest."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest

from crossflow_core.data.manifest import MANIFEST_NAME, CaptionStats, Manifest
from crossflow_core.data.shards import (
    ShardSample,
    ShardWriter,
    decode_sample,
    encode_sample,
    iter_records,
    iter_shard_files,
    load_npy,
    npy_bytes,
    verify_shards,
)
from crossflow_core.errors import CrossflowError


def _samples(n: int, seed: int = 0) -> list[ShardSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        tokens = rng.standard_normal((6, 5)).astype(np.float16)
        tokens[0, 0] = np.float16(65504.0)  # float16 extremes survive bit-exactly
        tokens[0, 1] = np.float16(-6e-8)
        out.append(ShardSample(
            key=f"train-{i:08d}",
            image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
            caption=f"caption {i}: ünïcode ✓  two  spaces",
            meta={"index": i, "category": "colors", "nested": {"a": [1, 2.5, None]}},
            tokens=tokens,
            mask=np.arange(6) < (i % 6 + 1),
            latent=rng.standard_normal((4, 2, 2)).astype(np.float16),
        ))
    return out


def _manifest(shards, **kw) -> Manifest:
    base = dict(num_samples=sum(s.count for s in shards), shards=tuple(shards), image_size=8,
                fields=("png", "txt", "json", "tokens.npy", "mask.npy", "latent.npy"),
                captions=CaptionStats(7, 7, 4.0, 5, 6, 6, 0), text_encoder={"name": "tiny"},
                text_embedding_shape=(6, 5), latent={"kind": "vae", "scale": 0.5}, latent_shape=(4, 2, 2),
                latent_scale=0.5, latent_shift=0.0, has_latents=True, source={"kind": "test"},
                skipped={"unreadable_image": 1}, created="2025-01-01T00:00:00+00:00",
                crossflow_version="0.1.0")
    base.update(kw)
    return Manifest(**base)


def _same(a: ShardSample, b: ShardSample) -> None:
    assert a.key == b.key and a.caption == b.caption and a.meta == b.meta
    assert a.image.dtype == b.image.dtype == np.uint8 and np.array_equal(a.image, b.image)
    for x, y in ((a.tokens, b.tokens), (a.latent, b.latent)):
        assert x.dtype == y.dtype == np.float16 and np.array_equal(x.view(np.uint16), y.view(np.uint16))
    assert b.mask.dtype == bool and np.array_equal(a.mask, b.mask)


def test_round_trip_is_exact(tmp_path):
    samples = _samples(7)
    with ShardWriter(tmp_path, shard_size=3) as writer:
        for s in samples:
            writer.write(s)
    shards = writer.shards
    assert [(s.name, s.count) for s in shards] == [("shard-000000.tar", 3), ("shard-000001.tar", 3),
                                                   ("shard-000002.tar", 1)]
    for info in shards:
        data = (tmp_path / info.name).read_bytes()
        assert info.bytes == len(data) and info.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [s.name for s in shards]  # no temp files left
    _manifest(shards).save(tmp_path)
    back = list(iter_records(tmp_path))
    assert len(back) == 7
    for a, b in zip(samples, back, strict=True):
        _same(a, b)
    verify_shards(tmp_path)


def test_shards_are_plain_tar_and_webdataset(tmp_path):
    import webdataset as wds

    samples = _samples(3)
    with ShardWriter(tmp_path, shard_size=10) as writer:
        for s in samples:
            writer.write(s)
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path) as tar:
        assert tar.getnames()[:6] == [f"train-00000000.{e}" for e in
                                      ("png", "txt", "json", "tokens.npy", "mask.npy", "latent.npy")]
        assert all(m.mtime == 0 and m.isfile() for m in tar.getmembers())
        assert tar.extractfile("train-00000001.txt").read().decode() == samples[1].caption
    got = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [g["__key__"] for g in got] == [s.key for s in samples]
    for g, s in zip(got, samples, strict=True):
        files = {k: v for k, v in g.items() if not k.startswith("__")}
        _same(s, decode_sample(g["__key__"], files))


def test_same_samples_give_identical_shards(tmp_path):
    infos = []
    for name in ("a", "b"):
        with ShardWriter(tmp_path / name, shard_size=4) as writer:
            for s in _samples(5):
                writer.write(s)
        infos.append(writer.shards)
    assert infos[0] == infos[1]


def test_failure_mid_write_leaves_no_partial_shard(tmp_path):
    samples = _samples(5)
    with pytest.raises(RuntimeError, match="boom"), ShardWriter(tmp_path, shard_size=3) as writer:
        for i, s in enumerate(samples):
            if i == 4:
                raise RuntimeError("boom")
            writer.write(s)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]  # whole shard only
    assert not (tmp_path / MANIFEST_NAME).exists()
    with pytest.raises(CrossflowError, match="not a prepared dataset"):
        list(iter_records(tmp_path))


def test_reader_falls_back_to_tarfile_for_other_tars(tmp_path):
    path = tmp_path / "other.tar"
    long_key = "k" * 120  # needs a pax header
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key in ("dir/one", long_key):
            for ext, data in (("png", b"P"), ("txt", key.encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    got = list(iter_shard_files(path))
    assert [k for k, _ in got] == ["dir/one", long_key]
    assert got[1][1] == {"png": b"P", "txt": long_key.encode()}


def test_bad_keys_and_pickled_arrays_are_refused():
    with pytest.raises(ValueError, match="key"):
        encode_sample(ShardSample("a.b", np.zeros((2, 2, 3), np.uint8), "c"))
    buf = io.BytesIO()
    np.save(buf, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        load_npy(buf.getvalue())
    arrays = (np.arange(6, dtype=np.float16).reshape(2, 3), np.asfortranarray(np.ones((2, 3))), np.array(3.5))
    for a in arrays:
        back = load_npy(npy_bytes(a))
        assert back.shape == a.shape and back.dtype == a.dtype and np.array_equal(back, a)


def test_manifest_round_trip_and_errors(tmp_path):
    with ShardWriter(tmp_path / "ds", shard_size=2) as writer:
        for s in _samples(3):
            writer.write(s)
    ds = tmp_path / "ds"
    m = _manifest(writer.shards)
    m.save(ds)
    loaded = Manifest.load(ds)
    assert loaded == m and loaded.has_text_tokens
    raw = json.loads((ds / MANIFEST_NAME).read_text())
    assert raw["format_version"] == 1 and raw["shards"][0]["sha256"] == writer.shards[0].sha256
    assert raw["text_embedding_shape"] == [6, 5] and raw["latent_shape"] == [4, 2, 2]
    assert not list(ds.glob(".*"))  # the temporary manifest was renamed

    def err(path: Path) -> str:
        with pytest.raises(CrossflowError) as info:
            Manifest.load(path)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "does not exist" in err(tmp_path / "nope")
    assert "not a prepared dataset" in err(tmp_path) and "prepare" in err(tmp_path)  # no manifest
    (ds / MANIFEST_NAME).write_text("{not json")
    assert "not valid JSON" in err(ds)
    (ds / MANIFEST_NAME).write_text(json.dumps({**raw, "format_version": 99}))
    assert "newer crossflow" in err(ds)
    (ds / MANIFEST_NAME).write_text(json.dumps(raw))
    with open(ds / "shard-000001.tar", "ab") as f:
        f.write(b"x")
    assert re.search(r"has \d+ bytes, manifest says \d+", err(ds))
    (ds / "shard-000001.tar").unlink()
    assert "shard shard-000001.tar is missing" in err(ds)


def test_truncated_shard_is_a_user_error(tmp_path):
    with ShardWriter(tmp_path, shard_size=10) as writer:
        for s in _samples(3):
            writer.write(s)
    path = tmp_path / "shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    info = writer.shards[0]
    _manifest((type(info)(info.name, info.count, len(data) // 2, info.sha256),)).save(tmp_path)
    with pytest.raises(CrossflowError, match="unreadable"):
        list(iter_records(tmp_path))
    with pytest.raises(CrossflowError, match="sha256"):
        verify_shards(tmp_path)
