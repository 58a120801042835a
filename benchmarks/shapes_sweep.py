"""Sweep settings of the `shapes` recipe: train briefly, score single-object prompts.

Used to choose the CPU demo's recipe on a lent GPU, where many short runs fit in minutes.
Training uses the core's `CrossFlowSystem` step (the same losses, path, CFG pairs) on the
shapes world held in memory, with caption embeddings precomputed into a table
(`--captions`, written by `--write-captions` where the MiniLM package is installed), and
a plain AdamW + warm-up + EMA loop (no checkpoints: the real loop lives in
crossflow_core/train/loop.py). Each evaluation samples every colour x shape prompt with
several seeds and CFG scales and scores colour and shape with the shapes checker.

    python benchmarks/shapes_sweep.py --write-captions .device/captions.safetensors
    python benchmarks/shapes_sweep.py --captions .device/captions.safetensors \
        --configs sweep.json --out results.json

Configs are a JSON list of {"name", "set": [recipe overrides], "eval_at": [steps] or
"budget_s" + "evals", "cfg_scales", "taus" (sampling temperatures), "seeds" (per prompt, default
4)}; benchmarks/shapes_arch_configs.json compares the DiT and
the U-Net at equal CPU wall time (results: shapes_arch.{json,md}).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crossflow_core.codecs import SourceBatch
from crossflow_core.data.shapes import ShapesWorld
from crossflow_core.eval.shapes_checker import score, score_alone
from crossflow_core.eval.shapes_demo import single_object_specs
from crossflow_core.recipe import load_recipe
from crossflow_core.sample import SampleSettings, sample_latents, seeded_noise
from crossflow_core.train.loop import make_ema
from crossflow_core.train.schedule import make_scheduler, phase_at
from crossflow_core.train.system import Batch, CrossFlowSystem

SINGLE = [s.prompt for s in single_object_specs()]


def write_captions(path: Path, num_samples: int) -> None:
    from crossflow_core.encoders.text import TextEncoder

    world = ShapesWorld(32, 0)
    caps = sorted({world.sample(i).caption for i in range(num_samples)} | set(SINGLE))
    emb = TextEncoder.from_config(load_recipe("shapes").source).encode(caps)
    save_file({"tokens": emb.tokens.half(), "mask": emb.mask.to(torch.uint8)}, path)
    path.with_suffix(".json").write_text(json.dumps(caps))


def evaluate(
    system, table, index, device, cfg_scales, seeds=4, steps=20, grid: Path | None = None, taus=(1.0,)
) -> dict[str, float]:
    """Every colour x shape prompt (the demo's) x `seeds`: the share drawn right with nothing else
    in the image (`score_alone`, the demo's rule) per CFG scale, and `loose_cfg*` (extra objects
    allowed, GenEval's colors rule). `taus`: z0 = mu + tau * sigma * eps (keys `tau{tau}_...` for
    tau != 1)."""
    specs = single_object_specs()
    ids = torch.tensor([index[s.prompt] for s in specs]).repeat(seeds)
    tokens, mask = table["tokens"][ids].float().to(device), table["mask"][ids].bool().to(device)
    noise = seeded_noise(system.ve.latent_shape, list(range(len(ids)))).to(device)
    out = {}
    with torch.inference_mode():
        for tau in taus:
            z0 = system.ve(SourceBatch(tokens, mask), noise=float(tau) * noise).z0
            prefix = "" if float(tau) == 1.0 else f"tau{tau}_"
            for scale in cfg_scales:
                x = sample_latents(system.flow, z0, SampleSettings(steps=steps, cfg_scale=float(scale)))
                imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
                alone = [score_alone(imgs[i], specs[i % len(specs)]).correct for i in range(len(ids))]
                loose = [score(imgs[i], specs[i % len(specs)]).correct for i in range(len(ids))]
                out[f"{prefix}cfg{scale}"] = float(np.mean(alone))
                out[f"{prefix}loose_cfg{scale}"] = float(np.mean(loose))
                if grid is not None:
                    from torchvision.utils import save_image

                    save_image(
                        (x[: len(specs)].float().cpu() + 1) / 2,
                        f"{grid}_{prefix}cfg{scale}.png",
                        nrow=3,
                        padding=1,
                    )
    return out


def world_data(categories: tuple[str, ...], num_samples: int, table, index):
    """(images uint8 [N, 3, 32, 32], caption ids [N], table, index) of the first `num_samples`
    shapes-world samples under a category mix; captions missing from the table are encoded."""
    world = ShapesWorld(32, 0, categories) if categories else ShapesWorld(32, 0)
    samples = [world.sample(i) for i in range(num_samples)]
    missing = sorted({s.caption for s in samples} - set(index))
    if missing:
        from crossflow_core.encoders.text import TextEncoder

        emb = TextEncoder.from_config(load_recipe("shapes").source).encode(missing)
        table = {"tokens": torch.cat([table["tokens"], emb.tokens.half()]),
                 "mask": torch.cat([table["mask"], emb.mask.to(torch.uint8)])}
        index = {**index, **{c: len(index) + i for i, c in enumerate(missing)}}
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    cap_ids = torch.tensor([index[s.caption] for s in samples])
    return images, cap_ids, table, index


def run(config: dict, table, index, images, cap_ids, device) -> dict:
    torch.manual_seed(0)
    recipe = load_recipe("shapes", config["set"])
    tc = recipe.train
    if recipe.data.categories:
        images, cap_ids, table, index = world_data(recipe.data.categories, len(images), table, index)
    spec = {"num_tokens": table["tokens"].shape[1], "token_dim": table["tokens"].shape[2]}
    system = CrossFlowSystem.from_recipe(recipe, spec, (3, 32, 32)).to(device)
    opt = torch.optim.AdamW(
        system.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True
    )
    sched = make_scheduler(opt, recipe)
    ema_model = copy.deepcopy(system).eval()
    ema = make_ema(system.parameters(), tc)
    results, train_s = [], 0.0
    gen = torch.Generator().manual_seed(0)
    # "budget_s": train for that many seconds (evaluating at `evals` equal shares of it) instead
    # of train.steps, so that networks of different speed are compared at equal wall time.
    budget = config.get("budget_s")
    eval_times = (
        [budget * (k + 1) / config.get("evals", 1) for k in range(config.get("evals", 1))] if budget else []
    )
    bf16 = tc.mixed_precision == "bf16"
    for step in range(1, 10**9 if budget else tc.steps + 1):
        started = time.time()
        idx = torch.randint(0, images.shape[0], (tc.batch_size,), generator=gen)
        ids = cap_ids[idx]
        batch = Batch(
            SourceBatch(table["tokens"][ids].to(device).float(), table["mask"][ids].to(device).bool()),
            images[idx].to(device).float() / 127.5 - 1,
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = system(batch, phase_at(recipe, step - 1))
        out.total.backward()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(system.parameters(), tc.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(system.parameters())
        train_s += time.time() - started
        due = eval_times and train_s >= eval_times[0]
        if due or (not budget and step in config.get("eval_at", [tc.steps])):
            grid = Path(config["grids"]) / f"{config['name']}_{step}" if config.get("grids") else None
            ema.copy_to(ema_model.parameters())
            acc = evaluate(ema_model, table, index, device, config.get("cfg_scales", [1.0, 3.0]), grid=grid,
                           taus=config.get("taus", [1.0]), seeds=config.get("seeds", 4))
            results.append(
                {
                    "step": step,
                    "losses": out.as_floats(),
                    "acc": acc,
                    "time_s": train_s,
                    "s_per_step": train_s / step,
                }
            )
            print(json.dumps({"name": config["name"], **results[-1]}), flush=True)
            if due:
                eval_times.pop(0)
                if not eval_times:
                    break
    params = sum(p.numel() for p in system.flow.parameters())
    return {"name": config["name"], "set": config["set"], "flow_params": params, "evals": results}


def markdown(data: dict) -> str:
    """A table: one row per evaluation, single-object colour+shape accuracy per CFG scale."""
    scales = sorted({k for r in data["results"] for e in r["evals"] for k in e["acc"]})
    lines = [
        f"| config | flow params | steps | train s | s/step | fm loss | {' | '.join(scales)} |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(scales),
    ]
    for r in data["results"]:
        for e in r["evals"]:
            accs = " | ".join(f"{e['acc'].get(s, float('nan')):.3f}" for s in scales)
            lines.append(
                f"| {r['name']} | {r['flow_params'] / 1e6:.2f}M | {e['step']} | {e['time_s']:.0f} | "
                f"{e['s_per_step']:.3f} | {e['losses']['fm']:.4f} | {accs} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path)
    parser.add_argument("--write-captions", type=Path)
    parser.add_argument("--num-samples", type=int, default=20000)
    parser.add_argument("--configs", type=Path)
    parser.add_argument("--out", type=Path, default=Path("shapes_sweep.json"))
    args = parser.parse_args()
    if args.write_captions:
        write_captions(args.write_captions, args.num_samples)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    table = load_file(args.captions)
    caps = json.loads(args.captions.with_suffix(".json").read_text())
    index = {c: i for i, c in enumerate(caps)}
    world = ShapesWorld(32, 0)
    samples = [world.sample(i) for i in range(args.num_samples)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    cap_ids = torch.tensor([index[s.caption] for s in samples])
    configs = json.loads(args.configs.read_text())
    all_results = [run(c, table, index, images, cap_ids, device) for c in configs]
    data = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": all_results,
    }
    args.out.write_text(json.dumps(data, indent=1))
    args.out.with_suffix(".md").write_text(markdown(data))


if __name__ == "__main__":
    main()
