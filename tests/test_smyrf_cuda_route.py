"""The pieces of SMYRF's permuted (CUDA) route that run without triton: its round weights and its
round-at-a-time summary sums, against the gathered route's. Its kernels are tested in
`test_triton_kernel.py` (compiled, CUDA) and `triton_interpreted.py` (Triton's CPU interpreter)."""
import pytest
import torch

from biggan_smyrf.attention.gathered_route import gather
from biggan_smyrf.attention.plan import log_participation, round_normalisers
from biggan_smyrf.attention.summaries import unit_sums_through


def test_unit_sums_through_the_order_equal_sums_of_the_sorted_copy():
    """The permuted route sums the summaries' features one round at a time; the gathered route
    sums all rounds' sorted copies at once. The same sums, forward and backward."""
    g = torch.Generator().manual_seed(0)
    B, H, M, F, unit = 2, 3, 48, 5, 8
    order = torch.stack([torch.stack([torch.randperm(M, generator=g) for _ in range(H)]) for _ in range(B)])
    features = torch.randn(B, M, F, generator=g, dtype=torch.float64, requires_grad=True)
    through = unit_sums_through(order, features, unit)
    sorted_copy = gather(features, order).view(B, H, M // unit, unit, F).sum(3)
    torch.testing.assert_close(through, sorted_copy)
    weights = torch.randn(through.shape, generator=g, dtype=torch.float64)
    grad_through, = torch.autograd.grad((through * weights).sum(), features)
    grad_sorted, = torch.autograd.grad((sorted_copy * weights).sum(), features)
    torch.testing.assert_close(grad_through, grad_sorted)


@pytest.mark.parametrize("dedup", [False, True], ids=["plain", "dedup"])
def test_round_normalisers_carry_the_gathered_routes_round_weights(dedup):
    """The permuted route folds each round's weight into norm_r = lse_r - log w_r: exp(lse_r - norm_r)
    must be the gathered route's w_r (softmax over rounds and hub, dedup-corrected), 0 for a round
    whose cluster held only masked keys, and w_hub the hub round's share."""
    g = torch.Generator().manual_seed(0)
    lse, lse_hub = torch.randn(2, 3, 5, generator=g), torch.randn(2, 5, generator=g)
    lse[0, 1, 2] = float("-inf")
    norm, w_hub = round_normalisers(lse, lse_hub, dedup)
    hashed = lse - log_participation(lse) if dedup else lse
    weights = torch.softmax(torch.cat([hashed, lse_hub[:, None]], dim=1), dim=1)
    torch.testing.assert_close(torch.exp(lse - norm), weights[:, :3])
    torch.testing.assert_close(w_hub, weights[:, 3])
    assert torch.exp(lse - norm)[0, 1, 2] == 0
    norm, w_hub = round_normalisers(lse, None, dedup)  # no hub round: plain softmax over the rounds
    assert w_hub is None
    torch.testing.assert_close(torch.exp(lse - norm), torch.softmax(lse, dim=1))


def test_a_query_no_round_saw_a_key_takes_the_hub_round_alone():
    """With padding, every hashed round of a query can hold only masked keys (all lse_r = -inf):
    dedup's participation ratio is then 0/0, and its log must not turn the hub round's weight NaN."""
    lse = torch.full((1, 3, 2), float("-inf"))
    lse[0, :, 1] = torch.tensor([0.5, -1.0, 2.0])
    assert log_participation(lse)[0, 0, 0] == 0
    norm, w_hub = round_normalisers(lse, torch.zeros(1, 2), dedup=True)
    assert torch.isfinite(w_hub).all() and w_hub[0, 0] == 1
    assert torch.exp(lse - norm)[0, :, 0].eq(0).all()
