"""The hub keys' Triton kernels on the CPU, through Triton's interpreter: their selection
(`triton/hub.py` key_mass) against the "chunked" kernel's, the hub round's keys shared by its query
runs against repeated copies, and its backward accumulating into a caller's float32 buffers
against the returned gradients.

Not collected by the suite (no test_ prefix): the interpreter must be on before triton is first
imported, so `test_triton_kernel.py::test_kernels_under_triton_interpreter` runs this file in a
fresh pytest process with TRITON_INTERPRET=1. Lengths are the smallest that give the kernels
several ragged blocks at the block sizes the GPU runs (batch 1 or 2).
"""
import contextlib
import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
triton_blocks = pytest.importorskip("biggan_smyrf.attention.triton.blocks")
if not triton_blocks.INTERPRETED:
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set", allow_module_level=True)
import interpreter_overheads  # noqa: E402,F401 -- overheads of Triton's interpreter, removed (see there)

from biggan_smyrf.attention import cuda_route, hashing, plan  # noqa: E402
from biggan_smyrf.attention.triton import clusters, hub  # noqa: E402
from biggan_smyrf.attention.triton.launches import observe_launches  # noqa: E402
from helpers import deterministic_algorithms  # noqa: E402

parametrize = pytest.mark.parametrize
DTYPES = parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
MASKED = parametrize("masked", [False, True], ids=["nomask", "mask"])
SCALE = 0.7


@contextlib.contextmanager
def launches():
    """The names of the Triton launches made inside, in order."""
    names: list = []
    with observe_launches(lambda name, grid: names.append(name)):
        yield names


# --- selection ----------------------------------------------------------------------------------
# 70 sampled queries and 150 keys: 3 ragged blocks of sampled queries in the logsumexp kernel (32),
# 2 in the mass kernel (64), and 3 ragged key blocks (64) in both.
N, M, SAMPLE = 200, 150, 70


def selection_inputs(dtype, masked: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # q as BigGAN's channels-first maps viewed as tokens: the kernels read through its strides.
    q = torch.randn(3, 12, N, generator=g).to(dtype).transpose(1, 2)
    k = torch.randn(3, M, 12, generator=g).to(dtype)
    mask = None
    if masked:
        mask = torch.rand(3, M, generator=g) > 0.3
        mask[1] = False  # batch element 1: every key masked, so its queries give no mass
    return q, k, mask, g


@DTYPES
@MASKED
def test_key_mass_matches_chunked(dtype, masked):
    q, k, mask, g = selection_inputs(dtype, masked)
    pick = torch.randperm(N, generator=g)[:SAMPLE]
    with launches() as names:
        got = hub.key_mass(q, pick, k, SCALE, mask)
    assert names == ["hub._sample_lse_kernel", "hub._key_mass_kernel"]
    want = hashing.key_mass(q[:, pick].float(), k.float(), SCALE, "chunked", mask)
    assert got.dtype == torch.float32 and got.shape == (3, M)
    # The same float32 products of the same inputs (half products are exact), summed in another order.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if masked:
        assert got[1].abs().max() == 0 and got[~mask].abs().max() == 0
    else:
        torch.testing.assert_close(got.sum(-1), torch.full((3,), float(SAMPLE)))  # each query gives mass 1


def test_key_mass_counts_a_repeated_pick_twice():
    q, k, _, g = selection_inputs(torch.float32, False, seed=1)
    pick = torch.tensor([5, 17, 5, 199, 0])
    want = hashing.key_mass(q[:, pick].float(), k.float(), SCALE, "chunked", None)
    torch.testing.assert_close(hub.key_mass(q, pick, k, SCALE), want, rtol=1e-5, atol=1e-6)


@MASKED
def test_hub_keys_take_the_triton_selection(masked):
    """hashing.hub_keys with kernel "triton": randperm, the two kernels, topk -- the keys the chunked
    kernel picks from the same draw."""
    q, k, mask, _ = selection_inputs(torch.float32, masked, seed=2)
    with launches() as names:
        got = hashing.hub_keys(q, k, 8, SAMPLE, SCALE, torch.Generator().manual_seed(3), mask, kernel="triton")
    assert names == ["hub._sample_lse_kernel", "hub._key_mass_kernel"]
    want = hashing.hub_keys(q, k, 8, SAMPLE, SCALE, torch.Generator().manual_seed(3), mask, kernel="chunked")
    rows = [0, 2] if masked else [0, 1, 2]  # all masked: every mass 0, any 8 keys are a tie
    assert torch.equal(got[rows].sort(-1).values, want[rows].sort(-1).values)


# --- the hub round: shared keys, accumulation -------------------------------------------------
# Production blocks (triton/clusters.py BLOCKS: 64 or 16 queries x 32 or 64 keys): 72 queries per
# run and 72 hub keys give every cluster kernel at least 2 query and 2 key blocks, the last ragged;
# 2 query runs per batch element share the hub keys.
B, PARTS, LQ, N_HUB, D_QK, D_V = 2, 2, 72, 72, 16, 48
N_TOKENS, M_KEYS, M_ROWS = PARTS * LQ, 80, 90  # M_ROWS > M_KEYS: rows after the keys (summaries)


def round_inputs(dtype, masked: bool, seed: int = 4):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N_TOKENS, D_QK, generator=g).to(dtype)
    k = torch.randn(B, M_KEYS, D_QK, generator=g).to(dtype)
    v = torch.randn(B, M_KEYS, D_V, generator=g).to(dtype)
    hubs = torch.stack([torch.randperm(M_KEYS, generator=g)[:N_HUB] for _ in range(B)])
    mask = None
    if masked:
        mask = torch.rand(B, M_KEYS, generator=g) > 0.2
        mask[1, hubs[1]] = False  # batch element 1 attends to no hub key
        mask = mask.gather(1, hubs)
    hub_k, hub_v = plan.take(k, hubs), plan.take(v, hubs)
    grad = torch.randn(B, N_TOKENS, D_V, generator=g).to(dtype)
    out = torch.randn(B, N_TOKENS, D_V, generator=g).to(dtype)  # as SMYRF's combined output
    return q, hub_k, hub_v, mask, hubs, grad, out, g


@pytest.fixture
def three_parts(monkeypatch):
    monkeypatch.setitem(plan.HUB_QUERY_PARTS, "cpu", PARTS)


def repeated(x):
    return None if x is None else x.repeat_interleave(PARTS, dim=0)


@DTYPES
def test_shared_keys_equal_repeated_copies(dtype):
    """Keys, values and key mask shared by PARTS consecutive query runs (indexed by run // PARTS)
    give bit for bit the numbers of the same keys repeated for every run: the forward, and both
    backwards of its output (the one pass and the two kernels of deterministic mode; the forward
    is the same in both modes, so it runs once)."""
    masked = True
    q, hub_k, hub_v, mask, _, grad, out, _ = round_inputs(dtype, masked)
    qp, gp, op = (x.reshape(B * PARTS, LQ, -1) for x in (q, grad, out))
    o_shared, lse_shared = clusters.forward(qp, hub_k, hub_v, SCALE, mask)
    o_copies, lse_copies = clusters.forward(qp, repeated(hub_k), repeated(hub_v), SCALE, repeated(mask))
    assert torch.equal(o_shared, o_copies) and torch.equal(lse_shared, lse_copies)
    for path, deterministic in (("one pass", False), ("two kernels", True)):
        with deterministic_algorithms(deterministic):
            shared = clusters.backward(gp, qp, hub_k, hub_v, op, lse_shared, SCALE, mask)
            copies = clusters.backward(gp, qp, repeated(hub_k), repeated(hub_v), op, lse_shared, SCALE, repeated(mask))
        for name, a, b in zip(("dq", "dk", "dv"), shared, copies):
            assert a.shape == b.shape and torch.equal(a, b), (path, name)
        if masked:
            assert lse_shared.view(B, -1)[1].isneginf().all() and shared[2].view(B, -1)[1].abs().max() == 0, path


def test_shared_keys_must_divide_the_query_runs():
    q, hub_k, hub_v, *_ = round_inputs(torch.float32, False)
    with pytest.raises(ValueError, match="multiple of the key groups"):
        clusters.forward(q[:, :LQ].reshape(B, LQ, -1)[:1].expand(3, -1, -1), hub_k, hub_v, SCALE)


def accumulate(dtype, masked, deterministic, seed=4, returned=True):
    """cuda_route.hub_round_backward_into random float32 buffers -> (initial buffers, final buffers, launches,
    the gradients it returns without buffers (or None), hub keys)."""
    q, hub_k, hub_v, mask, hubs, grad, out, g = round_inputs(dtype, masked, seed)
    _, lse = plan.hub_round_forward(q, hub_k, hub_v, SCALE, "triton", mask)
    start = [torch.randn(B, n, d, generator=g) for n, d in ((N_TOKENS, D_QK), (M_ROWS, D_QK), (M_ROWS, D_V))]
    buffers = [x.clone() for x in start]
    with deterministic_algorithms(deterministic), launches() as names:
        result = cuda_route.hub_round_backward_into(grad, q, hub_k, hub_v, out, lse, SCALE, mask, hubs, *buffers)
        assert result is None
        if returned:
            returned = plan.hub_round_backward(grad, q, hub_k, hub_v, out, lse, SCALE, "triton", mask)
    return start, buffers, names, returned, hubs


@parametrize("dtype, masked, deterministic", [
    (torch.float32, False, False), (torch.float32, True, True), (torch.bfloat16, True, False), (torch.bfloat16, True, True),
], ids=["float32-nomask-one pass", "float32-mask-two kernels", "bfloat16-mask-one pass", "bfloat16-mask-two kernels"])
def test_accumulation_equals_the_returned_gradients(dtype, masked, deterministic, three_parts):
    start, (dq_acc, dk_acc, dv_acc), names, (dq, d_hub_k, d_hub_v), hubs = accumulate(dtype, masked, deterministic)
    backward = ["clusters._backward_keys_kernel", "clusters._backward_q_kernel"] if deterministic \
        else ["clusters._backward_keys_kernel"]
    accumulating = ["blocks._row_dot_kernel", *backward, "hub._add_hub_gradients_kernel"]
    assert names == accumulating + ["blocks._row_dot_kernel", *backward], names
    want_dk, want_dv = start[1].clone(), start[2].clone()
    for b in range(B):
        want_dk[b, hubs[b]] += d_hub_k[b].float()
        want_dv[b, hubs[b]] += d_hub_v[b].float()
    # Rows that are no hub key's (other keys, the rows after them) are left as they were.
    untouched = torch.ones(B, M_ROWS, dtype=torch.bool).scatter_(1, hubs, False)
    assert torch.equal(dk_acc[untouched], start[1][untouched]) and torch.equal(dv_acc[untouched], start[2][untouched])
    for name, got, begin, want in (("dq", dq_acc, start[0], start[0] + dq.float()),
                                   ("dk", dk_acc, start[1], want_dk), ("dv", dv_acc, start[2], want_dv)):
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        else:
            # The returned path rounds to bfloat16 (and sums the query runs' dK, dV in bfloat16);
            # the accumulated one adds float32 sums: compare the increments.
            error = ((got - begin) - (want - begin)).norm() / (want - begin).norm()
            assert error < 1e-2, f"{name}: relative error {error:.1e}"
    if masked:  # batch element 1 attends to no hub key: nothing added anywhere
        for got, begin in zip((dq_acc, dk_acc, dv_acc), start):
            assert torch.equal(got[1], begin[1])
    if dtype == torch.float32 and deterministic:  # deterministic accumulation is repeatable: a second run, bit for bit
        again = accumulate(dtype, masked, deterministic, returned=False)[1]
        for a, b in zip((dq_acc, dk_acc, dv_acc), again):
            assert torch.equal(a, b)


def test_hub_round_forward_is_one_launch_without_copies(three_parts):
    q, hub_k, hub_v, mask, *_ = round_inputs(torch.bfloat16, True)
    with launches() as names:
        out, lse = plan.hub_round_forward(q, hub_k, hub_v, SCALE, "triton", mask)
    assert names == ["clusters._forward_kernel"] and out.shape == (B, N_TOKENS, D_V) and lse.shape == (B, N_TOKENS)
    want_out, want_lse = plan.hub_round_forward(q, hub_k, hub_v, SCALE, "chunked", mask)
    error = (out.float() - want_out.float()).norm() / want_out.float().norm()
    assert error < 1.5e-2
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
