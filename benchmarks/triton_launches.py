"""The Triton launches of SMYRF's CUDA route, each with the exact specialisation a GPU would compile.

The launch code runs for real -- `smyrf_attention` forward and backward with kernel="triton" --
on CPU tensors that stand in for CUDA ones, and every `kernel[grid](...)` goes through Triton's
own `JITFunction.run`: its binder types the arguments, marks pointers and integers divisible by
16, folds the constexprs and parses num_warps / num_stages, exactly as on a GPU. Two stand-ins
make that possible without one:
- a Triton driver that reports the chosen GPU (sm_90, sm_80, ...) as the current device;
- `triton.compiler.compile`, which run() calls with the `ASTSource` and options it built, is
  replaced by a recorder that keeps them and hands back a kernel whose launch does nothing.
The recorded (source, options) pairs then compile ahead of time with the real `triton.compile`
for any target (`Launch.compile`), under whichever Triton version is imported.

CPU tensors are allocated at least 64-byte aligned, like CUDA's (256 bytes), so pointer
divisibility matches; the launch code's own CPU/CUDA choices are made as on CUDA (`as_on_cuda`).
Outputs of the skipped launches are uninitialised memory, which only the discarded result sees.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Iterator
from unittest import mock

import torch
import triton
import triton.compiler
from triton.backends.compiler import GPUTarget
from triton.runtime import driver
from triton.runtime.jit import JITFunction

from biggan_smyrf.attention import AttentionConfig, cluster_attention, plan, smyrf_attention

D_QK, D_V = 12, 48  # BigGAN's heads: C/8 and C/2 at ch 96 (benchmarks/attention.py)
RECIPES = {
    "default": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=2048),
    "paper": AttentionConfig.paper(n_hashes=4, q_cluster_size=2048),
}
# Input dtype and how fp32 dots run (PyTorch's CUDA matmul setting, which the kernels follow).
DTYPES = {
    "bf16": (torch.bfloat16, "ieee"),
    "fp16": (torch.float16, "ieee"),
    "tf32": (torch.float32, "tf32"),
    "fp32": (torch.float32, "ieee"),
}


@dataclass
class Launch:
    """One specialisation: what JITFunction.run would hand to triton.compile."""

    source: triton.compiler.ASTSource
    options: dict

    @property
    def name(self) -> str:
        return self.source.fn.__name__

    @property
    def module(self) -> str:
        return self.source.fn.__module__.rsplit(".", 1)[-1]

    @property
    def constants(self) -> dict:
        """constexpr name -> value."""
        names = self.source.fn.arg_names
        return {names[path[0]]: value for path, value in self.source.constants.items()}

    def key(self) -> str:
        return f"{self.source.hash()}-{sorted(self.options.items())}"

    def compile(self, target: GPUTarget):
        return triton.compile(self.source, target=target, options=self.options)


class _NoLaunch:
    """The compiled kernel run() gets back: launching it does nothing."""

    function = packed_metadata = None

    def launch_metadata(self, *args):
        return None

    def run(self, *args):
        return None


class _StandInDriver:
    """Reports `target` as the current GPU; a fresh device id per recording, so that no
    JITFunction reuses a binder (or a cached no-op kernel) from an earlier one."""

    _ids = itertools.count(1000)

    def __init__(self, target: GPUTarget):
        self.target, self.device = target, next(self._ids)

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return self.target


@contextlib.contextmanager
def recording(capabilities: tuple[int, ...]) -> Iterator[dict[int, list[Launch]]]:
    """Within the block, Triton launches are recorded instead of compiled and run: capability ->
    the launches (in launch order, repeats included) specialised for an NVIDIA GPU of that compute
    capability (90, 80...). Each launch is bound once per capability by Triton's own run()."""
    launches: dict[int, list[Launch]] = {capability: [] for capability in capabilities}
    drivers = {capability: _StandInDriver(GPUTarget("cuda", capability, 32)) for capability in capabilities}
    run = JITFunction.run

    def record(src, target=None, options=None, **_):
        launches[target.arch].append(Launch(src, dict(options or {})))
        return _NoLaunch()

    def run_for_every_target(self, *args, **kwargs):
        for stand_in in drivers.values():
            driver.set_active(stand_in)
            run(self, *args, **kwargs)

    previous = driver._active  # None where no GPU driver was ever needed (no reset_active: it needs one)
    try:
        with mock.patch.object(triton.compiler, "compile", record), \
                mock.patch.object(JITFunction, "run", run_for_every_target):
            yield launches
    finally:
        driver.set_active(previous)


@contextlib.contextmanager
def as_on_cuda():
    """The launch code's device-dependent choices made as for CUDA tensors: the triton kernel
    accepted without the interpreter, the hub round split into CUDA's number of query runs; and
    the CUDA route's hashing recorded but its orders the torch version's (`valid_orders`)."""
    from biggan_smyrf.attention.triton import hashing

    check = cluster_attention._check_triton_usable
    parts = plan.HUB_QUERY_PARTS
    with mock.patch.object(cluster_attention, "_check_triton_usable", lambda device, *a: check(torch.device("cuda"), *a)), \
            mock.patch.dict(parts, {"cpu": parts["cuda"]}), \
            mock.patch.object(hashing, "cluster_orders", valid_orders(hashing.cluster_orders)):
        yield


def valid_orders(triton_cluster_orders):
    """The Triton hashing's launches recorded, then the same orders from the torch version: with
    the launches skipped the Triton one's are uninitialised memory, which the route's aten ops
    would index with. Both draw the same from the generator, so it ends in the same state."""
    from biggan_smyrf.attention.hashing import cluster_orders

    def run(q, k, n_hashes, n_clusters, generator, hashing="kd"):
        state = generator.get_state()
        triton_cluster_orders(q, k, n_hashes, n_clusters, generator, hashing)
        generator.set_state(state)
        return cluster_orders(q, k, n_hashes, n_clusters, generator, hashing)

    return run


@contextlib.contextmanager
def fp32_dots(precision: str):
    """PyTorch's CUDA fp32 matmul precision ("tf32" or "ieee"), which the kernels' fp32 dots follow."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    matmul.fp32_precision = precision
    try:
        yield
    finally:
        matmul.fp32_precision = previous


def smyrf_launches(
    recipe: str, n_queries: int, batch: int, dtype: str, capabilities: tuple[int, ...] = (90,)
) -> dict[int, list[Launch]]:
    """Every launch of one SMYRF forward + backward through the CUDA route at (batch, N queries,
    N/4 keys as BigGAN's 2x2-pooled keys, d_qk 12, d_v 48), per capability, in launch order: the
    default one-pass backward, then deterministic mode's two-kernel one."""
    torch_dtype, precision = DTYPES[dtype]
    return call_launches(RECIPES[recipe], n_queries, batch, torch_dtype, precision, capabilities, backward="both")


BACKWARDS = {"none": (), "default": (False,), "deterministic": (True,), "both": (False, True)}


def call_launches(config: AttentionConfig, n_queries: int, batch: int, dtype: torch.dtype, precision: str,
                  capabilities: tuple[int, ...] = (90,), backward: str = "default") -> dict[int, list[Launch]]:
    """The launches of one call of `config` on the CUDA route (as `smyrf_launches`): its forward,
    then the backward(s) of BACKWARDS[backward] (deterministic mode or not), in that order."""
    g = torch.Generator().manual_seed(0)
    shapes = ((n_queries, D_QK), (n_queries // 4, D_QK), (n_queries // 4, D_V))
    q, k, v = (torch.randn(batch, n, d, generator=g).to(dtype).requires_grad_() for n, d in shapes)
    runs = BACKWARDS[backward]
    with as_on_cuda(), fp32_dots(precision), recording(capabilities) as launches:
        out = smyrf_attention(q, k, v, config, kernel="triton", seed=0)
        for i, deterministic_mode in enumerate(runs):
            with deterministic() if deterministic_mode else contextlib.nullcontext():
                out.backward(torch.ones_like(out), retain_graph=i < len(runs) - 1)
    return launches


@contextlib.contextmanager
def deterministic():
    """PyTorch's deterministic mode (Lightning's --trainer.deterministic true)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def unique(launches: list[Launch]) -> list[Launch]:
    """One of each specialisation, in first-launch order."""
    seen: dict[str, Launch] = {}
    for launch in launches:
        seen.setdefault(launch.key(), launch)
    return list(seen.values())
