"""Writes the BigGAN-PyTorch reference files of tests/test_biggan_pytorch.py, with BigGAN-PyTorch's own code.

    python tests/data/biggan_pytorch/make_fixtures.py /path/to/BigGAN-PyTorch   # a checkout (commit 9845943)

For each case: a small `BigGAN.Generator` (orthogonal init, then every batch-norm statistic, the
attention gains and the spectral-norm vectors u0 made random so that none is at its default), saved
as BigGAN-PyTorch saves G_ema.pth (`torch.save(G.state_dict())`), and what that generator draws in
eval mode (stored batch statistics, one power iteration from u0 per forward, as its sample.py with
--G_eval_mode runs it) for fixed z and classes. Then a small `BigGAN.Discriminator` the same way
(d64.pth) and its scores of fixed random images.
"""
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CASES = {
    # name: (BigGAN.Generator arguments in BigGAN-PyTorch's names, images drawn)
    "g32_hier": (dict(G_ch=4, dim_z=16, resolution=32, G_attn="16", n_classes=3, shared_dim=6, hier=True), 4),
    "g64_flat": (dict(G_ch=2, dim_z=8, resolution=64, G_attn="32", n_classes=2, shared_dim=4, hier=False), 2),
}

# The discriminator trained beside g64_flat (BigGAN-PyTorch's D_wide, its default).
D_CASE = dict(D_ch=2, resolution=64, D_attn="0", n_classes=2)  # "0": no attention (ch 2 is too narrow for it)


def randomise(G: torch.nn.Module, rng: torch.Generator) -> None:
    with torch.no_grad():
        for name, tensor in G.state_dict().items():
            if name.endswith("stored_mean"):
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=rng))
            elif name.endswith("stored_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=rng))
            elif name.endswith("u0"):
                tensor.copy_(torch.randn(tensor.shape, generator=rng))
            elif name.endswith(("gamma", ".gain")) or (name.endswith(".bias") and tensor.dim() == 1):
                tensor.add_(0.5 * torch.randn(tensor.shape, generator=rng))


def main(checkout: str) -> None:
    sys.path.insert(0, checkout)
    import BigGAN  # noqa: E402  (BigGAN-PyTorch's module)

    for name, (kwargs, n) in CASES.items():
        torch.manual_seed(0)
        G = BigGAN.Generator(**kwargs, G_shared=True, SN_eps=1e-6, BN_eps=1e-5, no_optim=True)
        randomise(G, torch.Generator().manual_seed(1))
        torch.save(G.state_dict(), HERE / f"{name}.pth")
        G.eval()
        rng = torch.Generator().manual_seed(2)
        z = torch.randn(n, G.dim_z, generator=rng)
        y = torch.arange(n) % kwargs["n_classes"]
        with torch.no_grad():
            images = G(z, G.shared(y))
        torch.save({"arguments": kwargs, "z": z, "y": y, "images": images}, HERE / f"{name}_expected.pt")
        print(f"{name}: {sum(p.numel() for p in G.parameters())} parameters, images {tuple(images.shape)}")

    # The discriminator of the 64 px case, scored in eval mode on random images.
    torch.manual_seed(0)
    D = BigGAN.Discriminator(**D_CASE, SN_eps=1e-6, D_wide=True)
    randomise(D, torch.Generator().manual_seed(3))
    torch.save(D.state_dict(), HERE / "d64.pth")
    D.eval()
    rng = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 64, 64, generator=rng) * 2 - 1
    y = torch.arange(2) % D_CASE["n_classes"]
    with torch.no_grad():
        scores = D(x, y)
    torch.save({"arguments": D_CASE, "x": x, "y": y, "scores": scores}, HERE / "d64_expected.pt")
    print(f"d64: {sum(p.numel() for p in D.parameters())} parameters, scores {scores.flatten().tolist()}")


if __name__ == "__main__":
    main(sys.argv[1])
