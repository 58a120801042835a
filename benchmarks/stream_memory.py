"""Memory and throughput of the two loaders: `train.loader: memory` vs `stream`, at 20k and 200k samples.

Each measurement is a fresh process training a small super-resolution U-Net (sr_shapes, pixels,
32 px, batch 32) for a few steps on a prepared dataset; it reports the process's peak RSS, its
RSS after imports (the baseline, the same for all), the time from start to the first step (the
in-memory loader reads every sample first) and seconds per step after a warm-up.

    python benchmarks/stream_memory.py [--sizes 20000 200000] [--steps 40] [--work /tmp/cfbench]

Writes benchmarks/stream_memory.json and .md. Datasets are prepared once under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from crossflow_core.recipe import load_recipe
from crossflow_core.train.callbacks import TrainCallbacks
from crossflow_core.train.loop import train

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

data, run, loader, workers, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
recipe = load_recipe("sr_shapes", [
    "model.unet_channels=[16, 32, 64]", "model.unet_head_dim=16", "train.batch_size=32",
    f"train.steps={steps}", "train.checkpoint_every=0", "train.sample_every=0", "train.log_every=1000",
    "train.mixed_precision=no", f"train.loader={loader}", f"train.num_workers={workers}",
])
base = rss_mb()
t0 = time.perf_counter()
marks = []

class Marks(TrainCallbacks):
    def on_step(self, step, total, row):
        marks.append(time.perf_counter())

train(recipe, Path(data), Path(run), Marks())
warm = 10
per_step = (marks[-1] - marks[warm - 1]) / (len(marks) - warm)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"baseline_rss_mb": base, "peak_rss_mb": peak,
                  "first_step_s": marks[0] - t0, "s_per_step": per_step}))
"""


def prepare(work: Path, n: int) -> Path:
    out = work / f"sr{n // 1000}k"
    if not (out / "manifest.json").is_file():
        subprocess.run(
            [
                "crossflow",
                "prepare",
                "--recipe",
                "sr_shapes",
                "--set",
                f"data.num_samples={n}",
                "--set",
                "data.shard_size=5000",
                "--out",
                str(out),
            ],
            check=True,
        )
    return out


def measure(data: Path, work: Path, loader: str, workers: int, steps: int) -> dict:
    run = work / f"run-{data.name}-{loader}-{workers}-{time.time_ns()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(run), loader, str(workers), str(steps)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[20000, 200000])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cfbench"))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = prepare(args.work, n)
        size_mb = sum(p.stat().st_size for p in data.glob("*.tar")) / 2**20
        for loader, workers in (("memory", 0), ("stream", 0), ("stream", 1)):
            m = measure(data, args.work, loader, workers, args.steps)
            rows.append(
                {
                    "samples": n,
                    "shards_mb": round(size_mb, 1),
                    "loader": loader,
                    "workers": workers,
                    **{k: round(v, 3) for k, v in m.items()},
                }
            )
            print(rows[-1], flush=True)
    result = {
        "what": "sr_shapes U-Net (16/32/64 ch), 32 px pixels, batch 32, 1 torch thread, CPU",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "rows": rows,
    }
    (HERE / "stream_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Streamed vs in-memory training data",
        "",
        f"{result['what']}; {result['machine']}. Produced by `python benchmarks/stream_memory.py`.",
        "Peak RSS of the training process (a DataLoader worker is a forked copy sharing its pages; not"
        " counted); baseline = RSS after imports. s/step compares loaders within one run only.",
        "",
        "| samples | shards MB | loader | workers | baseline RSS MB | peak RSS MB "
        "| start -> first step s | s/step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['samples']} | {r['shards_mb']} | {r['loader']} | {r['workers']} "
            f"| {r['baseline_rss_mb']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {r['first_step_s']:.1f} "
            f"| {r['s_per_step']:.3f} |"
        )
    (HERE / "stream_memory.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
