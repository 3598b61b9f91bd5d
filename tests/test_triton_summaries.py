"""The summary-key kernels (triton/summaries.py) without a GPU: their launches at BigGAN's sizes
counted on meta tensors, and their code compiled for sm_90. Their numbers are checked against
summaries.py under Triton's interpreter (`triton_interpreted_summaries.py`)."""
from collections import Counter

import pytest
import torch

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.attention.triton import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

BATCH = 32
Q_CLUSTER = {16384: 2048, 65536: 4096}  # the default recipe at the goal sizes (benchmarks/host_cost.py)
DQ, D_V = 16, 48  # BigGAN's heads, k padded to the kernels' 16 features


def rows(n_queries: int, batch: int, dtype, device: str):
    """The route's extended k, v, bias (keys, then every summary row), k_order and sizes."""
    sizes = AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=Q_CLUSTER[n_queries]).resolve(n_queries, n_queries // 4)
    M, H = sizes.n_keys, sizes.n_hashes
    extended = M + H * sizes.n_clusters * sizes.n_summaries
    k = torch.zeros(batch, extended, DQ, dtype=dtype, device=device)
    v = torch.zeros(batch, extended, D_V, dtype=dtype, device=device)
    bias = torch.zeros(batch, extended, device=device)
    k_order = torch.arange(M, device=device).repeat(batch, H, 1)
    return k, v, bias, k_order, sizes


@pytest.mark.parametrize("n_queries", list(Q_CLUSTER))
def test_two_launches_each_way_at_goal_sizes(n_queries):
    """Forward and backward at batch 32, 16k and 65k tokens: two Triton launches each and no aten
    op that would launch a kernel (their scratch comes from torch.empty)."""
    from benchmarks.host_cost import LaunchCounter
    from biggan_smyrf.attention.triton.launches import observe_launches
    from biggan_smyrf.attention.triton.summaries import fold_summary_grads, write_summaries

    k, v, bias, k_order, sizes = rows(n_queries, BATCH, torch.bfloat16, "meta")
    dk, dv = (torch.empty(x.shape, device="meta") for x in (k, v))
    assert (sizes.n_clusters, sizes.n_summaries) == {16384: (8, 32), 65536: (16, 64)}[n_queries]
    for step, args in (("forward", (write_summaries, k, v)), ("backward", (fold_summary_grads, dk, dv))):
        triton_launches, counter = Counter(), LaunchCounter()
        with observe_launches(lambda name, grid: triton_launches.update([name])), counter:
            args[0](*args[1:], bias, k_order, sizes)
        assert sum(counter.launches.values()) == 0, (step, counter.launches)
        assert sum(triton_launches.values()) == 2, (step, triton_launches)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_kernels_compile_for_hopper_without_a_gpu(dtype):
    """The interpreter accepts code the compiler rejects: every kernel as launched at 16k tokens
    (batch 1), specialised by Triton's own binder (benchmarks/triton_launches.py), through ptxas."""
    from triton.backends.compiler import GPUTarget

    from benchmarks import triton_launches
    from biggan_smyrf.attention.triton.summaries import fold_summary_grads, write_summaries

    k, v, bias, k_order, sizes = rows(16384, 1, dtype, "cpu")
    dk, dv = k.float(), v.float()
    with triton_launches.recording((90,)) as launches:
        write_summaries(k, v, bias, k_order, sizes)
        fold_summary_grads(dk, dv, bias, k_order, sizes)
    unique = triton_launches.unique(launches[90])
    assert [x.name for x in unique] == ["_cell_sums_kernel", "_summary_rows_kernel", "_cell_grads_kernel", "_fold_kernel"]
    for launch in unique:
        assert launch.compile(GPUTarget("cuda", 90, 32)).asm["cubin"], launch.name
