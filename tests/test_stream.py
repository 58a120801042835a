"""Streamed shards (`train.loader: stream`): the same batches, the same training, flat memory."""

from __future__ import annotations

import json

import pytest
import torch

from crossflow_core.data.arrays import load_training_arrays
from crossflow_core.data.stream import open_streamed
from crossflow_core.recipe import load_recipe
from crossflow_core.train.batches import EpochSampler
from crossflow_core.train.checkpoint import Checkpointer
from crossflow_core.train.loop import train

FIELDS = ("png", "txt", "tokens.npy", "mask.npy")


def test_streamed_fields_equal_the_in_memory_ones(tiny_data):
    memory = load_training_arrays(tiny_data, FIELDS)
    streamed = open_streamed(tiny_data, FIELDS)
    assert len(streamed) == len(memory)
    idx = torch.tensor([5, 0, 63, 41, 40, 39])  # across the shard boundary (shard_size 40)
    for name in ("png", "tokens.npy", "mask.npy"):
        assert torch.equal(streamed[name][idx], memory[name][idx]), name
    assert streamed["txt"][idx] == [memory["txt"][i] for i in idx.tolist()]
    assert "latent.npy" not in streamed


def test_streamed_index_is_small(tiny_data):
    streamed = open_streamed(tiny_data, FIELDS)
    index = streamed.index
    assert index.offset.nbytes + index.size.nbytes + index.shard.nbytes <= len(streamed) * (16 * 4 + 4)


def test_corrupt_shard_is_one_line(tiny_data, tmp_path):
    import shutil

    from crossflow_core.errors import CrossflowError

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    shard = sorted(copy.glob("shard-*.tar"))[0]
    shard.write_bytes(shard.read_bytes()[:3000])
    with pytest.raises(CrossflowError, match="prepare it again"):
        open_streamed(copy, FIELDS)


@pytest.fixture
def recipe(tiny_overrides):
    return lambda *extra: load_recipe(
        "shapes", [*tiny_overrides, "train.steps=6", "train.checkpoint_every=3", *extra]
    )


def _same(a: dict, b: dict) -> bool:
    """Two checkpoints' tensor groups are bit-identical (weights, optimizer, EMA; RNG aside)."""
    groups = [g for g in a if g != "rng"]
    return sorted(a) == sorted(b) and all(
        a[g].keys() == b[g].keys() and all(torch.equal(a[g][k], b[g][k]) for k in a[g]) for g in groups
    )


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_training_equals_memory_training(tiny_data, tmp_path, workers, recipe):
    """Same recipe, same data: streamed batches give bit-identical weights to in-memory ones."""
    a = train(recipe(), tiny_data, tmp_path / "memory")
    b = train(recipe("train.loader=stream", f"train.num_workers={workers}"), tiny_data, tmp_path / "stream")
    assert a.losses == b.losses
    wa, _ = Checkpointer.load(Checkpointer(tmp_path / "memory", 3, 2).latest())
    wb, _ = Checkpointer.load(Checkpointer(tmp_path / "stream", 3, 2).latest())
    assert _same(wa, wb)


def test_stream_resume_equals_uninterrupted(tiny_data, tmp_path, recipe):
    """Stopped at step 3 and resumed (with prefetching workers) == 6 steps at once."""
    full = train(recipe("train.loader=stream", "train.num_workers=1"), tiny_data, tmp_path / "full")
    train(recipe("train.loader=stream", "train.num_workers=1", "train.steps=3"), tiny_data, tmp_path / "part")
    resumed = train(recipe("train.loader=stream", "train.num_workers=1"), tiny_data, tmp_path / "part")
    assert resumed.resumed_from == 3
    assert resumed.losses == full.losses
    wa, _ = Checkpointer.load(Checkpointer(tmp_path / "full", 3, 2).latest())
    wb, _ = Checkpointer.load(Checkpointer(tmp_path / "part", 3, 2).latest())
    assert _same(wa, wb)


def test_follow_sampler_starts_at_the_drawn_batch():
    from crossflow_core.train.stream_batches import _FollowSampler

    s = EpochSampler(10, 4, seed=1, accum=2)
    for _ in range(3):  # into the second epoch (10 // 4 = 2 batches per epoch)
        drawn = s.next_micro_batches()
    follow = iter(_FollowSampler(s))
    assert all(torch.equal(next(follow)[0], d) for d in drawn)
    nxt = s.next_micro_batches()
    assert all(torch.equal(next(follow)[0], n) for n in nxt)


def test_shards_written_by_other_tar_tools_are_indexed_too(tiny_data, tmp_path):
    """A shard in pax format (what GNU tar / python's tarfile may write) reads the same."""
    import io
    import shutil
    import tarfile

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    shard = sorted(copy.glob("shard-*.tar"))[0]
    with tarfile.open(tiny_data / shard.name) as src:
        members = [(m, src.extractfile(m).read()) for m in src if m.isfile()]
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as out:
        for m, data in members:
            info = tarfile.TarInfo(m.name)
            info.size, info.pax_headers = len(data), {"comment": "x"}
            out.addfile(info, io.BytesIO(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["name"] == shard.name:
            entry["bytes"] = shard.stat().st_size
    (copy / "manifest.json").write_text(json.dumps(manifest))
    a, b = open_streamed(tiny_data, FIELDS), open_streamed(copy, FIELDS)
    idx = torch.arange(len(a))
    assert torch.equal(a["png"][idx], b["png"][idx]) and a["txt"][idx] == b["txt"][idx]
