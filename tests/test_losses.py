"""GAN losses against values computed by hand, and the `loss` option."""
import math

import pytest
import torch

from biggan_smyrf.training import LOSSES, OptimConfig, gan_loss

D_REAL = torch.tensor([2.0, 0.5, -1.0])
D_FAKE = torch.tensor([-2.0, 0.0, 1.5])


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_hinge_by_hand():
    # D: mean(relu(1 - [2, .5, -1])) + mean(relu(1 + [-2, 0, 1.5])) = (0 + .5 + 2)/3 + (0 + 1 + 2.5)/3
    d, g = gan_loss("hinge")
    assert d(D_REAL, D_FAKE).item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert g(D_FAKE).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)


def test_non_saturating_logistic_by_hand():
    d, g = gan_loss("logistic")
    expected_d = sum(softplus(-x) for x in D_REAL.tolist()) / 3 + sum(softplus(x) for x in D_FAKE.tolist()) / 3
    assert d(D_REAL, D_FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert g(D_FAKE).item() == pytest.approx(sum(softplus(-x) for x in D_FAKE.tolist()) / 3, rel=1e-6)
    # Non-saturating: G's gradient does not vanish where D confidently rejects the fakes.
    fake = torch.tensor([-8.0], requires_grad=True)
    g(fake).backward()
    assert fake.grad.item() == pytest.approx(-1 / (1 + math.exp(-8)), rel=1e-6)


def test_loss_option_is_checked():
    assert set(LOSSES) == {"hinge", "logistic"}
    assert OptimConfig(loss="logistic").loss == "logistic"
    with pytest.raises(ValueError, match=r"loss must be one of \['hinge', 'logistic'\]"):
        OptimConfig(loss="wasserstein")
