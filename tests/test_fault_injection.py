"""Fault injection: `crossflow train` / `crossflow prepare` killed with SIGKILL and run again.

A run killed at any moment (also inside a checkpoint write) and re-run until it finishes exports
the same weights, bit for bit on CPU, as one uninterrupted run; a killed `prepare` re-run gives the
same shards and manifest. Every run is a separate `crossflow` process, as a user would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

# SIGKILL this process inside the checkpoint of step $KILL_AT_STEP, after its first tensor file
KILL_IN_CHECKPOINT = r"""
import os, signal, sys
import crossflow_core.train.checkpoint as ck
step, real = int(os.environ["KILL_AT_STEP"]), ck.save_file
def save_file(tensors, path):
    real(tensors, path)
    if f"step_{step:08d}" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_file = save_file
from crossflow_cli.app import main
sys.argv = ["crossflow", *sys.argv[1:]]
main()
"""

RUN_CLI = "import sys; from crossflow_cli.app import main; sys.argv = ['crossflow', *sys.argv[1:]]; main()"


def _train_args(data: Path, out: Path, overrides: list[str]) -> list[str]:
    sets = [x for o in overrides for x in ("--set", o)]
    return ["train", "--data", str(data), "--out", str(out), "--recipe", "shapes", *sets]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _manifest(folder: Path) -> dict:
    data = json.loads((folder / "manifest.json").read_text())
    data.pop("created")
    return data


def _run(code: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _overrides(tiny_overrides: list[str]) -> list[str]:
    return [*tiny_overrides, "train.steps=8", "train.checkpoint_every=1", "train.keep_checkpoints=2"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tiny_overrides, tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("fault") / "clean"
    done = _run(RUN_CLI, _train_args(tiny_data, out, _overrides(tiny_overrides)))
    assert done.returncode == 0, done.stderr[-2000:]
    return _digest(out / "model")


def test_killed_inside_a_checkpoint_write_resumes_to_the_same_weights(
    tiny_data, tiny_overrides, tmp_path, uninterrupted
):
    out = tmp_path / "run"
    args = _train_args(tiny_data, out, _overrides(tiny_overrides))
    killed = _run(KILL_IN_CHECKPOINT, args, {"KILL_AT_STEP": "5"})
    assert killed.returncode == -signal.SIGKILL
    ckpts = out / "checkpoints"
    assert not (ckpts / "step_00000005").exists()  # the half-written one does not look complete
    assert any(p.name.startswith(".step_00000005") for p in ckpts.iterdir())  # its temp folder is there
    assert not (out / "model").exists()
    done = _run(RUN_CLI, args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "step 4" in done.stdout + done.stderr  # resumed from the last complete checkpoint
    assert _digest(out / "model") == uninterrupted
    assert not any(p.name.startswith(".step_") for p in ckpts.iterdir())  # leftovers cleaned


@pytest.mark.slow
def test_killed_at_random_moments_resumes_to_the_same_weights(
    tiny_data, tiny_overrides, tmp_path, uninterrupted
):
    """SIGKILL at random times (seeded) 4 times, re-running after each; then run to the end."""
    rng = random.Random(13)
    out = tmp_path / "run"
    args = [sys.executable, "-c", RUN_CLI, *_train_args(tiny_data, out, _overrides(tiny_overrides))]
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))  # imports take ~3 s; then steps and checkpoints
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(args, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert kills >= 1
    assert _digest(out / "model") == uninterrupted


def test_killed_prepare_rerun_gives_the_same_shards(tiny_overrides, tmp_path):
    sets = [x for o in [*tiny_overrides, "data.num_samples=200", "data.shard_size=20"] for x in ("--set", o)]
    clean = tmp_path / "clean"
    done = _run(RUN_CLI, ["prepare", "--recipe", "shapes", "--out", str(clean), *sets])
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "killed"
    args = [sys.executable, "-c", RUN_CLI, "prepare", "--recipe", "shapes", "--out", str(out), *sets]
    proc = subprocess.Popen(args, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # kill once some shards are written
        partial = list(tmp_path.glob(".killed.partial-*/shard-*.tar"))
        if len(partial) >= 2:
            break
        time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()  # nothing looks complete
    done = _run(RUN_CLI, ["prepare", "--recipe", "shapes", "--out", str(out), *sets])
    assert done.returncode == 0, done.stderr[-2000:]
    shards = {k: v for k, v in _digest(out).items() if k != "manifest.json"}
    assert shards == {k: v for k, v in _digest(clean).items() if k != "manifest.json"} and shards
    assert _manifest(out) == _manifest(clean)  # all but its creation time
    assert not list(tmp_path.glob(".killed.partial-*"))
