"""BigGAN's orthogonal regularisation, written as a loss term.

R(W) = 1/2 * || W W^T * (1 - I) ||_F^2 over every weight matrix (convs flattened to rows), whose
gradient 2 (W W^T * (1 - I)) W is exactly the update BigGAN adds to the gradients; strength 1e-4
in the paper. Applied to the raw weights under spectral norm, embeddings and gains excluded.
"""
from __future__ import annotations

import torch
from torch import nn


def regularized_weights(model: nn.Module) -> list[torch.Tensor]:
    weights = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            parametrized = getattr(getattr(module, "parametrizations", None), "weight", None)
            weights.append(parametrized.original if parametrized is not None else module.weight)
    return weights


def orthogonal_regularization(model: nn.Module) -> torch.Tensor:
    total = None
    for weight in regularized_weights(model):
        w = weight.flatten(1)
        gram = w @ w.T
        off_diagonal = gram - torch.diag_embed(torch.diagonal(gram))
        term = 0.5 * off_diagonal.pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        raise ValueError("orthogonal_regularization: the model has no conv or linear weights")
    return total
