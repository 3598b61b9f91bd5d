"""Whole-model benchmarks: BigGAN G forward+backward, and the full GAN training step.

    python benchmarks/models.py --table model     # G fwd+bwd  -> results/models-<dev>.{json,md}
    python benchmarks/models.py --table step      # train step -> results/train_step-<dev>.{json,md}
    python benchmarks/models.py --table step --quick          # ch=16, batch 2: a sanity run
    python benchmarks/models.py --table step --device cuda    # in-process, batches 16 and 32 (--batches)
    python benchmarks/models.py --table step --variants "dense@128 flash" "smyrf@128 ours 4x2048" \
        --batches 4 --reps 5 --name train_step_flash_vs_smyrf    # a subset, more reps
    python benchmarks/models.py --table step --device cuda --variants dense@64 --dtypes bf16 \
        --speeds plain nhwc compile                              # channels_last, torch.compile
    --threads N (default 2), --reps N (default 3). On a shared 2-core machine, --threads 1 is
    far steadier: with 2 threads, one core taken by another process stalls every parallel op.
    The committed CPU tables: --table model --threads 1 --reps 5 (20 min), --table step
    --threads 1 --reps 2 (30 min; batch 8 only for dense@64, naive dense@128 and paper SMYRF).

model: loss = G(z).mean(), backward; G128 (ch=96, dim_z=120) or G256 (dim_z=140), batch 4.
step:  one G iteration as in training (biggan_smyrf.training.module): 2 D steps (G(z) under
       no_grad, D(cat[real, fake]) hinge loss, backward, Adam step) + 1 G step (D(G(z)) hinge,
       backward with D frozen, Adam step) + the G_ema update (training.ema.update_ema). D has no
       attention (the paper's CelebA-HQ config). bf16 = torch.autocast around the forwards. Adam
       as the LightningModule makes it (SpeedConfig.fused_adam: the fused kernel on CUDA).
speeds: plain; nhwc = SpeedConfig.channels_last (G, D and the real images channels-last);
       compile = torch.compile(dynamic=False) of G's and D's forward (benchmark only: not a
       training option yet; its first call, which compiles, is left out of the time);
       sn per layer = PyTorch's per-layer spectral norm instead of G's and D's power iterations
       run together (models/spectral.py), to measure what that saves.
Every attention block's gamma is set to 1, so attention contributes to outputs and gradients.
Peak memory is measured on the first call (which also allocates grads and Adam state), then the
median of `reps` further calls is timed. On the CPU every case runs in a fresh subprocess (peak
RSS only grows) with a timeout and a 16 GiB address-space limit; on CUDA in-process with
torch.cuda peak stats.

Complexity of one attention block (N = H*W queries, M = N/4 pooled keys, d = ch/8):
dense naive materialises the N x M scores: O(N*M*d) time and O(N*M) memory (at 128 px and batch
8: 8 * 16384 * 4096 * 4 B = 2 GiB per score matrix, several kept for backward). Flash SDPA does the
same O(N*M*d) work in O(N) memory. SMYRF with h hashes and clusters of c_q queries / c_k keys
does O(h*N*c_k*d) work plus the O(h*(N+M) log N) hashing sort; its CPU cluster kernels are flash
too, so memory is O(h*N) (on CUDA the chunked kernel adds O(chunk) scores): 4 hashes x 2048/512
at 128 px is 1/2 of the dense products (our default adds ~1/16 for hub keys).
G's convolutions, not attention, dominate the rest: O(batch * sum over stages of H*W*C^2).
"""
from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
from contextlib import nullcontext
from typing import Optional
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_cuda_options, apply_cuda_options, markdown_table, median_seconds, peak_extra_bytes, run_case_in_subprocess, write_results)

import biggan_smyrf.attention as attention_module  # noqa: E402
from biggan_smyrf.attention import AttentionConfig, dense_attention  # noqa: E402
from biggan_smyrf.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig, attention_blocks  # noqa: E402
from biggan_smyrf.models.spectral import normalise_together  # noqa: E402
from biggan_smyrf.training.ema import make_ema, update_ema  # noqa: E402
from biggan_smyrf.training.losses import d_hinge_loss, g_hinge_loss  # noqa: E402

ATTENTION = {
    "dense": AttentionConfig(kind="dense"),
    "paper": AttentionConfig.paper(n_hashes=4, q_cluster_size=2048),
    "ours": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048),
    "ours 4x4096": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=4096),  # k_cluster auto = 1024
    # The same with the previous CUDA route (gathered copies, chunked matmuls): what the Triton route buys.
    "ours chunked": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048, kernel="chunked"),
}
# name -> (image resolution, attention resolution or None, ATTENTION key, naive dense kernel)
VARIANTS = {
    "none": (128, None, None, False),
    "dense@64": (128, 64, "dense", False),
    "dense@128 naive": (128, 128, "dense", True),
    "dense@128 flash": (128, 128, "dense", False),
    "smyrf@128 paper 4x2048": (128, 128, "paper", False),
    "smyrf@128 ours 4x2048": (128, 128, "ours", False),
    "smyrf@128 ours 4x2048 chunked": (128, 128, "ours chunked", False),
    "smyrf@256 ours 4x4096": (256, 256, "ours 4x4096", False),
    "dense@256 flash": (256, 256, "dense", False),
}
STEP_VARIANTS = ["dense@64", "dense@128 naive", "dense@128 flash", "smyrf@128 paper 4x2048", "smyrf@128 ours 4x2048"]
# On CUDA also SMYRF through the previous CUDA route (gathered copies, chunked matmuls).
CUDA_STEP_VARIANTS = [*STEP_VARIANTS, "smyrf@128 ours 4x2048 chunked"]
BASE_TIME, BASE_MEM = "dense@64", "dense@128 naive"  # the ratio columns' references
TIMEOUT_S = 1500  # a G256 train step on 2 cores takes minutes
CPU_MEMORY_LIMIT = 16 * 2**30  # address space per case: a case that needs more fails, not the machine


SPEEDS = ("plain", "nhwc", "compile", "nhwc+compile", "sn per layer")


def cases(table: str, device: str, quick: bool, reps: int, threads: int, speeds=("plain",), batches=None):
    """Every row of a table. `batches` (default: CPU 4 and 8, CUDA 16 and 32) are the plan's own:
    each mixed-precision row exists at every CUDA batch, so `--batches 32` gets its bf16 and fp16 rows."""
    ch = 16 if quick else 96
    if table == "model":
        batches = [2] if quick else batches or ([4] if device == "cpu" else [4, 16])
        plan = [(v, b, "fp32") for b in batches for v in VARIANTS]
    else:
        batches = [2] if quick else batches or ([4, 8] if device == "cpu" else [16, 32])
        step_variants = STEP_VARIANTS if device == "cpu" else CUDA_STEP_VARIANTS
        plan = [(v, b, "fp32") for b in batches for v in step_variants]
        if device == "cpu" and not quick:  # time: batch 8 only for the target's references and SMYRF
            plan = [(v, b, d) for v, b, d in plan if b == 4 or v in (BASE_TIME, BASE_MEM, "smyrf@128 paper 4x2048")]
        plan += [("smyrf@256 ours 4x4096", batches[0], "fp32")]
        # CPU: bf16 only where the question is (flash dense vs SMYRF), at the first batch; CUDA: the
        # whole set at every batch, and 16-mixed (fp16 autocast with GradScaler, as Lightning runs it).
        if device == "cpu":
            plan += [(v, batches[0], "bf16") for v in ["dense@128 flash", "smyrf@128 paper 4x2048"]]
        else:
            plan += [(v, b, d) for d in ("bf16", "fp16") for b in batches for v in step_variants]
    for variant, batch, dtype in plan:
        for speed in speeds:
            yield {"table": table, "device": device, "variant": variant, "batch": batch, "dtype": dtype, "ch": ch,
                   "reps": 1 if quick else reps, "threads": threads, "speed": speed}


def plan_cases(args) -> list[dict]:
    """The rows `main` runs for these arguments, in order: the table's cases that --variants,
    --dtypes and --batches select (what gpu_plan.py reads without running them)."""
    return [
        case for case in cases(args.table, args.device, args.quick, args.reps, args.threads, args.speeds, args.batches)
        if (not args.variants or case["variant"] in args.variants) and (not args.dtypes or case["dtype"] in args.dtypes)
    ]


def use_naive_dense(naive: bool) -> None:
    """Benchmark only: the product always uses flash SDPA. The naive rows measure the O(N*M)-memory
    math kernel the SMYRF paper compared against; `attend` looks `dense_attention` up in its
    module's namespace, so replacing it there reaches every attention block."""
    attention_module.dense_attention = functools.partial(dense_attention, backend="math") if naive else dense_attention


def build(case: dict, device: torch.device):
    """G and D for the case's variant, attention gammas at 1."""
    resolution, at, attention, naive = VARIANTS[case["variant"]]
    use_naive_dense(naive)
    net = dict(resolution=resolution, ch=case["ch"], attention_resolutions=[at] if at else [])
    if attention:
        net["attention"] = ATTENTION[attention]
    torch.manual_seed(0)
    # Built on the device: orthogonal init (a QR per layer) and spectral norm's 15 start-up power
    # iterations take ~10 s on 2 CPU cores for G128 + D128 at ch 96, per case.
    with torch.device(device):
        G = Generator(GeneratorConfig(dim_z=140 if resolution == 256 else 120, **net))
        D = Discriminator(DiscriminatorConfig(resolution=resolution, ch=case["ch"], attention_resolutions=[]))
    for block in attention_blocks(G).values():
        block.gamma.data.fill_(1.0)
    return G, D


def workload(case: dict, device: torch.device):
    """The function one rep calls."""
    G, D = build(case, device)
    batch = case["batch"]
    speed = case.get("speed", "plain")
    layout = torch.channels_last if "nhwc" in speed else torch.contiguous_format
    G.to(memory_format=layout)
    D.to(memory_format=layout)
    if speed == "sn per layer":  # PyTorch's per-layer spectral norm, what models/spectral.py replaces
        normalise_together(G, False), normalise_together(D, False)
    G_ema = make_ema(G, decay=0.9999) if case["table"] == "step" else None  # before compile: a plain copy
    if "compile" in speed:
        G.compile(dynamic=False)
        D.compile(dynamic=False)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(case["dtype"])
    autocast = functools.partial(torch.autocast, device.type, dtype=half) if half else nullcontext
    # fp16 needs loss scaling; with it off (fp32, bf16) GradScaler's calls pass straight through.
    scaler = torch.amp.GradScaler(device.type, enabled=case["dtype"] == "fp16")

    def z():
        return torch.randn(batch, G.config.dim_z, device=device)

    if case["table"] == "model":

        def g_forward_backward():
            with autocast():
                loss = G(z()).float().mean()
            loss.backward()

        return g_forward_backward

    adam = dict(betas=(0.0, 0.999), eps=1e-6, fused=(device.type == "cuda") or None)
    opt_g = torch.optim.Adam(G.parameters(), lr=5e-5, **adam)
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, **adam)
    real = torch.rand(batch, 3, G.config.resolution, G.config.resolution, device=device) * 2 - 1
    real = real.contiguous(memory_format=layout)

    def train_step():
        for _ in range(2):
            with torch.no_grad(), autocast():
                fake = G(z())
            with autocast():
                scores = D(torch.cat([real, fake.to(real.dtype)])).float()
            scaler.scale(d_hinge_loss(*scores.split(batch))).backward()
            scaler.step(opt_d)
            scaler.update()
            opt_d.zero_grad(set_to_none=True)
        D.requires_grad_(False)  # as Lightning's toggle_optimizer(opt_g) does
        with autocast():
            loss = g_hinge_loss(D(G(z())).float())
        scaler.scale(loss).backward()
        scaler.step(opt_g)
        scaler.update()
        opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(True)
        update_ema(G_ema, G, copy=False)

    return train_step


def run_case(case: dict) -> dict:
    device = torch.device(case["device"])
    if device.type == "cpu":
        torch.set_num_threads(case["threads"])
        resource.setrlimit(resource.RLIMIT_AS, (CPU_MEMORY_LIMIT, CPU_MEMORY_LIMIT))
    fn = workload(case, device)
    peak = peak_extra_bytes(fn, device)  # the first call doubles as the warm-up
    return {**case, "ms": 1e3 * median_seconds(fn, device, case["reps"], warmup=0), "peak_mb": peak / 2**20}


def run_cpu_case(case: dict) -> dict:
    try:
        return run_case_in_subprocess(__file__, case, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timeout after {TIMEOUT_S} s"}


def run_cuda_case(case: dict) -> dict:
    try:
        return run_case(case)
    except torch.OutOfMemoryError:
        return {**case, "error": "CUDA out of memory"}
    except Exception as error:  # noqa: BLE001 -- one broken row must not lose the others' numbers
        return {**case, "error": f"{type(error).__name__}: {error}"[:200]}
    finally:
        use_naive_dense(False)
        torch.cuda.empty_cache()


def add_ratios(rows: list[dict]) -> None:
    """Time vs dense@64 and memory vs naive dense@128 (same batch, dtype and speed), and time vs
    the same row in fp32 plain (what mixed precision and the speed options buy together)."""
    by_key = {(r["variant"], r["batch"], r["dtype"], r.get("speed", "plain")): r for r in rows}
    for r in rows:
        if "ms" not in r:
            continue
        speed = r.get("speed", "plain")
        fp32 = by_key.get((r["variant"], r["batch"], "fp32", "plain"), {})
        if "ms" in fp32 and r is not fp32:
            r["time_vs_fp32"] = r["ms"] / fp32["ms"]
        if VARIANTS[r["variant"]][0] != 128:
            continue
        base_t = by_key.get((BASE_TIME, r["batch"], r["dtype"], speed), {})
        base_m = by_key.get((BASE_MEM, r["batch"], r["dtype"], speed), {})
        if "ms" in base_t:
            r["time_vs_dense64"] = r["ms"] / base_t["ms"]
        if base_m.get("peak_mb"):
            r["mem_vs_naive128"] = r["peak_mb"] / base_m["peak_mb"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=["model", "step"], default="model")
    parser.add_argument("--quick", action="store_true", help="ch=16, batch 2, 1 rep")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--reps", type=int, default=3, help="timed calls per case, after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per CPU case")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="only these rows (every dtype)")
    parser.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16", "fp16"], help="only these dtypes")
    parser.add_argument("--batches", nargs="+", type=int,
                        help="batch sizes (default: CPU 4 8, CUDA 16 32; --quick: 2)")
    add_cuda_options(parser)
    parser.add_argument("--speeds", nargs="+", default=["plain"], choices=SPEEDS,
                        help="step variants: plain, nhwc (channels_last), compile, nhwc+compile")
    parser.add_argument("--name", help="results file stem (default: models / train_step)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser


def main():
    parser = build_parser()
    args = parser.parse_args()
    apply_cuda_options(args)
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")

    plan = plan_cases(args)
    if not plan:
        parser.error("no rows: --variants, --dtypes and --batches select none of the table's cases")
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)  # what the case subprocesses use; the results' header names it
    meta = {"table": args.table, "ch": plan[0]["ch"], "quick": args.quick, "reps": plan[0]["reps"],
            "threads": args.threads, "timeout_s": TIMEOUT_S}
    rows = []
    for case in plan:
        rows.append(run_cpu_case(case) if device.type == "cpu" else run_cuda_case(case))
        print(json.dumps(rows[-1]), flush=True)
        save(args.table, device, rows, meta, args.name, quiet=True)  # a run stopped part-way keeps its rows
    save(args.table, device, rows, meta, args.name)
    failed = [r for r in rows if "error" in r and r["error"] != "CUDA out of memory"]
    sys.exit(1 if failed else 0)


def save(table_name: str, device: torch.device, rows: list[dict], meta: dict, name: Optional[str] = None,
         quiet: bool = False) -> None:
    add_ratios(rows)
    what = "G fwd+bwd ms" if table_name == "model" else "step ms"
    columns = [
        ("variant", "G attention"), ("batch", "batch"), ("dtype", "dtype"), ("speed", "speed"), ("ms", what),
        ("peak_mb", "peak MB"),
        ("time_vs_fp32", "time vs fp32 plain"), ("time_vs_dense64", "time vs dense@64"),
        ("mem_vs_naive128", "mem vs naive@128"), ("error", "note"),
    ]
    table = markdown_table(rows, columns)
    name = name or ("models" if table_name == "model" else "train_step")
    stem = write_results(name, device, rows, table, meta)
    if not quiet:
        print(table)
        print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
