"""The "triton" cluster kernel on the CPU, through Triton's interpreter, against the "chunked" kernel.

Not collected by the suite (no test_ prefix): the interpreter must be on before triton is first
imported, so `test_triton_kernel.py::test_kernels_under_triton_interpreter` runs this file in a
fresh pytest process with TRITON_INTERPRET=1. Sizes are small because the interpreter runs every
block operation through numpy; tails (40 queries, 24 keys), head dims 12 and 48 (padded to 16 and
64 in registers) and a power-of-two case cover the kernels' masking paths; the "production blocks"
cases are the smallest lengths that give every kernel several ragged query and key blocks at the
block sizes the GPU runs (batch 1).
"""
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402,F401 -- overheads of Triton's interpreter, removed (see there)

from biggan_smyrf.attention import AttentionConfig, smyrf_attention  # noqa: E402
from biggan_smyrf.attention.cluster_attention import attention_backward, attention_forward, pick_kernel  # noqa: E402
from helpers import deterministic_algorithms  # noqa: E402

SHAPES = {"tails": (3, 40, 24, 12, 48), "powers of two": (2, 64, 32, 16, 32)}
# Relative error (norm) allowed against the chunked kernel, which computes in fp32 from the same
# inputs: fp32 only summation order; halves also round P and dS to the input dtype, like FlashAttention.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
SCALE = 0.7


def inputs(shape, dtype, masked: bool, seed: int = 0):
    G, Lq, Lk, d_qk, d_v = shape
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(G, n, d, generator=g).to(dtype) for n, d in ((Lq, d_qk), (Lk, d_qk), (Lk, d_v)))
    mask = None
    if masked:
        mask = torch.rand(G, Lk, generator=g) > 0.3
        mask[0] = False  # cluster 0: every key masked, so every query there attends to nothing
    return q, k, v, mask


def assert_close(got, want, dtype):
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    else:
        error = (got.float() - want.float()).norm() / want.float().norm()
        assert error < TOLERANCE[dtype], f"relative error {error:.2e} >= {TOLERANCE[dtype]:.0e}"


# At the production block sizes (triton/clusters.py BLOCKS): 168 queries and 88 keys give every
# kernel several query and key blocks per cluster with ragged tails, so the online softmax's
# rescale across key blocks runs as at BigGAN's sizes on a GPU.
PRODUCTION = (2, 168, 88, 12, 48)


def blocks_per_cluster(length: int, largest: int) -> tuple[int, int]:
    """(blocks, rows in the last one) of a cluster of `length` rows at the kernels' block size."""
    block = triton_blocks.block_size(length, largest)
    return -(-length // block), length - (length - 1) // block * block


parametrize = pytest.mark.parametrize
cases = [
    pytest.param(shape, dtype, masked, id=f"{name}-{str(dtype)[6:]}-{'mask' if masked else 'nomask'}")
    for name, shape in SHAPES.items()
    for dtype in TOLERANCE
    for masked in (False, True)
] + [
    pytest.param(PRODUCTION, dtype, masked, id=f"production blocks-{str(dtype)[6:]}-{'mask' if masked else 'nomask'}")
    for dtype in (torch.float32, torch.bfloat16)
    for masked in (False, True)
]


def test_production_shape_has_several_ragged_blocks():
    from biggan_smyrf.attention.triton.clusters import BLOCKS

    _, Lq, Lk, _, _ = PRODUCTION
    for block_m, block_n, *_ in BLOCKS.values():
        for length, largest in ((Lq, block_m), (Lk, block_n)):
            blocks, last = blocks_per_cluster(length, largest)
            assert blocks >= 2 and last < triton_blocks.block_size(length, largest), (length, largest)


@parametrize("shape, dtype, masked", cases)
def test_forward_matches_chunked(shape, dtype, masked):
    q, k, v, mask = inputs(shape, dtype, masked)
    out, lse = attention_forward(q, k, v, SCALE, "triton", mask)
    want_out, want_lse = attention_forward(q, k, v, SCALE, "chunked", mask)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_close(out, want_out, dtype)
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)  # -inf rows included
    if masked:
        assert torch.isneginf(lse[0]).all() and out[0].abs().max() == 0


@parametrize("shape, dtype, masked", cases)
def test_backward_matches_chunked(shape, dtype, masked):
    """With an `out` that is not this call's output (as SMYRF passes the combined one), so the
    rowsum(dO * out) term is tested on its own."""
    q, k, v, mask = inputs(shape, dtype, masked)
    own_out, lse = attention_forward(q, k, v, SCALE, "chunked", mask)
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(own_out.shape, generator=g).to(dtype)
    out = (own_out.float() + 0.3 * torch.randn(own_out.shape, generator=g)).to(dtype)
    got = attention_backward(grad, q, k, v, out, lse, SCALE, "triton", mask)
    want = attention_backward(grad, q, k, v, out, lse, SCALE, "chunked", mask)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert torch.isfinite(a).all(), name
        assert_close(a, b, dtype)
    if masked:
        assert got[0][0].abs().max() == 0 and got[1][0].abs().max() == 0 and got[2][0].abs().max() == 0


def test_strided_inputs_read_through_their_strides():
    """Token-major views of feature-major tensors (BigGAN's layout) give the same numbers as copies."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, d, n, generator=g).transpose(1, 2) for n, d in ((40, 12), (24, 12), (24, 48)))
    assert not q.is_contiguous()
    out, lse = attention_forward(q, k, v, SCALE, "triton")
    want_out, want_lse = attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), SCALE, "triton")
    torch.testing.assert_close(out, want_out, rtol=0, atol=0)
    grad = torch.randn(out.shape, generator=g).transpose(1, 2).contiguous().transpose(1, 2)
    got = attention_backward(grad, q, k, v, out, lse, SCALE, "triton")
    want = attention_backward(grad.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out, lse, SCALE, "triton")
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# SMYRF recipes for the permuted route (cuda_route.py, triton/rounds.py): (N, M, settings). The
# interpreter's time grows with the clusters (one program per cluster and block): 2 clusters per
# round (3 for the odd k-d split of "tails") already give every kernel several clusters and batch
# elements to offset; a cluster's queries and keys, hence its blocks and tails, are what they were
# with twice the clusters. (k-d hashing at more levels: triton_interpreted_hashing.py; summary
# blocks across and inside clusters: triton_interpreted_summaries.py.)
RECIPES = {
    # 128 queries and 32 + 2 summary keys per cluster.
    "defaults": (256, 64, dict(n_hashes=2, q_cluster_size=128)),
    "paper": (256, 64, dict(n_hashes=3, q_cluster_size=128, hashing="xbox", n_hub_keys=0, n_summaries=0, dedup="none")),
    # 96 queries and 24 + 3 keys per cluster: tails in every block loop (3 summary keys, a divisor
    # of the 72 keys as 5 was of 120; a summary block is a cluster's keys either way).
    "tails": (288, 72, dict(n_hashes=2, q_cluster_size=96, n_summaries=3)),
    # One hashed round and the hub round (dedup has nothing to correct); 64 queries and 16 + 1 keys per cluster.
    "one round": (128, 32, dict(n_hashes=1, q_cluster_size=64)),
}
ROUTE_TOLERANCE = {torch.float32: 2e-6, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def smyrf_with_grads(kernel, q, k, v, mask, dtype, settings, before_backward=None):
    # Fresh leaves: x.to(float32) is x itself for fp32 inputs, whose .grad a second run would add to.
    leaves = [x.detach().to(dtype).clone().requires_grad_() for x in (q, k, v)]
    out = smyrf_attention(*leaves, seed=4, key_padding_mask=mask, kernel=kernel, **settings)
    if before_backward is not None:
        before_backward(out)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out, [out.detach().float()] + [x.grad.float() for x in leaves]


@parametrize("recipe", list(RECIPES))
@parametrize("masked", [False, True], ids=["nomask", "mask"])
@parametrize("dtype", list(ROUTE_TOLERANCE), ids=lambda d: str(d)[6:])
def test_permuted_rounds_match_the_gathered_route(recipe, masked, dtype):
    """kernel="triton" (rounds read through the orders, one accumulator) against kernel="chunked"
    (gathered copies, per-round outputs): output and the three gradients; in float32 also element
    by element (which makes the "defaults" cases the library defaults' end-to-end check: k-d
    hashing, hub keys, summary keys, dedup)."""
    N, M, settings = RECIPES[recipe]
    g = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(2, n, d, generator=g) for n, d in ((N, 12), (M, 12), (M, 48)))
    mask = torch.rand(2, M, generator=g) > 0.2 if masked else None
    out, got = smyrf_with_grads("triton", q, k, v, mask, dtype, settings)
    assert type(out.grad_fn).__name__ == "_PermutedRoundsBackward"
    _, want = smyrf_with_grads("chunked", q, k, v, mask, dtype, settings)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        error = ((a - b).norm() / b.norm()).item()
        assert error < ROUTE_TOLERANCE[dtype], f"{name}: relative error {error:.1e}"
        if dtype == torch.float32:  # and element by element (the library defaults' end-to-end check)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


# The permuted route at its production blocks (triton/rounds.py BLOCKS: 64 or 16 queries x 32 or
# 64 keys), batch 1: 72 queries and 68 keys (+ 8 summary keys in the defaults) per cluster give
# every kernel several query and key blocks, all ragged (72 = 64 + 8 = 4 x 16 + 8, 68 = 64 + 4 =
# 2 x 32 + 4, 76 = 64 + 12 = 2 x 32 + 12) -- lengths just past one 64-row block, since the
# interpreter's time grows with them.
PRODUCTION_RECIPES = {
    "defaults": (144, 136, dict(n_hashes=2, q_cluster_size=72, n_summaries=8)),
    "paper": (144, 136, dict(n_hashes=2, q_cluster_size=72, hashing="xbox", n_hub_keys=0, n_summaries=0, dedup="none")),
}


@parametrize("recipe", list(PRODUCTION_RECIPES))
@parametrize("masked", [False, True], ids=["nomask", "mask"])
@parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
def test_permuted_rounds_at_production_blocks(recipe, masked, dtype):
    from biggan_smyrf.attention.triton.rounds import BLOCKS

    N, M, settings = PRODUCTION_RECIPES[recipe]
    Cq, Lk = settings["q_cluster_size"], M * settings["q_cluster_size"] // N + settings["n_summaries"]
    for block_m, block_n, *_ in BLOCKS.values():
        for length, largest in ((Cq, block_m), (Lk, block_n)):
            blocks, last = blocks_per_cluster(length, largest)
            assert blocks >= 2 and last < triton_blocks.block_size(length, largest), (length, largest)
    g = torch.Generator().manual_seed(8)
    q, k, v = (torch.randn(1, n, d, generator=g) for n, d in ((N, 12), (M, 12), (M, 48)))
    mask = torch.rand(1, M, generator=g) > 0.2 if masked else None
    _, got = smyrf_with_grads("triton", q, k, v, mask, dtype, settings)
    _, want = smyrf_with_grads("chunked", q, k, v, mask, dtype, settings)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        error = ((a - b).norm() / b.norm()).item()
        assert error < ROUTE_TOLERANCE[dtype], f"{name}: relative error {error:.1e}"


def test_permuted_rounds_keep_nothing_per_round_and_are_deterministic():
    """What the backward keeps is O(N d + H N): no (rounds x tokens x d) copy or output; and in
    deterministic mode two runs give bitwise the same output and gradients (rounds add in a fixed
    order, the two-kernel backward has no atomics)."""
    N, M, settings = RECIPES["defaults"]
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(2, n, d, generator=g) for n, d in ((N, 12), (M, 12), (M, 48)))

    def keeps_nothing_per_round(out):  # the first run's forward (the forward runs alike in deterministic mode)
        assert type(out.grad_fn).__name__ == "_PermutedRoundsBackward"
        largest = max(t.numel() for t in out.grad_fn.saved_tensors if t is not None)
        assert largest == out.numel(), largest  # the combined output (B, N, d_v); per-round ones would be H times that

    with deterministic_algorithms(True):
        _, first = smyrf_with_grads("triton", q, k, v, None, torch.float32, settings, keeps_nothing_per_round)
        _, second = smyrf_with_grads("triton", q, k, v, None, torch.float32, settings)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_pick_kernel_under_the_interpreter():
    cpu = torch.device("cpu")
    assert pick_kernel("triton", cpu, True, torch.bfloat16) == "triton"
    assert pick_kernel("auto", cpu, False, torch.float32) == "flash"  # the CPU default stays
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        pick_kernel("triton", cpu, False, torch.float64)
    with pytest.raises(TypeError, match="kernel='chunked'"):
        attention_forward(*inputs(SHAPES["tails"], torch.float64, False)[:3], SCALE, "triton")


def test_permuted_rounds_make_no_float32_copy_of_an_output():
    """bf16 memory of the permuted route: the forward's only float32 (B, N, d_v) tensor is the
    rounds' accumulator (the hub round's output is merged in its own dtype), and the backward makes
    none (the hub round's gradient is weighted straight into bf16) -- at batch 32 and 16,384 tokens
    each such copy is 100 MB, a third of dense SDPA's whole peak."""
    from benchmarks.memory_model import LiveTensors

    N, M, settings = RECIPES["defaults"]
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(2, n, d, generator=g).to(torch.bfloat16).requires_grad_() for n, d in ((N, 12), (M, 12), (M, 48)))
    tracker = LiveTensors(peaks=False)  # what is made, not the peaks (whose garbage collections took most of the time)
    with tracker:
        out = smyrf_attention(q, k, v, seed=4, kernel="triton", **settings)
        forward = [made for made in tracker.made if made[1:3] == ("float32", (2, N, 48))]
        tracker.reset()
        out.sum().backward()
        backward = [made for made in tracker.made if made[1:3] == ("float32", (2, N, 48))]
    assert [made[-1].split(":")[0] for made in forward] == ["rounds.forward"], forward
    assert backward == [], backward


# --- the two backwards: one pass (dQ by atomics) and two kernels (deterministic mode) ------------
# Shapes past the production backward blocks (64 queries x 64 keys): 3 query and 3 key blocks per
# cluster with ragged tails (150 = 64 + 64 + 22, 140 = 64 + 64 + 12), so every dQ row gets atomic
# additions from 3 programs and dK/dV sum over 3 query blocks.
BACKWARDS = {"one pass": ("_backward_keys_kernel",), "two kernels": ("_backward_keys_kernel", "_backward_q_kernel")}
BLOCKS_DTYPES = parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])


class _Recorded:
    """A kernel whose launches (`kernel[grid](...)`) add its name to `seen`."""

    def __init__(self, kernel, name: str, seen: set):
        self.kernel, self.name, self.seen = kernel, name, seen

    def __getitem__(self, grid):
        self.seen.add(self.name)
        return self.kernel[grid]


@pytest.fixture
def launched(monkeypatch):
    """The backward kernels launched, as "clusters.<kernel>" / "rounds.<kernel>"."""
    from biggan_smyrf.attention.triton import clusters, rounds

    seen: set = set()
    for module in (clusters, rounds):
        for name in sum(BACKWARDS.values(), ()):
            short = module.__name__.rsplit(".", 1)[-1]
            monkeypatch.setattr(module, name, _Recorded(getattr(module, name), f"{short}.{name}", seen))
    return seen


def kernels_of(path: str, *modules: str) -> set:
    return {f"{module}.{name}" for module in modules for name in BACKWARDS[path]}


def both_backwards(launched, module: str, backward):
    """{path: backward()} run with deterministic mode off ("one pass") and on ("two kernels"),
    each checked to have launched its own kernels and no other."""
    results = {}
    for path, deterministic in (("one pass", False), ("two kernels", True)):
        launched.clear()
        with deterministic_algorithms(deterministic):
            results[path] = backward()
        assert launched == kernels_of(path, module), (path, launched)
    return results


def assert_backwards_agree(results, want, dtype):
    """Both paths against the float64 reference, and against each other element by element: the
    same products, summed in another order (dQ) and rounded to the output dtype at another place
    (the cluster kernels' bfloat16 dQ: in the kernel or by PyTorch), so at most one bfloat16 ulp apart."""
    for name, one, two, reference in zip(("dq", "dk", "dv"), results["one pass"], results["two kernels"], want):
        for got in (one, two):
            assert got.shape == reference.shape and torch.isfinite(got).all(), name
            assert_close(got, reference.to(got.dtype), dtype)
        # fp32: the file's fp32 tolerance -- the two paths sum over query blocks of other sizes
        # (triton/rounds.py BLOCKS), a few 1e-6 apart on the smallest elements.
        rtol, atol = (1e-4, 1e-5) if dtype == torch.float32 else (2**-7, 1e-6)
        torch.testing.assert_close(one, two, rtol=rtol, atol=atol, msg=lambda m: f"{name}, one pass vs two kernels: {m}")


@BLOCKS_DTYPES
def test_cluster_backwards_at_production_blocks(dtype, launched):
    from biggan_smyrf.attention.triton import clusters

    q, k, v, _ = inputs((2, 150, 140, 12, 48), dtype, masked=False, seed=8)
    mask = torch.rand(2, 140, generator=torch.Generator().manual_seed(9)) > 0.3
    leaves = [x.double().clone().requires_grad_() for x in (q, k, v)]
    s = (SCALE * leaves[0] @ leaves[1].mT).masked_fill(~mask[:, None], float("-inf"))
    out = torch.softmax(s, -1) @ leaves[2]
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(10)).to(dtype)
    out.backward(grad.double())
    lse = torch.logsumexp(s, -1).detach().float()
    results = both_backwards(
        launched, "clusters", lambda: clusters.backward(grad, q, k, v, out.detach().to(dtype), lse, SCALE, mask)
    )
    assert_backwards_agree(results, [x.grad for x in leaves], dtype)


def rounds_reference(q, k, v, bias, q_order, k_index, q_cluster_size: int):
    """The rounds combined as the permuted kernels combine them (weights softmax_r(lse_r)): one
    softmax over every round's keys side by side, a key counted once per round it meets the query."""
    (B, H, N), M = q_order.shape, k.shape[1]
    n_clusters = N // q_cluster_size
    s = SCALE * q @ k.mT + bias[:, None, :]
    logits = []
    for r in range(H):
        q_cluster = torch.empty_like(q_order[:, r]).scatter_(1, q_order[:, r], (torch.arange(N) // q_cluster_size).expand(B, N))
        k_cluster = torch.empty_like(k_index[:, r]).scatter_(1, k_index[:, r], (torch.arange(M) // (M // n_clusters)).expand(B, M))
        logits.append(s.masked_fill(q_cluster[:, :, None] != k_cluster[:, None, :], float("-inf")))
    return torch.softmax(torch.cat(logits, -1), -1) @ v.repeat(1, H, 1)


@BLOCKS_DTYPES
def test_round_backwards_at_production_blocks(dtype, launched):
    """2 rounds of 2 clusters of 150 queries and 140 keys (also past the forward's 128 x 64 blocks),
    with a logit bias (padding -inf included), through triton.rounds.Rounds."""
    from biggan_smyrf.attention.triton.rounds import Rounds

    B, H, Cq, Lk, n_clusters = 2, 2, 150, 140, 2
    N, M = Cq * n_clusters, Lk * n_clusters
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(B, n, d, generator=g).to(dtype) for n, d in ((N, 12), (M, 12), (M, 48)))
    bias = torch.rand(B, M, generator=g) - 0.5
    bias[torch.rand(B, M, generator=g) < 0.1] = float("-inf")
    q_order, k_index = (torch.stack([torch.randperm(n, generator=g) for _ in range(B * H)]).view(B, H, n) for n in (N, M))
    leaves = [x.double().clone().requires_grad_() for x in (q, k, v)]
    want_out = rounds_reference(*leaves, bias.double(), q_order, k_index, Cq)
    grad = torch.randn(want_out.shape, generator=g).to(dtype)
    want_out.backward(grad.double())

    sizes = AttentionConfig(kind="smyrf", n_hashes=H, q_cluster_size=Cq, k_cluster_size=Lk, n_hub_keys=0,
                            n_summaries=0).resolve(N, M)
    rounds = Rounds(q, k, v, bias, q_order, k_index, sizes, SCALE)
    out, lse = rounds.forward()
    assert_close(out, want_out.detach().float(), dtype)
    norm = torch.logsumexp(lse, dim=1, keepdim=True).expand(B, H, N).contiguous()  # weights softmax_r(lse_r)
    delta = (grad.float() * out).sum(-1)
    results = both_backwards(launched, "rounds", lambda: rounds.backward(grad, norm, delta))
    assert_backwards_agree(results, [x.grad for x in leaves], dtype)


@parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_deterministic_mode_picks_the_two_kernel_backward_when_it_runs(deterministic, launched):
    """SMYRF through the CUDA route (hashed rounds and the hub round): the forward runs outside
    deterministic mode, the backward inside it or not, and the backward kernels follow the latter."""
    N, M, settings = RECIPES["one round"]
    g = torch.Generator().manual_seed(12)
    leaves = [torch.randn(1, n, d, generator=g).requires_grad_() for n, d in ((N, 12), (M, 12), (M, 48))]
    out = smyrf_attention(*leaves, seed=4, kernel="triton", **settings)
    launched.clear()
    with deterministic_algorithms(deterministic):
        out.sum().backward()
    assert launched == kernels_of("two kernels" if deterministic else "one pass", "clusters", "rounds")
