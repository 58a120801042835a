"""Training-step throughput of the shapes recipe on this machine's CPU.

Times the real loss step (`CrossFlowSystem`: VE + contrastive head + DiT, AdamW, grad clipping)
on real prepared shapes data, fp32 vs bf16 autocast, each in a fresh process: `--warm` steps
first, then `--steps` timed. Run it on an otherwise idle machine: torch's two intra-op threads
sharing the cores with another busy process made steps 10-20x slower here.
Writes benchmarks/train_throughput.{json,md}.

    python benchmarks/train_throughput.py --data DATA     # a `crossflow prepare --recipe shapes` dir
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(data: Path, bf16: bool, warm: int, steps: int) -> dict:
    import torch

    from crossflow_core.codecs import SourceBatch
    from crossflow_core.data.arrays import load_training_arrays
    from crossflow_core.recipe import load_recipe
    from crossflow_core.train.system import Batch, CrossFlowSystem

    arrays = load_training_arrays(data, ("png", "tokens.npy", "mask.npy"))
    images, tokens, masks = arrays["png"], arrays["tokens.npy"], arrays["mask.npy"]
    recipe = load_recipe("shapes")
    tc = recipe.train
    torch.manual_seed(0)
    spec = {"num_tokens": tokens.shape[1], "token_dim": tokens.shape[2]}
    system = CrossFlowSystem.from_recipe(recipe, spec, (3, 32, 32))
    opt = torch.optim.AdamW(system.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(warm + steps):
        idx = torch.randint(0, images.shape[0], (tc.batch_size,), generator=gen)
        batch = Batch(SourceBatch(tokens[idx].float(), masks[idx]), images[idx].float() / 127.5 - 1)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = system(batch)
        out.total.backward()
        torch.nn.utils.clip_grad_norm_(system.parameters(), tc.grad_clip or 1e9)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warm:
            times.append(time.perf_counter() - start)
    times.sort()
    return {
        "bf16": bf16,
        "median_s_per_step": times[len(times) // 2],
        "min_s_per_step": times[0],
        "batch_size": tc.batch_size,
        "samples_per_s": tc.batch_size / times[len(times) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--warm", type=int, default=30)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--child", metavar="BF16")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.child == "1", args.warm, args.steps)))
        return
    rows = []
    for bf16 in (False, True):
        cmd = [
            sys.executable,
            __file__,
            "--data",
            str(args.data),
            "--warm",
            str(args.warm),
            "--steps",
            str(args.steps),
            "--child",
            str(int(bf16)),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    import torch

    meta = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "recipe": "shapes",
        "warm_steps": args.warm,
        "timed_steps": args.steps,
    }
    (HERE / "train_throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "# Training-step throughput, shapes recipe (CPU)",
        "",
        "| precision | median s/step | samples/s |",
        "|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {'bf16 autocast' if r['bf16'] else 'fp32'} | "
            f"{r['median_s_per_step']:.3f} | {r['samples_per_s']:.0f} |"
        )
    lines += [
        "",
        f"torch {meta['torch']}, {meta['threads']} threads on {meta['cpu_count']} cores; "
        f"{args.warm} warm-up steps, then {args.steps} timed (median).",
    ]
    (HERE / "train_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
