"""FID throughput on this CPU: torch-fidelity's `calculate_metrics` vs crossflow's `compute_metrics`.

One run: render N + N shapes-world PNGs (32x32) into a temporary folder, then on the same
weights file (the converted standard Inception) time

  1. torch-fidelity: `calculate_metrics(input1=A, input2=B, fid=True, cuda=False, cache=False,
     feature_extractor_weights_path=W)`, its defaults otherwise (batch 64, DataLoader workers);
  2. crossflow: `compute_metrics(A, B, weights=W, metrics=("fid",), use_cache=False)`;

and measure the machine's dense fp32 matmul rate (4096^2, all cores, best of 5; MKL's sgemm via
torch.matmul and oneDNN's, which runs the convolutions, via a 1x1 convolution) before, between
and after. The limit is the best matmul GFLOP/s / (FLOPs per image, counted with
torch.utils.flop_counter on the network at 299x299). Both tools' times include the same
FID step (torch-fidelity's `fid_statistics_to_metric`, an eigendecomposition of 2048x2048).

The 2 cores are shared with other work; the share of CPU time used by other processes
during each phase is recorded (from /proc/stat minus this process's CPU time), and so is each
phase's own CPU time (images per CPU-second depends less on the others' load).

    python benchmarks/inception_throughput.py            # 1000 + 1000 images, several minutes
    python benchmarks/inception_throughput.py --n 100    # quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from crossflow_core.eval import fid as fidmod  # noqa: E402
from crossflow_core.eval import inception  # noqa: E402


def render(n: int, size: int, out: Path, split: str) -> Path:
    """n shapes-world renders (or plain seeded renders without it) as PNGs."""
    out.mkdir(parents=True)
    try:
        from crossflow_core.data.shapes import ShapesWorld

        world = ShapesWorld(image_size=size, seed=0)
        images = (world.sample(i, split).image for i in range(n))
    except ImportError:
        offset = 0 if split == "train" else 10**6
        images = (inception._simple_render(offset + i, size) for i in range(n))
    for i, im in enumerate(images):
        Image.fromarray(np.asarray(im, np.uint8)).save(out / f"{i:05d}.png")
    return out


def _gemms(n: int) -> dict[str, tuple[object, float]]:
    """Two fp32 GEMMs of n^3 multiply-adds: MKL's sgemm (torch.matmul) and oneDNN's (a 1x1
    convolution in channels_last is the product [n, n] x [n, n]; the convolutions run there)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    x = a.T.reshape(1, n, n, 1).contiguous(memory_format=torch.channels_last)
    w = b.T.reshape(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv = torch.nn.functional.conv2d
        return {"mkl_matmul": (lambda: a @ b, 2 * n**3), "onednn_1x1conv": (lambda: conv(x, w), 2 * n**3)}


def gemm_gflops(n: int = 4096, reps: int = 5) -> dict[str, float]:
    """Best-of-`reps` GFLOP/s of each GEMM on all cores (wall clock)."""
    out = {}
    with torch.inference_mode():
        for name, (fn, flop) in _gemms(n).items():
            fn()
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                best = min(best, time.perf_counter() - t)
            out[name] = flop / best / 1e9
    return out


def flops_per_image(weights: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = inception.load_feature_extractor(weights)
    x = inception.check_images(2)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x)
    return counter.get_total_flops() / 2


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _busy_jiffies() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _own_cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Phase:
    """Wall time of a block, and the share of the machine's CPU time others used meanwhile."""

    def __enter__(self) -> Phase:
        self.busy0, self.total0 = _busy_jiffies()
        self.own0, self.t0 = _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        busy1, total1 = _busy_jiffies()
        tick = os.sysconf("SC_CLK_TCK")
        busy_s = (busy1 - self.busy0) / tick
        capacity_s = (total1 - self.total0) / tick
        self.own_cpu = _own_cpu_s() - self.own0
        self.others_share = max(0.0, busy_s - self.own_cpu) / max(capacity_s, 1e-9)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="images per side")
    p.add_argument("--size", type=int, default=32, help="image size in pixels")
    p.add_argument("--batch-size", type=int, default=16, help="crossflow batch size")
    p.add_argument("--weights", type=Path, default=None, help="default: the converted standard Inception")
    p.add_argument("--out", type=Path, default=HERE / "inception_throughput", help="output stem (.json, .md)")
    args = p.parse_args()

    weights = args.weights or inception.default_weights_path() or inception.convert_inception_weights().path
    cpus = fidmod.available_cpus()
    torch.set_num_threads(cpus)
    with tempfile.TemporaryDirectory() as tmp:
        a = render(args.n, args.size, Path(tmp) / "a", "train")
        b = render(args.n, args.size, Path(tmp) / "b", "test")
        flops = flops_per_image(weights)
        mm = [gemm_gflops()]

        import torch_fidelity

        with Phase() as tf_phase:
            tf = torch_fidelity.calculate_metrics(
                input1=str(a),
                input2=str(b),
                fid=True,
                cuda=False,
                cache=False,
                verbose=False,
                feature_extractor_weights_path=str(weights),
            )
        mm.append(gemm_gflops())
        stamps: list[float] = []
        with Phase() as our_phase:
            ours = fidmod.compute_metrics(
                a,
                b,
                weights=weights,
                metrics=("fid",),
                use_cache=False,
                batch_size=args.batch_size,
                progress=lambda label, done, total: stamps.append(time.perf_counter()),
            )
        mm.append(gemm_gflops())

    # the FID step both tools share (2048x2048 statistics), timed alone
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    stats = fid_features_to_statistics(torch.rand(256, 2048, generator=torch.Generator().manual_seed(0)))
    t = time.perf_counter()
    fid_statistics_to_metric(stats, stats, verbose=False)
    fid_step_s = time.perf_counter() - t

    n_total = 2 * args.n
    fid_tf, fid_ours = tf["frechet_inception_distance"], ours[0].value
    best_all = {k: max(r[k] for r in mm) for k in mm[0]}
    limit_wall = max(best_all.values()) * 1e9 / flops
    # our feature extraction alone: from the end of the first batch to the end of the last
    per_batch = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    features_s = stamps[-1] - stamps[0] + per_batch
    report = {
        "machine": {
            "cpu": cpu_model(),
            "cores": cpus,
            "torch": torch.__version__,
            "torch_fidelity": torch_fidelity.__version__,
            "gemm_gflops_all_cores_runs": [{k: round(v, 1) for k, v in r.items()} for r in mm],
            "gemm_gflops_all_cores": {k: round(v, 1) for k, v in best_all.items()},
            "matmul_gflops": round(max(best_all.values()), 1),
            "gflop_per_image": round(flops / 1e9, 3),
            "limit_images_per_s": round(limit_wall, 2),
        },
        "setup": {
            "images_per_side": args.n,
            "image_size": args.size,
            "weights_sha256": ours[0].settings["weights_sha256"],
            "crossflow_batch_size": args.batch_size,
            "fid_step_s": round(fid_step_s, 2),
        },
        "torch_fidelity": {
            "wall_s": round(tf_phase.wall, 1),
            "images_per_s": round(n_total / tf_phase.wall, 2),
            "cpu_s": round(tf_phase.own_cpu, 1),
            "images_per_cpu_s": round(n_total / tf_phase.own_cpu, 2),
            "fid": fid_tf,
            "others_cpu_share": round(tf_phase.others_share, 3),
        },
        "crossflow": {
            "wall_s": round(our_phase.wall, 1),
            "images_per_s": round(n_total / our_phase.wall, 2),
            "cpu_s": round(our_phase.own_cpu, 1),
            "images_per_cpu_s": round(n_total / our_phase.own_cpu, 2),
            "fid": fid_ours,
            "others_cpu_share": round(our_phase.others_share, 3),
            "features_images_per_s": round(n_total / features_s, 2),
            "ratio_to_limit": round(n_total / our_phase.wall / limit_wall, 3),
            "features_ratio_to_limit": round(n_total / features_s / limit_wall, 3),
        },
        "fid_rel_diff": abs(fid_ours - fid_tf) / abs(fid_tf),
        "speedup": round(tf_phase.wall / our_phase.wall, 2),
    }
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if report["fid_rel_diff"] > 1e-4:
        sys.exit(f"FID disagrees: {fid_ours} vs torch-fidelity {fid_tf}")


def markdown(r: dict) -> str:
    m, s, tf, cf = r["machine"], r["setup"], r["torch_fidelity"], r["crossflow"]
    return "\n".join(
        [
            f"# FID throughput: {s['images_per_side']} + {s['images_per_side']} PNGs "
            f"({s['image_size']}x{s['image_size']}), {m['cores']} CPU cores",
            "",
            "| path | wall s | images/s | CPU s | images/CPU-s | FID | others' CPU share |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| torch-fidelity `calculate_metrics` | {tf['wall_s']} | {tf['images_per_s']} | {tf['cpu_s']} "
            f"| {tf['images_per_cpu_s']} | {tf['fid']:.6f} | {tf['others_cpu_share']:.0%} |",
            f"| crossflow `compute_metrics` | {cf['wall_s']} | {cf['images_per_s']} | {cf['cpu_s']} "
            f"| {cf['images_per_cpu_s']} | {cf['fid']:.6f} | {cf['others_cpu_share']:.0%} |",
            "",
            f"- FID relative difference: {r['fid_rel_diff']:.2e}; speedup {r['speedup']}x",
            f"- crossflow feature extraction alone: {cf['features_images_per_s']} images/s "
            f"({cf['features_ratio_to_limit']:.0%} of the limit)",
            f"- Dense fp32 GEMM 4096^2, all cores, best of 5, before / between / after: "
            f"{m['gemm_gflops_all_cores_runs']} GFLOP/s; best {m['matmul_gflops']} GFLOP/s",
            f"- {m['gflop_per_image']} GFLOP per image (torch.utils.flop_counter, 299x299) -> limit "
            f"{m['limit_images_per_s']} images/s; crossflow end to end at {cf['ratio_to_limit']:.0%} of it",
            f"- The FID step alone (2048x2048 eigendecomposition, in both paths): {s['fid_step_s']} s",
            f"- torch {m['torch']}, torch-fidelity {m['torch_fidelity']}, weights sha256 "
            f"{s['weights_sha256'][:16]}...; the cores are shared with other work (column above).",
            "",
        ]
    )


if __name__ == "__main__":
    main()
