"""A BigGAN LightningModule pickles (process launchers such as torch_xla's spawn pickle it) although
spectral norm's parametrizations refuse to: it is rebuilt from its hyperparameters and state."""
from __future__ import annotations

import copy
import pickle

import torch

from biggan_smyrf.training.state import attention_generators

from helpers import tiny_module


def trained_a_little():
    torch.manual_seed(0)
    module = tiny_module()
    z, y = module.sample_latents(4)
    images = module.G(z, y)  # training-mode forwards: spectral norm's u and v move
    module.D(images, y)
    module.G_ema.module.eval()
    module.g_iters, module._micro_step = 3, 1
    for generator in attention_generators(module).values():
        torch.randn(5, generator=generator)  # SMYRF's hash streams are not at their seed
    return module


def test_pickle_round_trip_keeps_weights_spectral_vectors_modes_and_outputs():
    module = trained_a_little()
    rng = torch.get_rng_state()
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(torch.get_rng_state(), rng)  # rebuilding drew nothing from the caller's stream

    state, cloned = module.state_dict(), clone.state_dict()
    assert state.keys() == cloned.keys()
    assert all(torch.equal(state[k], cloned[k]) for k in state)
    vectors = [k for k in state if k.endswith(("._u", "._v"))]
    assert len(vectors) > 10 and any(k.startswith("G_ema.") for k in vectors)
    assert [m.training for m in module.modules()] == [m.training for m in clone.modules()]
    assert (clone.g_iters, clone._micro_step, clone.hparams) == (module.g_iters, module._micro_step, module.hparams)
    mine, theirs = attention_generators(module), attention_generators(clone)
    assert mine and all(torch.equal(mine[k].get_state(), theirs[k].get_state()) for k in mine)

    z, y = module.sample_latents(4)
    for net in ("G", "D"):  # train mode: one more power iteration each, on both
        inputs = (z, y) if net == "G" else (torch.randn(4, 3, 32, 32), y)
        assert torch.equal(getattr(module, net)(*inputs), getattr(clone, net)(*inputs))
    assert torch.equal(module.sample_grid_images(), clone.sample_grid_images())
    state, cloned = module.state_dict(), clone.state_dict()
    assert all(torch.equal(state[k], cloned[k]) for k in vectors)


def test_deepcopy_still_copies_attribute_by_attribute():
    module = trained_a_little()
    module.marker = object()  # set after construction: a deep copy keeps it, a rebuild would not need to
    clone = copy.deepcopy(module)
    assert hasattr(clone, "marker") and clone.G is not module.G
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), clone.state_dict().values()))
