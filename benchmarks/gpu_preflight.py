"""`make gpu-preflight`: what the GPU will compile for SMYRF's CUDA route, measured on the CPU.

Every Triton specialisation that one forward + backward launches (`triton_launches.py`: the real
launch code, Triton's own binder) at the goal shapes -- batch 32, 16,384 and 65,536 queries,
N/4 keys, d_qk 12, d_v 48; the default and the paper recipe; bf16, fp16, fp32 with TF32 and with
IEEE dots -- compiled ahead of time for sm_90 and sm_80 with the Triton imported here (3.8) and
with Triton 3.6.0 (the CUDA machines' version) (`.venv-triton36`, made by `make gpu-preflight`; its triton
shadows ours in a subprocess that borrows our torch). Per kernel, from the wheel's own tools:
- registers, spill stores/loads and stack: `ptxas -v` on the PTX, with Triton's ptxas options;
- shared memory, warps and stages: Triton's kernel metadata;
- blocks per SM: the occupancy those allow (64K registers allocated per warp in units of 256,
  64 warps, 32 blocks, 228 KB / 164 KB shared memory with 1 KB reserved per block on sm_90 / sm_80);
- global loads by width: the SASS (nvdisasm), LDG and LDGSTS (cp.async) counted per width. In
  bf16/fp16 only q, k, v and gradient rows hold 16-bit elements, so 16-bit loads are scalar row loads.
Cost: about (captures + compiles) x a few seconds; --batch 1 gives the same specialisations
(batch enters only the grid) in a fraction of the time, which `--check-batch` verifies.

    python -m benchmarks.gpu_preflight [--batch 32] [--jobs 2]   # -> results/gpu_preflight-cpu.{json,md}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SIDE_VENV = ROOT / ".venv-triton36"
SIZES = (16384, 65536)
GOAL_BATCH = 32
CAPABILITIES = (90, 80)
# (registers per SM, warps per SM, blocks per SM, shared memory per SM, reserved per block)
SM_LIMITS = {90: (65536, 64, 32, 228 * 1024, 1024), 80: (65536, 64, 32, 164 * 1024, 1024)}
# The goals, checked on Triton 3.6 (the CUDA machines' version) at sm_90: the kernels of the forward and the dK/dV pass.
GOAL_TRITON, GOAL_ARCH, GOAL_DTYPES = "3.6.0", "sm_90", ("bf16", "fp16", "tf32")
HOT_KERNELS = ("_forward_kernel", "_backward_kv_kernel", "_backward_one_pass_kernel")
# Kernels that read the caller's q and k once, through whatever strides they have (BigGAN's
# channels-first views: 2-byte features N elements apart, where no vector load exists), to lay
# them out padded for every later kernel: the 16-byte load goal is about those later reads.
LAYOUT_KERNELS = ("buffers._inputs_kernel",)
CONSTANTS = ("HAS_BIAS", "HAS_MASK", "BLOCK_M", "BLOCK_N")


def side_site_packages() -> Path | None:
    found = sorted(SIDE_VENV.glob("lib/python*/site-packages/triton"))
    return found[0].parent if found else None


# --- measuring one specialisation ---------------------------------------------------------------


def ptxas_usage(ptx: str, capability: int, fp_fusion: bool) -> dict:
    """Registers, spills and stack from `ptxas -v`, run as Triton's make_cubin runs it."""
    import triton
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        src.write_text(ptx)
        command = [triton.knobs.nvidia.ptxas.path, "-lineinfo", *([] if fp_fusion else ["--fmad=false"]), "-v",
                   f"--gpu-name={sm_arch_from_capability(capability)}", str(src), "-o", str(src.with_suffix(".o"))]
        log = subprocess.run(command, check=True, capture_output=True, text=True).stderr
    stack, stores, loads = map(int, re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log).groups())
    return dict(registers=int(re.search(r"Used (\d+) registers", log).group(1)), spill_stores=stores, spill_loads=loads, stack=stack)


LOAD = re.compile(r"\b(LDGSTS|LDG)((?:\.[A-Z0-9_]+)*)")
WIDTHS = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}


def global_loads(cubin: bytes) -> dict[str, int]:
    """Global load instructions of the SASS by width in bits ("async" ones are cp.async's LDGSTS)."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([triton.knobs.nvidia.nvdisasm.path, "-c", f.name], check=True, capture_output=True, text=True).stdout
    counts: dict[str, int] = {}
    for op, modifiers in LOAD.findall(sass):
        width = next((WIDTHS[m] for m in modifiers.split(".") if m in WIDTHS), 32)
        key = f"{width}{' async' if op == 'LDGSTS' else ''}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-int(kv[0].split()[0]), kv[0])))


def occupancy(registers: int, shared: int, warps: int, capability: int) -> dict:
    """Resident blocks per SM and what limits them."""
    regs_sm, warps_sm, blocks_sm, shared_sm, reserved = SM_LIMITS[capability]
    regs_per_warp = math.ceil(registers * 32 / 256) * 256
    limits = {
        "registers": (regs_sm // regs_per_warp) // warps,
        "warps": warps_sm // warps,
        "shared": shared_sm // (shared + reserved),
        "blocks": blocks_sm,
    }
    blocks = min(limits.values())
    return dict(blocks_per_sm=blocks, warps_per_sm=blocks * warps, limiter=min(limits, key=limits.get))


def measure(launch, capability: int) -> dict:
    from triton.backends.compiler import GPUTarget

    start = time.perf_counter()
    compiled = launch.compile(GPUTarget("cuda", capability, 32))
    seconds = time.perf_counter() - start
    meta = compiled.metadata
    usage = ptxas_usage(compiled.asm["ptx"], capability, launch.options.get("enable_fp_fusion", True))
    return dict(
        **usage, shared=meta.shared, num_warps=meta.num_warps, num_stages=meta.num_stages,
        **occupancy(usage["registers"], meta.shared, meta.num_warps, capability),
        loads=global_loads(compiled.asm["cubin"]), compile_s=round(seconds, 2),
    )


# --- one Triton version: capture, compile, measure (run in a subprocess per version) -----------


def worker(batch: int, sizes, recipes, dtypes, capabilities, jobs: int, only=()) -> list[dict]:
    from benchmarks import triton_launches

    found: dict[tuple[int, str], tuple] = {}  # (capability, key) -> (launch, dtype, cases)
    for n in sizes:
        for recipe in recipes:
            for dtype in dtypes:
                captured = triton_launches.smyrf_launches(recipe, n, batch, dtype, tuple(capabilities))
                for capability, launches in captured.items():
                    for launch in triton_launches.unique(launches):
                        if only and f"{launch.module}.{launch.name}" not in only:
                            continue
                        entry = found.setdefault((capability, launch.key()), (launch, dtype, []))
                        if f"{recipe}@{n}" not in entry[2]:
                            entry[2].append(f"{recipe}@{n}")
    _WORK[:] = found.items()
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:  # the children inherit _WORK
            return pool.map(_measure_one, range(len(_WORK)))
    return [_measure_one(i) for i in range(len(_WORK))]


_WORK: list = []  # ((capability, key), (launch, dtype, cases)) of the worker, for its pool


def _measure_one(i: int) -> dict:
    import triton

    (capability, _), (launch, dtype, cases) = _WORK[i]
    constants = launch.constants
    return dict(
        triton=triton.__version__, arch=f"sm_{capability}", kernel=f"{launch.module}.{launch.name}", dtype=dtype,
        **{name.lower(): constants[name] for name in CONSTANTS if name in constants},
        cases=cases, **measure(launch, capability),
    )


def keys_at(batch: int, n: int, recipe: str, dtype: str) -> list[str]:
    from benchmarks import triton_launches

    return [launch.key() for launch in triton_launches.unique(triton_launches.smyrf_launches(recipe, n, batch, dtype)[90])]


# --- both versions, report ---------------------------------------------------------------------


def run_worker(triton_path: Path | None, args) -> list[dict]:
    """This script's --worker under our Triton (None) or the one in `triton_path` (shadowing ours)."""
    options = ["--batch", str(args.batch), "--jobs", str(args.jobs), "--sizes", *map(str, args.sizes),
               "--recipes", *args.recipes, "--dtypes", *args.dtypes, "--capabilities", *map(str, args.capabilities)]
    return worker_in_subprocess(triton_path, options + (["--only", *args.only] if args.only else []))


def worker_in_subprocess(triton_path: Path | None, options: list[str]) -> list[dict]:
    """Rows of this script's --worker run with `options`, under our Triton or the one in `triton_path`."""
    paths = ([str(triton_path)] if triton_path else []) + [str(ROOT)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", "benchmarks.gpu_preflight", "--worker", out.name, *options], check=True, env=env, cwd=ROOT)
        return json.loads(Path(out.name).read_text())


def goals(rows: list[dict]) -> list[dict]:
    """The register/load goals on Triton 3.6 (the CUDA machines' version) at sm_90, each met or missed (and by which kernels)."""
    scope = [r for r in rows if r["triton"] == GOAL_TRITON and r["arch"] == GOAL_ARCH and r["dtype"] in GOAL_DTYPES]
    hot = [r for r in scope if r["kernel"].endswith(HOT_KERNELS)]
    half = [r for r in scope if r["dtype"] in ("bf16", "fp16") and not r["kernel"].endswith(LAYOUT_KERNELS)]

    def label(r):
        return f"{r['kernel']} {r['dtype']}"

    def unique(labels):
        return list(dict.fromkeys(labels))

    checks = [
        ("zero spills in bf16, fp16 and TF32", [label(r) for r in scope if r["spill_stores"] or r["spill_loads"]]),
        (">= 3 blocks (or >= 12 warps) per SM, forward and dK/dV (two-kernel and one-pass) kernels",
         [f"{label(r)}: {r['blocks_per_sm']}" for r in hot if r["blocks_per_sm"] < 3 and r["warps_per_sm"] < 12]),
        ("q/k rows in 16-byte loads (no scalar 16-bit loads), bf16/fp16, past the layout kernel",
         [f"{label(r)}: {r['loads'].get('16', 0) + r['loads'].get('16 async', 0)}" for r in half
          if r["loads"].get("16", 0) or r["loads"].get("16 async", 0)]),
    ]
    return [dict(goal=goal, met=not failing and bool(scope), failing=unique(failing)) for goal, failing in checks]


def loads_cell(loads: dict) -> str:
    return " ".join(f"{n}x{width}" for width, n in loads.items()) or "-"


COLUMNS = [
    ("kernel", "kernel"), ("dtype", "dtype"), ("variant", "bias/mask"), ("blocks", "BLOCK_M x N, warps, stages"),
    ("registers", "regs"), ("spills", "spill st/ld B"), ("shared_kib", "smem KiB"), ("occupancy", "blocks/SM (warps)"),
    ("loads_cell", "global loads (count x bits)"), ("launched", "launched by"),
]


def table_rows(rows: list[dict]) -> list[dict]:
    return [dict(
        r, variant="yes" if r.get("has_bias") or r.get("has_mask") else "no",
        blocks=f"{r.get('block_m', '-')} x {r.get('block_n', '-')}, {r['num_warps']}, {r['num_stages']}",
        spills=f"{r['spill_stores']}/{r['spill_loads']}", shared_kib=round(r["shared"] / 1024, 1),
        occupancy=f"{r['blocks_per_sm']} ({r['warps_per_sm']}) {r['limiter']}", loads_cell=loads_cell(r["loads"]),
        launched=", ".join(r["cases"]),
    ) for r in rows]


def comparison(before: list[dict], after: list[dict]) -> str:
    """Before -> after per kernel on the goal's Triton and GPU."""
    from benchmarks.common import markdown_table

    def index(rows):
        return {(r["kernel"], r["dtype"], r.get("has_bias", r.get("has_mask")), ", ".join(r["cases"])): r for r in rows
                if r["triton"] == GOAL_TRITON and r["arch"] == GOAL_ARCH}

    old, new = index(before), index(after)
    lines = []
    for key in sorted(new, key=str):
        a, b = old.get(key), new[key]
        if a is None:
            continue
        lines.append(dict(
            kernel=key[0], dtype=key[1], variant="yes" if key[2] else "no", launched=key[3],
            registers=f"{a['registers']} -> {b['registers']}",
            spills=f"{a['spill_stores']}/{a['spill_loads']} -> {b['spill_stores']}/{b['spill_loads']}",
            occupancy=f"{a['blocks_per_sm']} ({a['warps_per_sm']}) -> {b['blocks_per_sm']} ({b['warps_per_sm']})",
            loads_cell=f"{loads_cell(a['loads'])} -> {loads_cell(b['loads'])}",
        ))
    return markdown_table(lines, [("kernel", "kernel"), ("dtype", "dtype"), ("variant", "bias/mask"),
                                  ("registers", "regs"), ("spills", "spill st/ld B"), ("occupancy", "blocks/SM (warps)"),
                                  ("loads_cell", "global loads"), ("launched", "launched by")])


def write(rows: list[dict], meta: dict, baseline: list[dict]) -> Path:
    from benchmarks.common import RESULTS, markdown_table

    met = goals(rows)
    parts = ["# Triton specialisations of the CUDA route, compiled ahead of time\n",
             f"Launches captured from one forward + backward at batch {meta['batch']}"
             + (f" (batch 1 and {GOAL_BATCH} checked to launch the same specialisations)" if meta.get("same_specialisations_at_batch_1") else "")
             + f", N in {list(meta['sizes'])} "
             f"(N/4 keys, d_qk 12, d_v 48), recipes {meta['recipes']}; compiled by each Triton for sm_90 and sm_80 "
             "(`python -m benchmarks.gpu_preflight`). Loads: SASS LDG/LDGSTS counted by width.\n",
             "## Goals (Triton 3.6.0, sm_90)\n"]
    parts += [f"- {'met' if g['met'] else 'MISSED'}: {g['goal']}" + (f" -- {', '.join(g['failing'])}" if g["failing"] else "")
              for g in met]
    if baseline and baseline != rows:
        parts += ["", "## Before -> after (Triton 3.6.0, sm_90)\n", comparison(baseline, rows)]
    for version in sorted({r["triton"] for r in rows}):
        for arch in ("sm_90", "sm_80"):
            chosen = [r for r in rows if r["triton"] == version and r["arch"] == arch]
            if chosen:
                parts += ["", f"## Triton {version}, {arch}\n", markdown_table(table_rows(chosen), COLUMNS)]
    results = RESULTS / "gpu_preflight-cpu"
    RESULTS.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps({"meta": meta, "goals": met, "rows": rows, "baseline": baseline}, indent=1))
    results.with_suffix(".md").write_text("\n".join(parts) + "\n")
    return results


def main(argv=None) -> int:
    from benchmarks import triton_launches

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=GOAL_BATCH)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--recipes", nargs="+", default=list(triton_launches.RECIPES))
    parser.add_argument("--dtypes", nargs="+", default=list(triton_launches.DTYPES))
    parser.add_argument("--capabilities", type=int, nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--only", nargs="+", default=[], help="kernels to compile, e.g. triton_rounds._forward_kernel")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    parser.add_argument("--new-baseline", action="store_true", help="record this run as the 'before' of later runs")
    parser.add_argument("--check-batch", action="store_true",
                        help=f"check that batch 1 and batch {GOAL_BATCH} launch the same specialisations (then --batch 1 is exact)")
    parser.add_argument("--report-only", action="store_true", help="rewrite the markdown from the saved JSON")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    batch_check = None
    if args.check_batch:
        batch_check = keys_at(1, SIZES[0], "default", "bf16") == keys_at(GOAL_BATCH, SIZES[0], "default", "bf16")
        print(f"batch 1 and batch {GOAL_BATCH} launch the same specialisations: {batch_check}")
        if not batch_check:
            return 1
    if args.report_only:
        saved = saved_results()
        meta = {**saved["meta"], **({"same_specialisations_at_batch_1": batch_check} if args.check_batch else {})}
        print(write(saved["rows"], meta, saved["baseline"]).with_suffix(".md").read_text())
        return 0
    if args.worker:
        rows = worker(args.batch, args.sizes, args.recipes, args.dtypes, args.capabilities, args.jobs, args.only)
        Path(args.worker).write_text(json.dumps(rows))
        return 0
    side = side_site_packages()
    if side is None:
        print(f"error: no Triton 3.6 in {SIDE_VENV.name}; run `make gpu-preflight` (it makes that venv)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    rows = run_worker(side, args) + run_worker(None, args)
    previous = saved_results()
    baseline = rows if args.new_baseline or not previous.get("baseline") else previous["baseline"]
    meta = dict(batch=args.batch, same_specialisations_at_batch_1=batch_check, sizes=args.sizes, recipes=args.recipes, dtypes=args.dtypes,
                seconds=round(time.perf_counter() - start), date=time.strftime("%Y-%m-%d"))
    path = write(rows, meta, baseline)
    print(path.with_suffix(".md").read_text())
    return 0


def saved_results() -> dict:
    from benchmarks.common import RESULTS

    path = RESULTS / "gpu_preflight-cpu.json"
    return json.loads(path.read_text()) if path.exists() else {}


if __name__ == "__main__":
    sys.exit(main())
