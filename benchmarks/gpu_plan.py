"""What `make gpu-check` / `make gpu-bench` will run, planned without a GPU: every step's rows, its
cold compiles and an estimate of its wall time on an H100.

    python -m benchmarks.checks.gpu_check --plan            # gpu-check's plan and estimate (--bench, --with-bench)

A benchmark step's rows are its script's own `plan_cases(args)` -- the function that script's
`main` iterates -- on the step's own command line, so what is planned here is what runs there;
nothing is launched. From the rows:

- Triton specialisations: the launch-time keys of every Triton launch a row's SMYRF call makes,
  captured from the route's own launch code at batch 1 (`triton_launches.call_launches`: Triton's
  binder, no compile, no GPU; the batch only sizes grids and batch strides). Compiled kernels land
  in Triton's on-disk cache, so each specialisation is cold once per run, in the first step that
  needs it; the warm-up step (triton_warmup.py) compiles all of them at once in parallel processes.
- torch.compile graphs: a G iteration's compiled G and D give 7 graphs per row (G without
  gradients for the D steps, G's forward and backward, D's forward and backward with its
  parameters trainable and again frozen for the G step).
- Wall time, from the H100 numbers below (per-row calls as each script makes them).

The per-compile costs: a Triton specialisation 1.5 s (compiling the permuted-round kernels for
sm_90 through the wheel's ptxas took 0.9-1.2 s per kernel on one core of this machine's Xeon, plus
the launcher), an Inductor graph 20 s (not measured here: Inductor on a CPU compiles C++, not
Triton). Time cost O(rows) to plan; nothing is allocated on a device.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
from dataclasses import dataclass, field

import torch


# --- H100 costs (seconds), each with where it comes from -----------------------------------------
TRITON_COMPILE_S = 1.5  # per specialisation, see the module docstring
INDUCTOR_GRAPH_S = 20.0  # per torch.compile graph, cold (an estimate: Inductor compiles in parallel workers)
PROCESS_START_S = 8.0  # python, torch, CUDA context and the benchmark's imports
WARMUP_PROCESS_S = 12.0  # a warm-up worker: imports, CUDA context, one small call
CPU_RANDOM_PER_S = 1.5e8  # float32 normals a second on one core: attention.py draws its inputs on the CPU
ROW_OVERHEAD_S = 0.3  # allocation, empty_cache, the result's bookkeeping
STEP_BUILD_S = 1.5  # G and D built on the device (orthogonal init, spectral norm's start-up iterations)
STEP_FIRST_CALL_S = 1.0  # a row's first step: allocations, and cuDNN's autotuning of new convolution shapes
# Dense SDPA forward+backward on an H100, ms, batch 32 (the H100 attention table): the attention table's
# reference; batch 8 is a quarter (the table's batch-8 rows are within 10% of that).
DENSE_SDPA_MS = {(16384, "bfloat16"): 4.50, (16384, "float32"): 55.7,
                 (65536, "bfloat16"): 62.9, (65536, "float32"): 884.0}
# A G iteration at 128 px, batch 32, fp32 on an H100 (the H100 step table); bf16/fp16 measured 0.87-0.97x
# of fp32 on an H200 at batch 16, so mixed precision is taken at 0.9x. The chunked route's step is
# the SMYRF row measured then (it was the only CUDA route).
STEP_FP32_MS = {"dense@64": 215.0, "dense@128 naive": 301.0, "dense@128 flash": 274.0,
                "smyrf@128 paper 4x2048": 320.0, "smyrf@128 ours 4x2048": 351.0,
                "smyrf@128 ours 4x2048 chunked": 351.0}
MIXED_VS_FP32 = 0.9
# Steps without rows: what they do, on an H100.
FIXED_S = {
    # About 20 tests besides their compiles (CUDA_TESTS_SPECIALISATIONS): train.py and its resume
    # (~40 s), sample.py twice (~15 s), three in-process Lightning fits (~15 s), pytest's collection
    # (~10 s). A shard runs its share, plus the train.py run that several tests share (~25 s) if
    # one of those falls to it, as it does to each of 4 shards.
    "cuda tests": 70.0,
    # 60 G iterations at ~0.36 s (train.py on an H100: 177 real images/s), two validations of
    # 1,000 samples x 2 attention kinds (~8 s each), diagnostics, checkpoints, start-up.
    "train.py": 75.0,
    # The checkpoint (G, G_ema, D and Adam states, ~1.3 GB) loaded, G built, 64 images with SMYRF.
    "sample.py": 7.0,
    # 10,000 samples x 2 kinds through G128 and Inception (the goal: <= 60 s), start-up.
    "validation": 60.0,
}
# The CUDA tests' own Triton specialisations, at their small shapes and IEEE precision (none shared
# with the goal shapes), scaled from an earlier count by the specialisations of one default call
# (11 then, 19 now, of which 12 in the forward): SMYRF against the CPU (3 configs x fp32, bf16:
# ~70), the swap and no-wait tests' generators (~40), the cluster-kernel tests (~10), train.py and
# sample.py runs (~25).
CUDA_TESTS_SPECIALISATIONS = 145
CUDA_TESTS_SHARED_RUN_S = 25.0
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# The CUDA tests run as this many pytest processes side by side (`--shard i/n`): their time is
# mostly compiling kernels at their own shapes, CPU work that one process does one kernel at a time.
CUDA_TEST_SHARDS = 4
CUDA_TEST_STEPS = [f"cuda tests {i}/{CUDA_TEST_SHARDS}" for i in range(1, CUDA_TEST_SHARDS + 1)]
# Steps that run beside the next step that is not one of them (and are waited for after it): the
# warm-up's compiling and the CUDA test shards; no later step starts before all of them have ended.
ALONGSIDE = {"triton warm-up", *CUDA_TEST_STEPS[:-1]}


@dataclass
class StepPlan:
    name: str
    command: list[str]
    limit_s: float
    rows: list[dict] = field(default_factory=list)
    triton: list[tuple] = field(default_factory=list)  # specialisations first compiled in this step
    graphs: int = 0  # torch.compile graphs compiled in this step
    run_s: float = 0.0  # the step's own work, compiles left out
    calls: list[dict] = field(default_factory=list)  # the SMYRF calls behind its specialisations
    parallel_compiles: int = 0  # the warm-up: compiles in its longest process, the others alongside

    @property
    def compile_s(self) -> float:
        triton = self.parallel_compiles if self.parallel_compiles else len(self.triton)
        return TRITON_COMPILE_S * triton + INDUCTOR_GRAPH_S * self.graphs

    @property
    def seconds(self) -> float:
        return self.run_s + self.compile_s


def smyrf_specialisations(config, n: int, dtype: str, precision: str, backward: str = "default",
                          blocks: tuple | None = None) -> set[tuple]:
    """The Triton compiles one SMYRF call of `config` at n queries (n / 4 keys) needs on CUDA: the
    launch-time keys of the route's own launches (`triton_launches.call_launches`; backward "none",
    "default" or "deterministic"), captured at batch 1, which launches the same specialisations as
    any batch (`make gpu-preflight --check-batch`). `blocks`: (kernel names, (BLOCK_M, BLOCK_N,
    warps, stages)) set in triton/rounds.py's BLOCKS for the call, as tune_rounds.py sets them."""
    if config is None or config.kind != "smyrf" or config.kernel not in ("auto", "triton"):
        return set()
    return set(_captured_keys(config, n, dtype, precision, backward, blocks))


@functools.cache
def _captured_keys(config, n: int, dtype: str, precision: str, backward: str, blocks) -> frozenset:
    from benchmarks import triton_launches
    from biggan_smyrf.attention.triton import rounds

    default = dict(rounds.BLOCKS)
    try:
        if blocks:
            rounds.BLOCKS.update({kernel: blocks[1] for kernel in blocks[0]})
        launches = triton_launches.call_launches(config, n, 1, getattr(torch, dtype), precision, backward=backward)[90]
    finally:
        rounds.BLOCKS.update(default)
    # (kernel, the call's dtype, a digest of Triton's key): short enough for the warm-up's command line.
    return frozenset((f"{launch.module}.{launch.name}", dtype, hashlib.sha1(launch.key().encode()).hexdigest()[:16])
                     for launch in launches)


def script_plan(command: list[str]):
    """(module, parsed args, rows) of a benchmark step, or None for a step that is not one."""
    if command[1:2] != ["-m"] or not command[2].startswith("benchmarks."):
        return None
    module = importlib.import_module(command[2])
    if not hasattr(module, "plan_cases"):
        return None
    args = module.build_parser().parse_args(command[3:])
    return module, args, module.plan_cases(args)


def precision_of(args) -> str:
    """The kernels' dot precision (a constexpr): TF32 where the script turns it on, as train.py does."""
    return "tf32" if getattr(args, "tf32", "true") == "true" else "ieee"


def plan_step(name: str, command: list[str], limit: float) -> StepPlan:
    step = StepPlan(name, command, limit)
    planned = script_plan(command)
    if planned is None:
        step.run_s = next((s for word, s in FIXED_S.items() if name.startswith(word)), 0.0) + PROCESS_START_S
        if name in CUDA_TEST_STEPS:
            step.run_s = PROCESS_START_S + FIXED_S["cuda tests"] / CUDA_TEST_SHARDS + CUDA_TESTS_SHARED_RUN_S
        step.triton = sorted(_fixed_step_specialisations(name), key=str)
        return step
    module, args, step.rows = planned
    kind = module.__name__.rpartition(".")[2]
    estimate = {"attention": _attention, "models": _step_table, "profile_step": _profile,
                "tune_rounds": _tune_rounds, "triton_warmup": _warmup}.get(kind)
    specs = set()
    step.run_s = PROCESS_START_S + (WARMUP_PROCESS_S if kind == "triton_warmup" else 0.0)
    for row in step.rows:
        row_s, row_specs, graphs = estimate(row, args)
        step.run_s += row_s
        if row_specs and kind not in ("tune_rounds", "triton_warmup"):
            step.calls.append(_call(row, row_specs))
        if kind == "triton_warmup":
            step.parallel_compiles = max(step.parallel_compiles, len(row_specs))
        specs |= row_specs
        step.graphs += graphs
    step.triton = sorted(specs, key=str)
    return step


def _call(row: dict, specs: set) -> dict:
    """The warm-up call that compiles `specs`: the row's SMYRF config, tokens, dtype, precision."""
    return {**row["_call"], "specialisations": sorted(map(list, specs), key=str)}


def _warmup(row: dict, args):
    """triton_warmup.py's calls: their specialisations, compiled in processes side by side."""
    return 0.0, {tuple(key) for key in row.get("specialisations", [])}, 0


def _fixed_step_specialisations(name: str) -> set[tuple]:
    """train.py's SMYRF@128 in bf16-mixed, sample.py's and validation.py's forward in fp32 (the
    library default at 4 x 2048), and the CUDA tests' own."""
    from biggan_smyrf.attention import AttentionConfig

    config = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048)
    if name.startswith("train.py"):
        return smyrf_specialisations(config, 16384, "bfloat16", "tf32")
    if name.startswith(("sample.py", "validation")):
        return smyrf_specialisations(config, 16384, "float32", "tf32", backward="none")
    if name in CUDA_TEST_STEPS:  # a shard's share of the tests' own
        shard = CUDA_TEST_STEPS.index(name)
        return {("cuda tests", i) for i in range(shard, CUDA_TESTS_SPECIALISATIONS, CUDA_TEST_SHARDS)}
    return set()


def _attention(row: dict, args):
    """attention.py's calls per row: the peak-memory call, then warm-up + reps of the forward and
    of forward+backward, and at the first batch the errors (batch 1, 2 families x 2 seeds)."""
    from benchmarks import attention
    from benchmarks.cost_model import predicted_vs_dense

    if "skipped" in row:
        return 0.0, set(), 0
    n, batch, dtype = row["n"], row["batch"], row["dtype"]
    config = attention.method_config(attention.METHODS[row["method"]])
    dense_ms = DENSE_SDPA_MS.get((n, dtype), DENSE_SDPA_MS[(n, "float32")]) * batch / 32
    call_ms = dense_ms if config is None else dense_ms * predicted_vs_dense(config, n, dtype, batch)
    reps = 10 if n <= 16384 else 5
    seconds = call_ms / 1e3 * (1 + (1 + reps) * (1 + 1 / 3))  # a forward is ~1/3 of forward+backward
    seconds += batch * n * 27 / CPU_RANDOM_PER_S + ROW_OVERHEAD_S  # q (12), k (3 = 12/4), v (12 = 48/4) per token
    if row.get("errors"):
        seconds += 4 * (n * 27 / CPU_RANDOM_PER_S + 2 * dense_ms / 32 / 1e3)
    kernel = row.get("kernel", "auto")
    specs = set() if kernel not in ("auto", "triton") else smyrf_specialisations(config, n, dtype, precision_of(args))
    row["_call"] = _call_of(config, n, dtype, args)
    return seconds, specs, 0


def _call_of(config, n: int, dtype: str, args) -> dict:
    return {"config": None if config is None else dataclasses.asdict(config), "n": n, "dtype": dtype,
            "tf32": precision_of(args) == "tf32"}


def _model_step(variant: str, dtype: str, speed: str, args, calls: int):
    """A G iteration of models.py's step table: seconds for `calls` steps, its specialisations, its graphs."""
    from benchmarks import models

    resolution, at, attention_key, _ = models.VARIANTS[variant]
    step_s = STEP_FP32_MS.get(variant, STEP_FP32_MS["dense@128 flash"]) / 1e3 * (1 if dtype == "fp32" else MIXED_VS_FP32)
    seconds = STEP_BUILD_S + STEP_FIRST_CALL_S + calls * step_s + ROW_OVERHEAD_S
    config = models.ATTENTION[attention_key] if attention_key else None
    specs = smyrf_specialisations(config, at * at, DTYPES[dtype], precision_of(args)) if at else set()
    return seconds, specs, 7 if "compile" in speed else 0, _call_of(config, at * at, DTYPES[dtype], args) if at else None


def _with_call(row: dict, planned):
    seconds, specs, graphs, call = planned
    row["_call"] = call
    return seconds, specs, graphs


def _step_table(row: dict, args):
    return _with_call(row, _model_step(row["variant"], row["dtype"], row["speed"], args, 1 + row["reps"]))


def _profile(row: dict, args):
    return _with_call(row, _model_step(row["variant"], row["dtype"], row["speed"], args, 2 + row["iters"]))


def _tune_rounds(row: dict, args):
    """tune_rounds.py: 10 timed calls after a warm-up, each a forward (or forward+backward) of the
    default at n tokens; every candidate block shape is a new specialisation of its pass's kernels."""
    from biggan_smyrf.attention import AttentionConfig
    from benchmarks.cost_model import predicted_vs_dense

    config = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=row["q_cluster_size"])
    n, dtype = row["n"], row["dtype"]
    call_ms = (DENSE_SDPA_MS.get((n, dtype), DENSE_SDPA_MS[(n, "float32")]) * row["batch"] / 32
               * predicted_vs_dense(config, n, dtype, row["batch"]))
    per_call = call_ms / 1e3 * (1 if row["pass"] == "backward" else 1 / 3)
    from benchmarks.tune_rounds import KERNELS

    backward = {"forward": "none", "backward": "deterministic", "one pass": "default"}[row["pass"]]
    specs = smyrf_specialisations(config, n, dtype, precision_of(args), backward,
                                  blocks=(KERNELS[row["pass"]], tuple(row["blocks"])))
    return 11 * per_call + ROW_OVERHEAD_S, specs, 0


def plan_suite(steps: list[tuple[str, list[str], int]], compiled: set | None = None) -> list[StepPlan]:
    """Every step planned; a specialisation counts in the first step that needs it (`compiled`:
    those already in the cache, updated)."""
    compiled = set() if compiled is None else compiled
    plans = []
    for name, command, limit in steps:
        step = plan_step(name, command, limit)
        step.triton = [key for key in step.triton if key not in compiled]
        compiled.update(step.triton)
        plans.append(step)
    return plans


def warmup_calls(plans: list[StepPlan]) -> list[dict]:
    """Fewest calls that compile every specialisation the plans' steps need: greedily, the call
    that adds most of what is still missing (each runs in a process of its own)."""
    calls = [c for step in plans for c in step.calls]
    missing = {tuple(key) for c in calls for key in c["specialisations"]}
    chosen = []
    while missing:
        best = max(calls, key=lambda c: len(missing & {tuple(k) for k in c["specialisations"]}))
        chosen.append(best)
        missing -= {tuple(k) for k in best["specialisations"]}
    return chosen


def wall_seconds(plans: list[StepPlan]) -> float:
    """The suite's estimated wall time: steps in ALONGSIDE run beside the next step that is not
    one of them, so such a group takes as long as its longest step."""
    total, group = 0.0, []
    for step in plans:
        group.append(step.seconds)
        if step.name not in ALONGSIDE:
            total, group = total + max(group), []
    return total + max(group, default=0.0)


def describe(suite: str, plans: list[StepPlan]) -> str:
    """The plan as text: a line per step (rows, compiles, estimate), its rows, and the total."""
    lines = [f"{suite}: {len(plans)} steps"]
    for step in plans:
        compiles = f"{len(step.triton)} Triton specialisations" + (
            f" ({step.parallel_compiles} in the longest process)" if step.parallel_compiles else "")
        if step.graphs:
            compiles += f", {step.graphs} torch.compile graphs"
        lines.append(f"  {step.name}: {len(step.rows)} rows, {compiles}, ~{step.seconds:.0f} s (limit {step.limit_s:.0f} s)")
        for row in step.rows:
            lines.append("      " + ", ".join(f"{k}={row[k]}" for k in _ROW_KEYS if k in row))
    total = wall_seconds(plans)
    triton = sum(len(step.triton) for step in plans)
    graphs = sum(step.graphs for step in plans)
    lines.append(f"  estimate on an H100: {triton} cold Triton specialisations, {graphs} torch.compile graphs, "
                 f"~{total:.0f} s ({total / 60:.1f} min)")
    return "\n".join(lines)


_ROW_KEYS = ("variant", "method", "n", "batch", "dtype", "speed", "pass", "blocks", "kernel", "tf32")
