"""Speed of the shapes training step and of sampling, measured against this machine's matmul rate.

For the `shapes` recipe (its model as the demo trains it; `--set` applies recipe overrides), per
variant:
- FLOPs of one training step (forward + backward of `CrossFlowSystem`, counted with
  `torch.utils.flop_counter.FlopCounterMode`: convolutions, matmuls, attention);
- the median wall time (and process CPU time) of a full optimizer step as the training loop takes
  it (crossflow_core/train/loop.py): batch from uint8 images + fp16 tokens in memory, forward
  under autocast, backward, loss terms to the host, grad clipping, fused AdamW, LR scheduler,
  diffusers EMAModel update;
- sampling: images/s of `crossflow_core.sample.sample_latents` with the flow network at the
  recipe's `sample:` settings (Euler, 20 steps, cfg 1.5: one forward of batch 2B per step, B 64);
- the achieved FLOP rate over the machine's matmul rate (1024x1024 fp32 / bf16 matmul, GFLOP/s,
  measured in the same run between rounds, same thread count).

Every variant lives in its own child process (its own environment: thread count, OMP and
allocator settings) and the parent times them round-robin, one step of each per round in a
shuffled order, so that a shared, noisy machine slows all alike: compare variants only as
ratios within one group of one run. `os.getloadavg()` is recorded. Groups:

    main     fp32 / bf16 autocast, before / after (channels-last, attention) and each change alone
    runtime  threads, OMP wait policy, jemalloc / tcmalloc, EMA foreach, no per-step host sync
    compile  torch.compile (inductor) of the flow network; compile time apart
    sample   sampling throughput, fp32 (what `crossflow sample` runs) and bf16, before / after

    python benchmarks/step_speed.py                         # all groups (long on a busy machine)
    python benchmarks/step_speed.py --groups main --rounds 10
    python benchmarks/step_speed.py --groups profile        # torch.profiler breakdown of a step

Each run updates its groups in benchmarks/step_speed.json and rewrites step_speed.md from it.
Runs on a GPU too (device cuda when available; channels-last and the matmul attention are CPU-only
switches there, so "before" and "after" coincide).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_JSON, OUT_MD = HERE / "step_speed.json", HERE / "step_speed.md"

BEFORE = {"channels_last": False, "attention": "diffusers"}  # FlowUNet as it was
AFTER = {"channels_last": False, "attention": "auto"}  # FlowUNet's defaults now
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"


def variants(group: str) -> list[dict]:
    """The variants of a group: name, reference flag and the child's configuration."""
    v = lambda name, **cfg: {"name": name, **cfg}  # noqa: E731
    if group == "main":
        return [
            v("bf16 before", precision="bf16", **BEFORE, ref=True),
            v("bf16 after", precision="bf16", **AFTER),
            v("bf16 after, SDPA kernel", precision="bf16", channels_last=False, attention="sdpa"),
            v("bf16 after + channels-last", precision="bf16", **{**AFTER, "channels_last": True}),
            v("bf16 before + channels-last", precision="bf16", **{**BEFORE, "channels_last": True}),
            v("fp32 before", precision="fp32", **BEFORE),
            v("fp32 after", precision="fp32", **AFTER),
        ]
    if group == "runtime":
        out = [
            v("bf16 after", precision="bf16", **AFTER, ref=True),
            v("+ EMA foreach", precision="bf16", **AFTER, ema_foreach=True),
            v("+ no per-step host sync", precision="bf16", **AFTER, host_sync=False),
            v("1 thread", precision="bf16", **AFTER, threads=1),
            v("keep_freed_memory (mallopt)", precision="bf16", **AFTER, env={"STEP_SPEED_MALLOPT": "1"}),
            v("OMP_WAIT_POLICY=PASSIVE", precision="bf16", **AFTER, env={"OMP_WAIT_POLICY": "PASSIVE"}),
            v(
                "OMP_PROC_BIND=close",
                precision="bf16",
                **AFTER,
                env={"OMP_PROC_BIND": "close", "OMP_PLACES": "cores"},
            ),
        ]
        for name, lib in (("jemalloc", JEMALLOC), ("tcmalloc", TCMALLOC)):
            if Path(lib).exists():
                out.append(v(f"LD_PRELOAD {name}", precision="bf16", **AFTER, env={"LD_PRELOAD": lib}))
        return out
    if group == "compile":
        return [
            v("bf16 after", precision="bf16", **AFTER, ref=True),
            v(
                "bf16 after + compile(flow)",
                precision="bf16",
                **AFTER,
                compile="flow",
                env={"TORCHINDUCTOR_CACHE_DIR": "{fresh}"},
            ),  # a cold cache: the compile time a first run pays
        ]
    if group == "sample":
        return [
            v("fp32 before", precision="fp32", **BEFORE, ref=True),
            v("fp32 after", precision="fp32", **AFTER),
            v("bf16 before", precision="bf16", **BEFORE),
            v("bf16 after", precision="bf16", **AFTER),
        ]
    raise SystemExit(f"unknown group {group!r}")


# ----------------------------------------------------------------------------------------- child


_DATA: dict = {}


# A measured variant (runtime groups): glibc keeps freed memory instead of returning it to the
# OS, so a step reuses its pages (~35-50k minor page faults per step without it).
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's upper bound on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD_MAX, trim_threshold: int = 1 << 30) -> bool:
    """Let glibc's malloc serve blocks up to `mmap_threshold` bytes from its heap and keep up to
    `trim_threshold` bytes of free heap top instead of returning them to the OS. Process-wide,
    for all later allocations. True when applied; False where the C library is not glibc (macOS,
    musl, Windows) or refuses the values: then nothing changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl has a no-op mallopt
            return False
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(M_TRIM_THRESHOLD, int(trim_threshold))
    )


def channels_last_convs(module) -> None:
    """The rejected variant (see step_speed.md): every Conv2d of `module` reads its input in
    channels-last memory (forward pre-hooks; parameters keep their layout), so the activations
    stay NHWC through the network: oneDNN's convolutions gain, the GroupNorms' channels-last
    kernels (2-4 channels per group here) lose more."""
    import torch

    def hook(mod, args):
        x = args[0]
        if x.dim() == 4 and x.device.type == "cpu":
            return (x.contiguous(memory_format=torch.channels_last), *args[1:])
        return None

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_pre_hook(hook)


def shared_data(torch, num_tokens: int, token_dim: int, size: int) -> dict:
    """The prepared dataset held in memory as the loop holds it (uint8 images, fp16 tokens, masks),
    random values, one copy per process shared by its variants."""
    if not _DATA:
        n, gen = 4096, torch.Generator().manual_seed(0)
        _DATA["images"] = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)
        _DATA["tokens"] = torch.randn(n, num_tokens, token_dim, generator=gen).half()
        lengths = torch.randint(4, num_tokens + 1, (n, 1), generator=gen)
        _DATA["mask"] = torch.arange(num_tokens)[None] < lengths
        _DATA["perm"] = torch.randperm(n, generator=gen)
    return _DATA


class Variant:
    """One variant: its own system (same seed as the others), optimizer, EMA, stepping on command."""

    def __init__(self, cfg: dict, recipe_dict: dict) -> None:
        import torch

        from crossflow_core.recipe import from_dict
        from crossflow_core.train.system import CrossFlowSystem

        self.torch, self.cfg = torch, cfg
        self.threads = cfg["threads"]
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.recipe = recipe = from_dict(recipe_dict)
        tc = recipe.train
        torch.manual_seed(0)
        self.num_tokens, self.token_dim = recipe.source.max_length, 384  # all-MiniLM-L6-v2 tokens
        spec = {"num_tokens": self.num_tokens, "token_dim": self.token_dim}
        size = recipe.data.image_size
        self.system = CrossFlowSystem.from_recipe(recipe, spec, (3, size, size)).to(self.device).train()
        flow = self.system.flow
        if hasattr(flow, "set_attention"):  # FlowUNet (the DiT has no attention switch)
            flow.set_attention(cfg["attention"])
        if cfg["channels_last"]:
            channels_last_convs(flow)
        self.params = [p for p in self.system.parameters() if p.requires_grad]
        fused = self.device.type in ("cpu", "cuda")
        self.opt = torch.optim.AdamW(
            self.params, lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=fused
        )
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / tc.warmup_steps)
        )
        self.ema = make_ema(self.params, tc, foreach=bool(cfg.get("ema_foreach")))
        self.ema.to(self.device)
        self.bf16 = cfg["precision"] == "bf16"
        self.batch_size, self.grad_clip = tc.batch_size, tc.grad_clip
        data = shared_data(torch, self.num_tokens, self.token_dim, size)
        self.images, self.tokens, self.mask, self.perm = (
            data["images"],
            data["tokens"],
            data["mask"],
            data["perm"],
        )
        self.position = 0
        self.sample_settings = recipe.sample
        self.compile_pending = cfg.get("compile") == "flow"  # after counting FLOPs (eager)

    def compile_now(self) -> None:
        """torch.compile (inductor) of the flow network, in place: compiled at its next call."""
        if self.compile_pending:
            self.system.flow.compile()
            self.compile_pending = False

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def autocast(self):
        return self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=self.bf16)

    def batch(self):
        from crossflow_core.codecs import SourceBatch
        from crossflow_core.encoders.latents import to_model_range
        from crossflow_core.train.system import Batch

        torch = self.torch
        if self.position + self.batch_size > len(self.perm):
            self.position = 0
        idx = self.perm[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        source = SourceBatch(self.tokens[idx].to(self.device, torch.float32), self.mask[idx].to(self.device))
        return Batch(source, to_model_range(self.images[idx]).to(self.device))

    def train_step(self, rf=None) -> None:
        """One optimizer step as `_train_step` in crossflow_core/train/loop.py takes it."""
        torch = self.torch
        rf = rf or (lambda name: _Null())
        with rf("## data"):
            batch = self.batch()
        with rf("## forward"), self.autocast():
            out = self.system(batch, "joint")
        with rf("## backward"):
            out.total.backward()
        with rf("## loss terms"):
            names = ("total", "fm", "enc", "kl", "ve_mu_std", "ve_sigma")  # the loop's TERMS
            values = [getattr(out, k, None) for k in names]
            terms = torch.stack(
                [out.total.new_zeros(()) if x is None else x.to(out.total.dtype) for x in values]
            )
            terms = terms.detach().float()
        with rf("## grad clip"):
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip or 1e9)
        with rf("## optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.sched.step()
        with rf("## ema"):
            self.ema.step(self.params)
        if self.cfg.get("host_sync", True):
            with rf("## host sync"):
                terms.cpu().tolist(), float(grad_norm)

    def timed(self, fn) -> dict:
        self.torch.set_num_threads(self.threads)
        self.sync()
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        self.sync()
        return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}

    def count_flops(self) -> dict:
        """FLOPs of one training step's forward + backward, and of one sampling evaluation."""
        from torch.utils.flop_counter import FlopCounterMode

        torch = self.torch
        flow = self.system.flow
        counter = FlopCounterMode(display=False)
        with counter:
            with self.autocast():
                out = self.system(self.batch(), "joint")
            out.total.backward()
        train = counter.get_total_flops()
        self.opt.zero_grad(set_to_none=True)
        b = (
            2 * self.sample_settings.batch_size
            if self.sample_settings.cfg_scale != 1
            else self.sample_settings.batch_size
        )
        x = torch.randn(b, *flow.latent_shape, device=self.device)
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode(), self.autocast():
            flow(x, torch.rand(b, device=self.device), torch.ones(b, dtype=torch.long, device=self.device))
        per_eval = counter.get_total_flops()
        evals = self.sample_settings.steps * (2 if self.sample_settings.solver == "heun" else 1)
        return {"train_flops": train, "sample_flops": per_eval * evals}

    def sample(self) -> None:
        from crossflow_core.sample import sample_latents

        torch = self.torch
        flow = self.system.flow
        was = flow.training
        flow.eval()
        gen = torch.Generator().manual_seed(0)
        z0 = torch.randn(self.sample_settings.batch_size, *self.system.ve.latent_shape, generator=gen).to(
            self.device
        )
        with self.autocast():
            sample_latents(flow, z0, self.sample_settings)
        flow.train(was)

    def profile(self, steps: int) -> dict:
        """torch.profiler over `steps` training steps: top ops, op categories, loop phases."""
        from torch.profiler import ProfilerActivity, profile, record_function

        torch = self.torch
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for _ in range(steps):
                with record_function("## step"):
                    self.train_step(record_function)
            self.sync()
        events = prof.key_averages()
        step_us = next(e.cpu_time_total for e in events if e.key == "## step") / steps
        phases = {
            e.key[3:]: e.cpu_time_total / steps / 1e3
            for e in events
            if e.key.startswith("## ") and e.key != "## step"
        }
        ops = sorted(
            (e for e in events if not e.key.startswith("## ")),
            key=lambda e: e.self_cpu_time_total,
            reverse=True,
        )
        top = [
            {
                "op": e.key,
                "self_ms": e.self_cpu_time_total / steps / 1e3,
                "pct": 100 * e.self_cpu_time_total / steps / step_us,
                "calls": e.count // steps,
            }
            for e in ops[:25]
        ]
        cats: dict[str, float] = {}
        for e in ops:
            cats[_category(e.key)] = cats.get(_category(e.key), 0.0) + e.self_cpu_time_total / steps / 1e3
        del torch
        return {"step_ms": step_us / 1e3, "phases_ms": phases, "categories_ms": cats, "top_ops": top}

    def components(self, rounds: int) -> dict:
        """Forward + backward of the VE, the contrastive tower and the flow network alone (ms)."""
        import torch.nn.functional as F

        from crossflow_core.guidance import null_pairs
        from crossflow_core.path import sample_time

        torch, s = self.torch, self.system
        batch = self.batch()

        def ve():
            with self.autocast():
                out = s.ve(batch.source)
                loss = out.z0.float().square().mean() + out.logvar.float().mean()
            loss.backward()

        def tower():
            with torch.no_grad(), self.autocast():
                ve_out = s.ve(batch.source)
            with self.autocast():
                loss = s.objective(ve_out, batch.source, batch.target)
            loss.backward()

        def flow():
            b = batch.target.shape[0]
            ind, _ = null_pairs(b, 0.1, None)
            t = sample_time(b, "logit_normal", None, self.device)
            x = torch.randn_like(batch.target)
            with self.autocast():
                pred = s.flow(x, t, ind.to(self.device))
            F.mse_loss(pred.float(), batch.target).backward()

        fns = {"VE fwd+bwd": ve, "tower + InfoNCE fwd+bwd": tower, "flow U-Net fwd+bwd": flow}
        times: dict[str, list[float]] = {k: [] for k in fns}
        for fn in fns.values():
            fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k].append(self.timed(fn)["wall"])
        self.opt.zero_grad(set_to_none=True)
        return {k: 1e3 * statistics.median(v) for k, v in times.items()}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _category(op: str) -> str:
    if op in ("aten::convolution_backward",):
        return "conv backward"
    if op in ("aten::mkldnn_convolution", "aten::convolution", "aten::_convolution", "aten::conv2d"):
        return "conv forward"
    if "group_norm" in op:
        return "GroupNorm"
    if "layer_norm" in op:
        return "LayerNorm"
    if "scaled_dot_product" in op or op in ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data"):
        return "attention (sdpa, bmm, softmax)"
    if op in ("aten::mm", "aten::addmm", "aten::linear"):
        return "linear (mm, addmm)"
    if "adam" in op:
        return "optimizer (fused AdamW)"
    if op in ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"):
        return "copies / dtype + layout casts"
    if op in ("aten::upsample_nearest2d", "aten::upsample_nearest2d_backward", "aten::cat"):
        return "upsample, cat"
    if op.startswith("aten::") and any(
        k in op
        for k in (
            "silu",
            "gelu",
            "add",
            "mul",
            "sub",
            "div",
            "exp",
            "neg",
            "threshold",
            "clamp",
            "fill_",
            "sum",
            "mean",
            "norm",
            "lerp",
            "sqrt",
            "pow",
            "where",
            "masked",
            "zero_",
            "bernoulli",
            "normal",
            "rand",
        )
    ):
        return "elementwise + reductions"
    return "other (autograd, python, small ops)"


def make_ema(params, tc, foreach: bool = False):
    """The loop's EMA (crossflow_core.train.loop.make_ema where it exists), optionally foreach."""
    from diffusers.training_utils import EMAModel

    try:
        from crossflow_core.train.loop import make_ema as loop_ema
    except ImportError:
        return EMAModel(params, decay=tc.ema_decay, foreach=foreach)
    ema = loop_ema(params, tc)
    ema.foreach = foreach
    return ema


def child_main(cfgs: list[dict], recipe_dict: dict) -> None:
    """Serve the variants `cfgs` (one environment) over stdin/stdout, one JSON line each way."""
    out = sys.stdout
    sys.stdout = sys.stderr  # only protocol lines on the pipe
    import torch

    if os.environ.get("STEP_SPEED_MALLOPT"):
        assert keep_freed_memory(), "mallopt refused"

    vs = [Variant(cfg, recipe_dict) for cfg in cfgs]
    reply = lambda obj: (out.write(json.dumps(obj) + "\n"), out.flush())  # noqa: E731
    reply({"ready": True, "threads": [v.threads for v in vs]})
    for line in sys.stdin:
        cmd = json.loads(line)
        kind = cmd["cmd"]
        if kind == "exit":
            return
        v = vs[cmd["v"]]
        torch.set_num_threads(v.threads)
        if kind == "flops":
            reply(v.count_flops())
        elif kind == "warm":
            v.compile_now()
            reply({"times": [v.timed(v.train_step)["wall"] for _ in range(cmd["n"])]})
        elif kind == "step":
            reply(v.timed(v.train_step))
        elif kind == "sample":
            v.compile_now()
            reply(v.timed(v.sample))
        elif kind == "profile":
            reply(v.profile(cmd["steps"]))
        elif kind == "components":
            reply(v.components(cmd["rounds"]))


# ---------------------------------------------------------------------------------------- parent


class Proc:
    """A child process serving the variants that share one environment (`env`)."""

    def __init__(self, vs: list[dict], args: argparse.Namespace, logdir: Path) -> None:
        self.variants = vs
        cfgs = [
            {"threads": args.threads, **{k: x for k, x in v.items() if k not in ("name", "ref", "env")}}
            for v in vs
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
        env.update(vs[0].get("env", {}))
        for key, value in env.items():
            if value == "{fresh}":
                env[key] = tempfile.mkdtemp(prefix="step_speed_cache_")
        self.log = open(logdir / f"{len(os.listdir(logdir))}.log", "w")
        cmd = [sys.executable, __file__, "--child", json.dumps(cfgs), "--recipe-json", args.recipe_json]
        self.p = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env
        )
        self.ready = self.read()

    def read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            self.log.flush()
            names = [v["name"] for v in self.variants]
            raise RuntimeError(f"the process of {names} died: see {self.log.name}")
        return json.loads(line)

    def ask(self, cmd: str, v: int = 0, **kw) -> dict:
        self.p.stdin.write(json.dumps({"cmd": cmd, "v": v, **kw}) + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.ask("exit")
        except (BrokenPipeError, RuntimeError):
            pass
        self.p.wait(timeout=60)
        self.log.close()


def start(vs: list[dict], args: argparse.Namespace) -> list[tuple[Proc, int, dict]]:
    """One child process per distinct environment; (process, index there, variant) per variant."""
    logdir = Path(tempfile.mkdtemp(prefix="step_speed_"))
    by_env: dict[str, list[dict]] = {}
    for v in vs:
        by_env.setdefault(json.dumps(v.get("env", {}), sort_keys=True), []).append(v)
    handles = []
    for group in by_env.values():
        proc = Proc(group, args, logdir)
        handles += [(proc, i, v) for i, v in enumerate(group)]
        print(f"started {[v['name'] for v in group]} (threads {proc.ready['threads']})", flush=True)
    return handles


def matmul_rates(torch, device, reps: int = 5) -> dict:
    """GFLOP/s of a 1024x1024 @ 1024x1024 matmul, fp32 and bf16: the best of `reps`."""
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(1024, 1024, device=device).to(dtype)
        b = torch.randn(1024, 1024, device=device).to(dtype)
        a @ b
        best = float("inf")
        for _ in range(reps):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2 * 1024**3 / best / 1e9
    return out


def run_group(group: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampling = group == "sample"
    vs = variants(group)
    if args.variants:
        keep = set(args.variants.split(","))
        vs = [v for v in vs if v["name"] in keep or v.get("ref")]
    load = [os.getloadavg()]
    handles = start(vs, args)
    try:
        rows = []
        for proc, i, variant in handles:
            row = {"name": variant["name"], "ref": bool(variant.get("ref"))}
            row["config"] = {k: v for k, v in variant.items() if k not in ("name", "ref")}
            row["threads"] = proc.ready["threads"][i]
            row.update(proc.ask("flops", i))
            if sampling:
                row["first_s"] = proc.ask("sample", i)["wall"]  # warm-up (and any compile)
            else:
                warm = proc.ask("warm", i, n=args.warm)["times"]
                row["first_s"] = warm[0]
            rows.append(row)
            print(f"[{group}] warmed {row['name']!r}: first {row['first_s']:.2f} s", flush=True)
        walls = {r["name"]: [] for r in rows}
        cpus = {r["name"]: [] for r in rows}
        rates = []
        order = list(range(len(handles)))
        rng = random.Random(0)
        rounds = args.sample_rounds if sampling else args.rounds
        for k in range(rounds):
            rng.shuffle(order)
            for j in order:
                proc, i, _ = handles[j]
                t = proc.ask("sample" if sampling else "step", i)
                walls[rows[j]["name"]].append(t["wall"])
                cpus[rows[j]["name"]].append(t["cpu"])
            rates.append(matmul_rates(torch, device))
            load.append(os.getloadavg())
            done = ", ".join(f"{r['name']} {walls[r['name']][-1]:.2f}" for r in rows)
            print(f"[{group}] round {k + 1}/{rounds}: {done}", flush=True)
        mm = {p: statistics.median(r[p] for r in rates) for p in ("fp32", "bf16")}
        ref = next(r for r in rows if r["ref"])
        ref_s = statistics.median(walls[ref["name"]])
        ref_cpu = statistics.median(cpus[ref["name"]])
        for r in rows:
            w, c = walls[r["name"]], cpus[r["name"]]
            r["median_s"], r["min_s"], r["max_s"] = statistics.median(w), min(w), max(w)
            r["cpu_median_s"] = statistics.median(c)
            r["times_s"] = w
            r["speedup_vs_ref"] = ref_s / r["median_s"]
            r["cpu_speedup_vs_ref"] = ref_cpu / r["cpu_median_s"]
            flops = r["sample_flops"] if sampling else r["train_flops"]
            r["achieved_gflops"] = flops / r["median_s"] / 1e9
            r["fraction_of_matmul_rate"] = r["achieved_gflops"] / mm[r["config"]["precision"]]
            if sampling:
                r["images_per_s"] = args.sample_batch / r["median_s"]
            else:
                r["compile_or_first_step_overhead_s"] = r["first_s"] - r["median_s"]
        return {
            "kind": "sample" if sampling else "train",
            "rounds": rounds,
            "warm_steps": 1 if sampling else args.warm,
            "matmul_gflops": mm,
            "matmul_threads": torch.get_num_threads(),
            "batch_size": args.batch_size,
            "loadavg": load,
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime()),
            "variants": rows,
        }
    finally:
        for proc in {id(h[0]): h[0] for h in handles}.values():
            proc.close()


PROFILED = ("bf16 before", "bf16 after", "bf16 after + channels-last")


def run_profile(args: argparse.Namespace) -> dict:
    out = {"loadavg": [os.getloadavg()]}
    vs = [v for v in variants("main") if v["name"] in PROFILED]
    handles = start(vs, args)
    try:
        for proc, i, v in handles:
            proc.ask("warm", i, n=args.warm)
            prof = proc.ask("profile", i, steps=args.profile_steps)
            prof["components_ms"] = proc.ask("components", i, rounds=args.profile_steps)
            out[v["name"]] = prof
            print(f"[profile] {v['name']}: {prof['step_ms']:.0f} ms/step", flush=True)
    finally:
        handles[0][0].close()
    out["loadavg"].append(os.getloadavg())
    return out


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags")).split()
        isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "avx2") if f in flags]
    except (OSError, StopIteration):
        isa = []
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu
    return {"torch": torch.__version__, "device": dev, "cpu": cpu, "isa": isa, "cpu_count": os.cpu_count()}


def summary(data: dict) -> list[str]:
    """Before/after lines from the idle groups (the machine left to the benchmark), when measured."""
    groups = data["groups"]
    train, sample = groups.get("main idle"), groups.get("sample idle")
    if not train or not sample:
        return []
    t = {r["name"]: r for r in train["variants"]}
    s = {r["name"]: r for r in sample["variants"]}
    before, after = t["bf16 before"], t["bf16 after"]
    lines = [
        "## Summary: before / after, idle machine",
        "",
        f"Groups `main idle` ({train['started']}) and `sample idle` ({sample['started']}); 2 threads, batch 64.",
        "",
        "| measure | before | after | after / before |",
        "|---|---:|---:|---:|",
        f"| training step, s (median, bf16 autocast) | {before['median_s']:.3f} | {after['median_s']:.3f} | "
        f"{before['median_s'] / after['median_s']:.2f}x faster |",
        f"| training step, GFLOP | {before['train_flops'] / 1e9:.1f} | {after['train_flops'] / 1e9:.1f} | |",
        f"| share of the bf16 1024^2 matmul rate | {100 * before['fraction_of_matmul_rate']:.0f}% | "
        f"{100 * after['fraction_of_matmul_rate']:.0f}% | |",
    ]
    for precision in ("fp32", "bf16"):
        b, a = s.get(f"{precision} before"), s.get(f"{precision} after")
        if b and a:
            lines.append(
                f"| sampling, images/s ({precision}; 20 Euler steps, CFG, batch 64) | {b['images_per_s']:.1f} | "
                f"{a['images_per_s']:.1f} | {a['images_per_s'] / b['images_per_s']:.2f}x |"
            )
    lines += [
        "",
        "`crossflow sample` and the demo sample in fp32 (the fp32 row); bf16 sampling is measured for the",
        "comparison only. Since benchmarks/shapes_recipe_sweep.md round 4 the `shapes` recipe samples with 40",
        "Euler steps instead of 20 (more single objects drawn alone), each step the same forward, so the rate",
        "at the demo's settings is half the 20-step row: the demo's sampling phase (the 72 single-object",
        "images, the compositions and the checks) took 28.3 s against 14.0 s in two fresh-clone demos on an",
        "idle machine (`report.json` wall times).",
        'Groups without "idle" in their name ran on a shared machine: read their ratios,',
        "not their times.",
        "",
    ]
    return lines


def markdown(data: dict) -> str:
    meta = data["meta"]
    lines = [
        "# Shapes training step and sampling speed (benchmarks/step_speed.py)",
        "",
        f"{meta['machine']['device']} ({', '.join(meta['machine']['isa'])}), {meta['machine']['cpu_count']} cores, "
        f"torch {meta['machine']['torch']}; recipe `shapes` "
        f"{'with ' + ' '.join(meta['overrides']) if meta['overrides'] else 'as the demo trains it'} "
        f"(batch {meta['batch_size']}, 3x32x32 pixels).",
        "",
        "Method: each variant runs in its own process; the parent times them round-robin (one full optimizer "
        "step of each per round, shuffled order: batch from memory, forward under autocast, backward, loss terms "
        "to the host, grad clip, fused AdamW, EMA update), so the machine's load hits all alike. s/step is the "
        "median over the rounds after warm-up; `vs ref` is the ratio of medians to the group's reference "
        "(wall time; `cpu` the same from process CPU time). FLOPs: `FlopCounterMode` over one forward + backward "
        "of the system (convs, matmuls, attention). `% matmul` = (FLOPs / s per step) / the 1024x1024 matmul "
        "rate of the variant's precision, measured between rounds in the same run with the same thread count. "
        "This machine is shared (other jobs run on the same cores: see the load averages), so absolute times "
        "are inflated and vary; only the ratios within one group are comparable.",
        "",
        *summary(data),
    ]
    for group, g in data["groups"].items():
        load = [round(x[0], 1) for x in g["loadavg"]]
        lines += [
            f"## {group} ({g['rounds']} rounds, batch {g.get('batch_size', '?')}, {g['started']})",
            "",
            f"matmul 1024^2: fp32 {g['matmul_gflops']['fp32']:.0f} GFLOP/s, bf16 {g['matmul_gflops']['bf16']:.0f} "
            f"GFLOP/s ({g['matmul_threads']} threads); 1-min load average during the run: {min(load)}-{max(load)}.",
            "",
        ]
        if g["kind"] == "sample":
            lines += [
                "| variant | GFLOP / batch | median s / batch of 64 | images/s | vs ref | cpu vs ref | % matmul | first call s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in g["variants"]:
                lines.append(
                    f"| {r['name']}{' (ref)' if r['ref'] else ''} | {r['sample_flops'] / 1e9:.0f} | {r['median_s']:.2f} | "
                    f"{r['images_per_s']:.1f} | {r['speedup_vs_ref']:.2f}x | {r['cpu_speedup_vs_ref']:.2f}x | "
                    f"{100 * r['fraction_of_matmul_rate']:.0f}% | {r['first_s']:.1f} |"
                )
        else:
            lines += [
                "| variant | threads | GFLOP / step | median s/step | min | vs ref | cpu vs ref | achieved GFLOP/s | % matmul | first step s |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for r in g["variants"]:
                lines.append(
                    f"| {r['name']}{' (ref)' if r['ref'] else ''} | {r['threads']} | {r['train_flops'] / 1e9:.1f} | "
                    f"{r['median_s']:.3f} | {r['min_s']:.3f} | {r['speedup_vs_ref']:.2f}x | "
                    f"{r['cpu_speedup_vs_ref']:.2f}x | {r['achieved_gflops']:.0f} | "
                    f"{100 * r['fraction_of_matmul_rate']:.0f}% | {r['first_s']:.1f} |"
                )
        lines.append("")
    prof = data.get("profile")
    if prof:
        lines += ["## profile (torch.profiler, CPU self time per step)", ""]
        names = [k for k in prof if k != "loadavg"]
        cats = sorted(
            {c for n in names for c in prof[n]["categories_ms"]},
            key=lambda c: -prof[names[0]]["categories_ms"].get(c, 0),
        )
        lines += [
            "| category | " + " | ".join(f"{n} ms (%)" for n in names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for c in cats:
            cells = []
            for n in names:
                ms = prof[n]["categories_ms"].get(c, 0.0)
                cells.append(f"{ms:.0f} ({100 * ms / prof[n]['step_ms']:.0f}%)")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append(
            "| **step (profiled)** | " + " | ".join(f"{prof[n]['step_ms']:.0f}" for n in names) + " |"
        )
        lines += ["", "Loop phases (ms per step, inclusive):", ""]
        phases = list(prof[names[0]]["phases_ms"])
        lines += ["| phase | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for ph in phases:
            lines.append(
                f"| {ph} | " + " | ".join(f"{prof[n]['phases_ms'].get(ph, 0):.0f}" for n in names) + " |"
            )
        lines += ["", "Networks alone (forward + backward, ms, median):", ""]
        comps = list(prof[names[0]]["components_ms"])
        lines += ["| part | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for c in comps:
            lines.append(f"| {c} | " + " | ".join(f"{prof[n]['components_ms'][c]:.0f}" for n in names) + " |")
        for n in names:
            lines += [
                "",
                f"Top ops, {n}:",
                "",
                "| op | self ms/step | % of step | calls/step |",
                "|---|---:|---:|---:|",
            ]
            for o in prof[n]["top_ops"][:15]:
                lines.append(f"| `{o['op'][:70]}` | {o['self_ms']:.1f} | {o['pct']:.1f}% | {o['calls']} |")
        load = [round(x[0], 1) for x in prof["loadavg"]]
        lines += ["", f"1-min load average: {load}.", ""]
    notes = data.get("notes")
    if notes:
        lines += ["## notes", "", *notes, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", default="main,runtime,compile,sample,profile")
    parser.add_argument(
        "--variants", default="", help="comma-separated variant names to keep (+ the reference)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed training steps per variant")
    parser.add_argument("--sample-rounds", type=int, default=3, help="timed sampling calls per variant")
    parser.add_argument("--warm", type=int, default=3, help="warm-up steps per variant")
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (the demo: 2)")
    parser.add_argument("--set", action="append", default=[], help="a recipe override, section.key=value")
    parser.add_argument("--child", metavar="CONFIG")
    parser.add_argument("--recipe-json", help="(child) the recipe as the parent loaded it")
    parser.add_argument("--tag", default="", help="suffix of the groups' keys in the JSON (e.g. ' 1 thread')")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.child:
        child_main(json.loads(args.child), json.loads(Path(args.recipe_json).read_text()))
        return
    from crossflow_core.recipe import load_recipe

    recipe = load_recipe(
        "shapes", args.set
    )  # once: every child builds from this (the file may change meanwhile)
    fd, args.recipe_json = tempfile.mkstemp(prefix="step_speed_recipe_", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(recipe.to_dict(), f)
    args.sample_batch, args.batch_size = recipe.sample.batch_size, recipe.train.batch_size
    data = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() and not args.no_write else {"groups": {}}
    data["meta"] = {
        "machine": machine(),
        "recipe": "shapes",
        "overrides": args.set,
        "batch_size": recipe.train.batch_size,
        "model": recipe.to_dict()["model"],
        "sample": {
            "steps": recipe.sample.steps,
            "solver": recipe.sample.solver,
            "cfg_scale": recipe.sample.cfg_scale,
            "batch_size": recipe.sample.batch_size,
        },
        "threads": args.threads,
    }
    try:
        for group in args.groups.split(","):
            if group == "profile":
                data["profile"] = run_profile(args)
            else:
                data["groups"][group + args.tag] = run_group(group, args)
            if not args.no_write:
                OUT_JSON.write_text(json.dumps(data, indent=1) + "\n")
                OUT_MD.write_text(markdown(data) + "\n")
    finally:
        os.unlink(args.recipe_json)
    print(markdown(data))


if __name__ == "__main__":
    main()
