"""Two real processes on the CPU (torchrun + gloo): disjoint data, one printer, exact resume.

`accelerate launch --cpu --num_processes 2` would silently run one process, so the runs here go
through `torchrun --nproc_per_node 2` with ACCELERATE_USE_CPU=1, as a user would launch them.
They use train.grad_accum=2 (DDP's no_sync on the first micro-batch) and periodic sample grids
and checkpoints (main-process-only work between collective calls), which must not deadlock.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from crossflow_core.train.batches import TRACE_ENV, EpochSampler
from crossflow_core.train.checkpoint import Checkpointer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is unavailable"),
]

STEPS, STOP, BATCH = 24, 10, 16  # 64 samples: 4 global batches an epoch, so 6 epochs
SETS = [
    f"train.batch_size={BATCH}",
    "train.grad_accum=2",  # micro-batches of 16 / (2 ranks x 2) = 4 samples
    "train.checkpoint_every=4",
    "train.warmup_steps=8",
    "train.sample_every=8",
    "sample.prompts=[a red circle, a blue square]",
]


def torchrun(tiny_overrides, data: Path, out: Path, steps: int, trace: Path | None = None):
    sets = [*tiny_overrides, *SETS, f"train.steps={steps}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "crossflow_cli.app", "train", "--recipe", "shapes", "--data", str(data), "--out", str(out)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop(TRACE_ENV, None)
    if trace is not None:
        env[TRACE_ENV] = str(trace)
    done = subprocess.run(
        cmd + [a for s in sets for a in ("--set", s)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def runs(tiny_overrides, tiny_data, tmp_path_factory):
    """An uninterrupted 2-rank run, and one stopped after STOP steps and continued to STEPS."""
    root = tmp_path_factory.mktemp("multirank")
    whole = torchrun(tiny_overrides, tiny_data, root / "whole", STEPS, trace=root / "trace")
    torchrun(tiny_overrides, tiny_data, root / "parts", STOP)
    resumed = torchrun(tiny_overrides, tiny_data, root / "parts", STEPS)
    return root, whole, resumed


def test_two_ranks_see_disjoint_slices_of_every_global_batch_and_learn(runs):
    root, _, _ = runs
    traces = [
        [json.loads(line) for line in (root / "trace" / f"indices_rank{r}.jsonl").read_text().splitlines()]
        for r in range(2)
    ]
    assert len(traces[0]) == len(traces[1]) == STEPS  # neither rank ran short of data
    expected = EpochSampler(64, BATCH, seed=0)  # the global batches of a single process
    for step, (a, b) in enumerate(zip(*traces)):
        assert (a["epoch"], a["position"]) == (b["epoch"], b["position"]) == (step // 4, step % 4 * BATCH)
        assert len(a["indices"]) == len(b["indices"]) == BATCH // 2
        assert not set(a["indices"]) & set(b["indices"]), f"step {step + 1}: the ranks share samples"
        assert a["indices"] + b["indices"] == expected.next_indices().tolist()
    with (root / "whole" / "log.csv").open() as f:
        rows = list(csv.DictReader(f))
    total = [float(r["total"]) for r in rows]
    assert len(total) == STEPS
    # the LR moves once per optimizer step, not once per process (accelerate's prepared scheduler)
    warm_up = [1e-3 * min(1, (s + 1) / 8) for s in range(1, 9)]  # the row of step s: the next LR
    assert [float(r["lr"]) for r in rows[:8]] == pytest.approx(warm_up)
    assert sum(total[-5:]) / 5 < 0.75 * sum(total[:5]) / 5, total
    assert sorted(p.name for p in (root / "whole" / "samples").iterdir()) == [
        f"step_{s:08d}.png" for s in (8, 16, 24)
    ]


def test_only_the_main_process_reports(runs):
    _, whole, resumed = runs
    for done in (whole, resumed):
        assert done.stdout.count("trained to step 24") == 1, done.stdout
        assert done.stdout.count("model exported to") == 1, done.stdout
        assert done.stdout.count("train ") == 1, done.stdout  # one progress bar
    assert resumed.stdout.count(f"resuming from step {STOP}") == 1, resumed.stdout


def test_two_rank_resume_equals_uninterrupted(runs):
    root, _, _ = runs
    differ, total = [], 0
    for part in ("ve", "flow"):
        whole, parts = (
            load_file(root / r / "model" / part / "model.safetensors") for r in ("whole", "parts")
        )
        assert whole.keys() == parts.keys()
        total += len(whole)
        differ += [f"{part}.{k}" for k in whole if not torch.equal(whole[k], parts[k])]
    assert total > 100 and not differ, f"{len(differ)} of {total} exported tensors differ: {differ[:5]}"
    (w, w_state), (p, p_state) = (
        Checkpointer.load(Checkpointer(root / run, 1, 1).latest()) for run in ("whole", "parts")
    )
    assert w_state["step"] == p_state["step"] == STEPS and w_state["sampler"] == p_state["sampler"]
    for group in ("model", "optimizer", "rng_rank0", "rng_rank1"):
        assert all(torch.equal(w[group][k], p[group][k]) for k in w[group]), group
    # every rank's RNG is its own (seeded per process), so each must be saved and restored
    assert not torch.equal(w["rng_rank0"]["cpu"], w["rng_rank1"]["cpu"])
