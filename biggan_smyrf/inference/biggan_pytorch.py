"""Networks trained with BigGAN-PyTorch (Brock et al.'s reference code) as biggan_smyrf networks: G for
sampling (`import_biggan.py`), G, D and G_ema of a run folder for fine-tuning (`model.init_from`).

    python import_biggan.py G_ema.pth biggan128.pt
    python sample.py --ckpt biggan128.pt --out samples/ --class 207 --truncation 0.5 --standing-stats 16
    python sample.py --ckpt biggan128.pt --out samples/ --attention smyrf

BigGAN-PyTorch's `BigGAN.Generator` with a shared class embedding (`--G_shared`, as in all its
ImageNet runs and its TF-Hub ports) is the network `models/generator.py` builds: the same blocks,
hierarchical z, conditional batch norms and attention, under other names. The architecture is
read from the weights' shapes: resolution from the number of blocks, width, classes, embedding and
z sizes, hierarchical z or not, and where attention is. The imported generator attends densely, as
trained; `sample.py --attention smyrf` (or `load_generator(..., attention=...)`) swaps SMYRF in on
the same weights -- the SMYRF paper's experiment on a pre-trained BigGAN -- starting from 2 hash
rounds of clusters of a quarter of the queries (each query scores half of the keys).

Spectral norm: BigGAN-PyTorch keeps only u, and in eval mode still runs one power iteration from
it on every forward (without storing the result). The import runs that iteration once and stores
its (u, v), so the imported generator divides every weight by exactly the sigma BigGAN-PyTorch's
eval forward uses: the same images, up to float rounding (tested against BigGAN-PyTorch's own
output). Neither epsilon is in the weights file: 1e-6 (spectral norm) and 1e-5 (batch norm) are
BigGAN-PyTorch's ImageNet runs; its TF-Hub ports use 1e-4 for both.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from biggan_smyrf.attention import AttentionConfig
from biggan_smyrf.commands import script_command
from biggan_smyrf.errors import DEBUG_ENV, DEBUG_FLAG, debug_requested, reported_errors
from biggan_smyrf.models import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from biggan_smyrf.models.attention_block import SelfAttention
from biggan_smyrf.models.specs import BOTTOM, D_WIDTHS, G_WIDTHS, discriminator_stages
from biggan_smyrf.parse_errors import OneLineErrorParser

from .checkpoint import CheckpointError, export_generator, read_checkpoint

WHAT_TO_PASS = "pass BigGAN-PyTorch's G_ema.pth or G.pth (a BigGAN.Generator state dict)"
D_WHAT_TO_PASS = "pass BigGAN-PyTorch's D.pth (a BigGAN.Discriminator state dict)"
BLOCK_KEY = re.compile(r"blocks\.\d+\.0\.conv1\.weight")


class ForeignWeightsError(CheckpointError):
    """The file is not a BigGAN-PyTorch network this import can map."""


def import_biggan_pytorch(path: Union[str, Path], sn_eps: float = 1e-6, bn_eps: float = 1e-5) -> Generator:
    """A Generator (eval mode, dense attention) with the weights of a BigGAN-PyTorch generator file."""
    state = biggan_pytorch_state(path)
    generator = Generator(architecture_of(state, sn_eps, bn_eps, path))
    load_biggan_pytorch_state(generator, state, path)
    return generator.eval()


def import_biggan_pytorch_discriminator(path: Union[str, Path], sn_eps: float = 1e-6) -> Discriminator:
    """A Discriminator (eval mode, dense attention) with the weights of a BigGAN-PyTorch D.pth."""
    state = read_state(path, D_WHAT_TO_PASS)
    if "embed.weight" not in state:
        raise ForeignWeightsError(f"{path} is not a discriminator (no embed.weight); {D_WHAT_TO_PASS}")
    discriminator = Discriminator(discriminator_architecture_of(state, sn_eps, path))
    load_biggan_pytorch_state(discriminator, state, path, D_WHAT_TO_PASS)
    return discriminator.eval()


def biggan_pytorch_state(path: Union[str, Path]) -> dict[str, torch.Tensor]:
    """The generator state dict in `path`, refused early if it is another of BigGAN-PyTorch's files."""
    state = read_state(path, WHAT_TO_PASS)
    first_conv = state.get("blocks.0.0.conv1.weight")
    if "embed.weight" in state or (first_conv is not None and first_conv.shape[1] == 3):
        raise ForeignWeightsError(f"{path} holds a discriminator (D.pth); {WHAT_TO_PASS}")
    if "shared.weight" not in state:
        raise ForeignWeightsError(
            f"{path} has no shared class embedding (shared.weight): generators trained without --G_shared "
            f"condition each batch norm on its own embedding, which this library does not build; {WHAT_TO_PASS}"
        )
    return state


def read_state(path: Union[str, Path], what_to_pass: str) -> dict[str, torch.Tensor]:
    """A BigGAN.py network's state dict from `path` (G or D), without a DataParallel prefix."""
    state = read_checkpoint(path, what_to_pass)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        found = "training state (state_dict.pth: counters and metrics)" if isinstance(state, dict) else type(state).__name__
        raise ForeignWeightsError(f"{path} holds {found}, not a network's weights; {what_to_pass}")
    if state and all(k.startswith("module.") for k in state):  # saved from inside nn.DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(".conv3." in k or ".conv4." in k for k in state):
        raise ForeignWeightsError(
            f"{path} holds a BigGAN-deep network (bottleneck blocks, BigGANdeep.py), an architecture this "
            f"library does not build; only BigGAN.py networks import"
        )
    if any(k.endswith(".u1") for k in state):
        raise ForeignWeightsError(f"{path} was trained with --num_G_SVs/--num_D_SVs > 1; only one singular value per layer imports")
    return state


def architecture_of(state: dict[str, torch.Tensor], sn_eps: float, bn_eps: float, path="weights") -> GeneratorConfig:
    """GeneratorConfig from the tensors' shapes (BigGAN-PyTorch's G_arch tables are ours)."""
    n_blocks = len([k for k in state if BLOCK_KEY.fullmatch(k)])
    resolutions = {len(widths) - 1: res for res, widths in G_WIDTHS.items()}
    if n_blocks not in resolutions:
        raise ForeignWeightsError(f"{path}: {n_blocks} generator blocks match no BigGAN resolution; {WHAT_TO_PASS}")
    resolution = resolutions[n_blocks]

    def shape(key: str) -> torch.Size:
        return shape_of(state, key, path, WHAT_TO_PASS)

    last_width = shape(f"blocks.{n_blocks - 1}.0.conv2.weight")[0]
    n_classes, shared_dim = shape("shared.weight")
    z_chunk = shape("linear.weight")[1]
    cond_dim = shape("blocks.0.0.bn1.gain.weight")[1]
    if cond_dim not in (shared_dim, shared_dim + z_chunk):
        raise ForeignWeightsError(
            f"{path}: batch-norm conditioning of {cond_dim} features is neither the class embedding ({shared_dim}) "
            f"nor the embedding plus a z chunk ({shared_dim + z_chunk}); {WHAT_TO_PASS}"
        )
    hier = cond_dim == shared_dim + z_chunk
    attended = [BOTTOM * 2 ** (i + 1) for i in range(n_blocks) if any(k.startswith(f"blocks.{i}.1.") for k in state)]
    return GeneratorConfig(
        resolution=resolution,
        ch=last_width // G_WIDTHS[resolution][-1],
        n_classes=n_classes,
        attention_resolutions=attended,
        attention=AttentionConfig(kind="dense"),
        attention_overrides=half_the_keys(attended),
        sn_eps=sn_eps,
        dim_z=z_chunk * (n_blocks + 1) if hier else z_chunk,
        hier=hier,
        shared_dim=shared_dim,
        bn_eps=bn_eps,
    )


def half_the_keys(resolutions: list[int]) -> dict[int, AttentionConfig]:
    """Dense attention (as trained) carrying the SMYRF sizes a swap starts from: 2 hash rounds of
    clusters of a quarter of the queries, so that each query scores half of the keys."""
    return {r: AttentionConfig(kind="dense", n_hashes=2, q_cluster_size=r * r // 4) for r in resolutions}


def discriminator_architecture_of(state: dict[str, torch.Tensor], sn_eps: float, path="weights") -> DiscriminatorConfig:
    """DiscriminatorConfig from the tensors' shapes (BigGAN-PyTorch's D_arch tables are ours)."""
    n_blocks = len([k for k in state if BLOCK_KEY.fullmatch(k)])
    resolutions = {len(widths): res for res, widths in D_WIDTHS.items()}
    if n_blocks not in resolutions:
        raise ForeignWeightsError(f"{path}: {n_blocks} discriminator blocks match no BigGAN resolution; {D_WHAT_TO_PASS}")
    resolution = resolutions[n_blocks]
    ch = shape_of(state, "blocks.0.0.conv1.weight", path, D_WHAT_TO_PASS)[0] // D_WIDTHS[resolution][0]
    stages = discriminator_stages(resolution, ch)
    return DiscriminatorConfig(
        resolution=resolution,
        ch=ch,
        n_classes=shape_of(state, "embed.weight", path, D_WHAT_TO_PASS)[0],
        attention_resolutions=[stages[i].resolution for i in range(n_blocks)
                               if any(k.startswith(f"blocks.{i}.1.") for k in state)],
        attention=AttentionConfig(kind="dense"),
        sn_eps=sn_eps,
    )


def shape_of(state: dict[str, torch.Tensor], key: str, path, what_to_pass: str) -> torch.Size:
    if key not in state:
        raise ForeignWeightsError(f"{path} lacks {key}; {what_to_pass}")
    return state[key].shape


def load_biggan_pytorch_state(network: nn.Module, state: dict[str, torch.Tensor], path="weights",
                              what_to_pass: str = WHAT_TO_PASS) -> None:
    """Copy every tensor of `state` into `network` (G or D), module by module; a key left over or
    missing, or a shape that differs, is an error naming it."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ForeignWeightsError(f"{path} lacks {key}; {what_to_pass}")
        used.add(key)
        return state[key]

    with torch.no_grad():
        for name, module in network.named_modules():
            theirs = their_name(name)
            if hasattr(module, "parametrizations"):
                load_spectral(module, take(f"{theirs}.weight"), take(f"{theirs}.u0"), network.config.sn_eps, theirs)
                used.add(f"{theirs}.sv0")  # their last training sigma: recomputed from u0
                if getattr(module, "bias", None) is not None:
                    copy(module.bias, take(f"{theirs}.bias"), f"{theirs}.bias")
            elif isinstance(module, nn.BatchNorm2d):
                owner = theirs.removesuffix(".norm")  # a conditional batch norm's statistics live on it
                mean, var = statistics_keys(state, owner)
                copy(module.running_mean, take(mean), mean)
                copy(module.running_var, take(var), var)
                used.add(f"{owner}.bn.accumulation_counter")
                used.add(f"{owner}.bn.num_batches_tracked")
                if module.affine:
                    copy(module.weight, take(f"{owner}.gain"), f"{owner}.gain")
                    copy(module.bias, take(f"{owner}.bias"), f"{owner}.bias")
            elif isinstance(module, nn.Embedding):  # G's shared class embedding (D's has spectral norm)
                copy(module.weight, take(f"{theirs}.weight"), f"{theirs}.weight")
            elif isinstance(module, SelfAttention):
                copy(module.gamma, take(f"{theirs}.gamma"), f"{theirs}.gamma")
    left = sorted(set(state) - used)
    if left:
        raise ForeignWeightsError(f"{path}: {len(left)} tensors have no place in the network, e.g. {left[:3]}; {what_to_pass}")


def statistics_keys(state: dict, owner: str) -> tuple[str, str]:
    """Keys of a batch norm's mean and variance: on the layer itself (BigGAN-PyTorch's default), or
    on its `bn` submodule with --mybn (stored_*) or --cross_replica (running_*)."""
    for mean, var in (("stored_mean", "stored_var"), ("bn.stored_mean", "bn.stored_var"),
                      ("bn.running_mean", "bn.running_var")):
        if f"{owner}.{mean}" in state:
            return f"{owner}.{mean}", f"{owner}.{var}"
    return f"{owner}.stored_mean", f"{owner}.stored_var"  # missing: reported by name


def biggan_pytorch_run(folder: Union[str, Path], sn_eps: float, bn_eps: float) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts, in this library's names, of the G, D and G_ema of a BigGAN-PyTorch run folder
    (weights/<experiment>/: G.pth, D.pth, and G_ema.pth when it trained with --ema; else G's)."""
    folder = check_run_folder(folder)
    generator = import_biggan_pytorch(folder / "G.pth", sn_eps, bn_eps)
    ema = folder / "G_ema.pth"
    averaged = import_biggan_pytorch(ema, sn_eps, bn_eps) if ema.is_file() else generator
    discriminator = import_biggan_pytorch_discriminator(folder / "D.pth", sn_eps)
    return {"G": generator.state_dict(), "D": discriminator.state_dict(), "G_ema": averaged.state_dict()}


def check_run_folder(folder: Union[str, Path]) -> Path:
    folder = Path(folder)
    missing = [name for name in ("G.pth", "D.pth") if not (folder / name).is_file()]
    if missing:
        raise ForeignWeightsError(
            f"{folder} has no {' or '.join(missing)}: a BigGAN-PyTorch run folder (weights/<experiment>/) holds "
            f"G.pth, D.pth and, with --ema, G_ema.pth"
        )
    return folder


def their_name(ours: str) -> str:
    """BigGAN-PyTorch's path of one of our modules: only the output layer and shortcuts differ."""
    if ours.split(".")[0] == "output":
        return "output_layer" + ours[len("output"):]
    return ours.replace(".shortcut", ".conv_sc")


def load_spectral(module: nn.Module, weight: torch.Tensor, u0: torch.Tensor, eps: float, name: str) -> None:
    """Weight and (u, v) of a spectrally normalised layer: one power iteration from BigGAN-PyTorch's
    u0, as its forward runs in eval mode, so that sigma = u'ᵀ W v' is the sigma it divides by."""
    parametrization = module.parametrizations.weight
    copy(parametrization.original, weight, f"{name}.weight")
    if u0.numel() != weight.shape[0]:
        raise ForeignWeightsError(f"{name}.u0 has {u0.numel()} entries for {weight.shape[0]} output features; {WHAT_TO_PASS}")
    matrix = weight.flatten(1).double()
    v = F.normalize(u0.reshape(1, -1).double() @ matrix, dim=1, eps=eps)
    u = F.normalize(v @ matrix.T, dim=1, eps=eps)
    spectral_norm = parametrization[0]
    spectral_norm._u.copy_(u[0])
    spectral_norm._v.copy_(v[0])


def copy(target: torch.Tensor, source: torch.Tensor, name: str) -> None:
    if target.shape != source.shape:
        raise ForeignWeightsError(
            f"{name} is {tuple(source.shape)} in the file but {tuple(target.shape)} in the generator its other "
            f"shapes describe; {WHAT_TO_PASS}"
        )
    target.copy_(source)


def build_parser() -> OneLineErrorParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           prog=script_command("import_biggan.py"))
    p.add_argument("weights", help="BigGAN-PyTorch generator weights: G_ema.pth (or G.pth) of a run, or a TF-Hub port")
    p.add_argument("out", help="the generator file to write, for sample.py --ckpt and load_generator")
    p.add_argument("--sn-eps", type=float, default=1e-6, help="spectral-norm epsilon of the run (--SN_eps; 1e-4 for TF-Hub ports)")
    p.add_argument("--bn-eps", type=float, default=1e-5, help="batch-norm epsilon of the run (--BN_eps; 1e-4 for TF-Hub ports)")
    p.add_argument("--overwrite", action="store_true", help="replace `out` if it exists")
    p.add_argument(DEBUG_FLAG, action="store_true", help=f"show the traceback of any error (or set {DEBUG_ENV}=1)")
    return p


def run(args) -> Path:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    generator = import_biggan_pytorch(args.weights, sn_eps=args.sn_eps, bn_eps=args.bn_eps)
    export_generator(generator, out)
    c = generator.config
    print(f"wrote {out}: G{c.resolution} (ch={c.ch}, {c.n_classes} classes, dim_z={c.dim_z}, hier={c.hier}), "
          f"dense attention at {c.attention_resolutions}")
    print(f"sample it: {script_command('sample.py', '--ckpt', out, '--out', out.with_suffix(''), '--class', 0)}")
    if c.attention_resolutions:
        print("with SMYRF on the same weights, add --attention smyrf (2 hash rounds of 4 clusters: each query scores "
              "half of the keys), or --attention paper (the published recipe at those sizes)")
    return out


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, _ = debug_requested(argv)
    with reported_errors(debug):
        run(build_parser().parse_args(argv))
