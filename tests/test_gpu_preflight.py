"""The CUDA route's hottest Triton kernel as a GPU will compile it, checked without one.

The fast form of `make gpu-preflight` (benchmarks/gpu_preflight.py): the SMYRF rounds' forward
kernel, launched by the real launch code at 16,384 tokens (the specialisation Triton's own binder
makes, not a hand-written signature), compiled for sm_90 in bf16: no spills, at least 3 resident
blocks (or 12 warps) per SM, and q/k rows read in vector loads (no 16-bit scalar load). With our
Triton here, and with Triton 3.6 (the CUDA machines' version) where its venv exists (`make test` and `make gpu-preflight` make it).
"""
from pathlib import Path

import pytest

from biggan_smyrf.attention.triton import triton_available

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

KERNEL = "rounds._forward_kernel"


def assert_meets_the_goals(row: dict) -> None:
    where = f"{row['kernel']} {row['dtype']} {row['arch']} (triton {row['triton']})"
    assert row["spill_stores"] == 0 and row["spill_loads"] == 0, f"{where} spills: {row}"
    assert row["blocks_per_sm"] >= 3 or row["warps_per_sm"] >= 12, f"{where}: {row['blocks_per_sm']} blocks/SM, {row}"
    scalar_16 = row["loads"].get("16", 0) + row["loads"].get("16 async", 0)
    assert scalar_16 == 0 and row["loads"].get("128", 0) + row["loads"].get("128 async", 0) > 0, f"{where} loads: {row['loads']}"


def test_round_forward_meets_the_goals_with_our_triton():
    from benchmarks import gpu_preflight
    import triton
    from benchmarks import triton_launches

    launches = triton_launches.smyrf_launches("default", 16384, 1, "bf16", (90,))[90]
    forward = [x for x in triton_launches.unique(launches) if f"{x.module}.{x.name}" == KERNEL]
    assert len(forward) == 1 and forward[0].constants["HAS_BIAS"]
    row = dict(kernel=KERNEL, dtype="bf16", arch="sm_90", triton=triton.__version__, **gpu_preflight.measure(forward[0], 90))
    assert_meets_the_goals(row)


def test_round_forward_meets_the_goals_with_the_gpus_triton():
    from benchmarks import gpu_preflight

    side = gpu_preflight.side_site_packages()
    if side is None:
        pytest.skip("no .venv-triton36 (Triton 3.6): `make gpu-preflight` makes it")
    options = ["--batch", "1", "--sizes", "16384", "--recipes", "default", "--dtypes", "bf16",
               "--capabilities", "90", "--jobs", "1", "--only", KERNEL]
    (row,) = gpu_preflight.worker_in_subprocess(side, options)
    assert row["triton"] == "3.6.0"
    assert_meets_the_goals(row)
