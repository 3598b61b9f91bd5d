"""The CUDA route's hashing (`triton/hashing.py`) on the CPU, through Triton's interpreter, against
the torch version (`hashing.cluster_orders`): the same draws give the same clusters.

Not collected by the suite (no test_ prefix): the interpreter must be on before triton is first
imported, so `test_triton_kernel.py::test_kernels_under_triton_interpreter` runs this file in a
fresh pytest process with TRITON_INTERPRET=1. Random inputs have no tied projections, so the
orders must be equal, not merely close: k-d with 8 clusters (factors 2, 2, 2) and 12 (3, 2, 2, an
odd split at the root), and xbox; fp32 and bf16; BigGAN's pooled keys (M = N / 4) and its
channels-first query views (read through strides).
"""
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402,F401 -- overheads of Triton's interpreter, removed (see there)

from biggan_smyrf.attention import hashing  # noqa: E402
from biggan_smyrf.attention.triton import hashing as triton_hashing  # noqa: E402

parametrize = pytest.mark.parametrize
N_HASHES = 3


def inputs(B, N, M, d, dtype, channels_first: bool, seed=0):
    """q (B, N, d) and k (B, M, d); channels_first makes q a transposed view of a (B, d, N) tensor."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, d, N, generator=g).to(dtype).transpose(1, 2) if channels_first else \
        torch.randn(B, N, d, generator=g).to(dtype)
    k = torch.randn(B, M, d, generator=g).to(dtype) * 1.5  # keys of another scale: MQ² != MK²
    return q, k


def both(q, k, n_clusters, hashing_name, seed=7):
    """(triton's orders, torch's orders) from generators in the same state."""
    got = triton_hashing.cluster_orders(q, k, N_HASHES, n_clusters, torch.Generator().manual_seed(seed), hashing_name)
    want = hashing.cluster_orders(q, k, N_HASHES, n_clusters, torch.Generator().manual_seed(seed), hashing_name)
    return got, want


# (hashing, n_clusters, N, M, d): keys pooled 2x2 (M = N / 4) as BigGAN's, one case with N < M;
# the last two give the level kernels several blocks per row (and at d 64 the maxima loop several
# steps: blocks are shorter at the largest head dim).
CASES = [("kd", 8, 96, 24, 12), ("kd", 12, 144, 36, 12), ("xbox", 4, 96, 24, 12), ("kd", 4, 16, 40, 12),
         ("xbox", 2, 20, 36, 12), ("kd", 8, 320, 80, 12), ("xbox", 4, 256, 64, 64)]


@parametrize("hashing_name, n_clusters, N, M, d", CASES, ids=[f"{h}-{c}-{n}x{m}-d{d}" for h, c, n, m, d in CASES])
@parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@parametrize("channels_first", [False, True], ids=["contiguous", "channels-first"])
def test_same_orders_as_the_torch_version(hashing_name, n_clusters, N, M, d, dtype, channels_first):
    q, k = inputs(2, N, M, d, dtype, channels_first)
    (q_order, k_order), (want_q, want_k) = both(q, k, n_clusters, hashing_name)
    assert q_order.dtype == k_order.dtype == torch.int64
    assert q_order.stride(-1) == k_order.stride(-1) == 1
    assert torch.equal(q_order, want_q) and torch.equal(k_order, want_k)


@parametrize("hashing_name, n_clusters", [("kd", 8), ("kd", 12), ("xbox", 4)])
def test_clusters_are_balanced_permutations(hashing_name, n_clusters):
    """Every round is a permutation of each batch element's tokens, so cutting it into runs gives
    clusters of exactly their size. Clustered inputs (many near neighbours), larger head dim."""
    B, N, M, d = 3, 12 * n_clusters, 4 * n_clusters, 40
    q, k = inputs(B, N, M, d, torch.float32, channels_first=True, seed=1)
    q, k = q.round(), k.round()  # many equal tokens, so many tied projections: still permutations
    q_order, k_order = triton_hashing.cluster_orders(q, k, N_HASHES, n_clusters, torch.Generator().manual_seed(0),
                                                     hashing_name)
    assert torch.equal(q_order.sort(-1).values, torch.arange(N).expand(B, N_HASHES, N))
    assert torch.equal(k_order.sort(-1).values, torch.arange(M).expand(B, N_HASHES, M))


def test_consumes_the_generator_as_the_torch_version():
    """Both leave the generator in the same state: what is drawn next (the rounds after) agrees."""
    q, k = inputs(1, 32, 8, 12, torch.float32, channels_first=False)
    ours, theirs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    triton_hashing.cluster_orders(q, k, N_HASHES, 8, ours, "kd")
    hashing.cluster_orders(q, k, N_HASHES, 8, theirs, "kd")
    assert torch.equal(ours.get_state(), theirs.get_state())


@parametrize("hashing_name, n_clusters", [("random", 4), ("kd", 1)])
def test_what_has_no_projections_is_the_torch_version(hashing_name, n_clusters):
    q, k = inputs(2, 16, 8, 12, torch.float32, channels_first=False)
    (q_order, k_order), (want_q, want_k) = both(q, k, n_clusters, hashing_name)
    assert torch.equal(q_order, want_q) and torch.equal(k_order, want_k)
