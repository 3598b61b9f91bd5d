"""The SMYRF paper's test of a pre-trained BigGAN: its Inception score with SMYRF swapped in, no retraining.

    python import_biggan.py G_ema.pth biggan128.pt     # BigGAN-PyTorch's ImageNet 128 model, say
    python -m benchmarks.pretrained_is --ckpt biggan128.pt --weights-path inception.pth --n 50000 --device cuda

The same --n latents (uniform classes, seed 0) are drawn with dense attention and with each SMYRF
setting of --settings in every attention block of G, and scored with the Inception score alone
(torch-fidelity's, as validation computes it; no real images needed). A setting is
`<recipe> <hashes>x<clusters>`: recipe `paper` (the published one) or `ours` (this library's
default), hash rounds, and clusters per round (queries per cluster = tokens / clusters, so one
setting fits every block). Each row reports IS (mean, std over 10 splits), IS as a share of
dense's, and the query-key scores G's attention computes as a share of dense's N*M -- the
paper's "memory" (its headline: 98.2% of the IS at 50%). Latents and Inception pass are the
same for every row, so differences come from the attention alone.

--ckpt takes anything sample.py does (a train.py checkpoint, an exported or imported generator).
Writes benchmarks/results/<--name>-<device>.{json,md}; nothing is committed for it yet: it needs
pre-trained weights and the Inception weights, neither of which this repository can ship.
"""
from __future__ import annotations

import argparse
import time

import torch

from benchmarks.accuracy import products  # noqa: E402
from benchmarks.common import (  # noqa: E402
    add_cuda_options, benchmark_parser, markdown_table, parse_device_args, synchronize, write_results)

from biggan_smyrf.attention import AttentionConfig  # noqa: E402
from biggan_smyrf.inference import load_generator  # noqa: E402
from biggan_smyrf.inference.sampling import labels, latents, render  # noqa: E402
from biggan_smyrf.metrics import MetricsConfig, evaluate_images, prepare_scoring  # noqa: E402
from biggan_smyrf.models.attention_block import SelfAttention  # noqa: E402

DEFAULT_SETTINGS = ["paper 1x2", "paper 2x4", "paper 4x8", "ours 2x4", "paper 2x8"]


def parse_setting(text: str) -> tuple[str, int, int]:
    """'paper 2x4' -> ('paper', 2, 4)."""
    try:
        recipe, sizes = text.split()
        hashes, clusters = (int(part) for part in sizes.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is '<paper|ours> <hashes>x<clusters>', e.g. 'paper 2x4'; got {text!r}")
    if recipe not in ("paper", "ours") or hashes < 1 or clusters < 1:
        raise argparse.ArgumentTypeError(f"a setting is '<paper|ours> <hashes>x<clusters>', e.g. 'paper 2x4'; got {text!r}")
    return recipe, hashes, clusters


def block_config(block: SelfAttention, setting) -> AttentionConfig:
    if setting is None:
        return AttentionConfig(kind="dense")
    recipe, hashes, clusters = setting
    sizes = dict(n_hashes=hashes, q_cluster_size=block.n_queries // clusters)
    return AttentionConfig.paper(**sizes) if recipe == "paper" else AttentionConfig(kind="smyrf", **sizes)


def score_share(blocks: list[SelfAttention], setting) -> float:
    """Query-key scores of all blocks under `setting`, as a share of dense attention's."""
    dense = sum(b.n_queries * b.n_keys for b in blocks)
    if setting is None:
        return 1.0
    return sum(products(block_config(b, setting), b.n_queries, b.n_keys) for b in blocks) / dense


def build_parser():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--ckpt", required=True, help="generator: train.py checkpoint, exported or imported file")
    parser.add_argument("--weights-path", help="local Inception weights file (torch-fidelity's; offline machines)")
    parser.add_argument("--n", type=int, default=50000, help="samples per setting (50,000 as the paper)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in DEFAULT_SETTINGS],
                        metavar="SETTING", help=f"SMYRF settings besides dense (default: {' / '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--name", default="pretrained_is", help="results file stem")
    add_cuda_options(parser)
    return parser


def main():
    parser = build_parser()
    args = parse_device_args(parser)
    device = torch.device(args.device)
    G = load_generator(args.ckpt, device=device)
    blocks = [m for m in G.modules() if isinstance(m, SelfAttention)]
    if not blocks:
        parser.error(f"{args.ckpt}: G has no attention block, so there is nothing to swap")
    cfg = MetricsConfig(n_samples=args.n, batch_size=args.batch_size, names=["isc"], weights_path=args.weights_path)
    extractor, _ = prepare_scoring(cfg, None, G.config.resolution, device)
    z = latents(args.n, G.config.dim_z, seed=0)
    y = labels(args.n, G.config.n_classes, seed=0)
    rows = []
    for setting in [None, *args.settings]:
        for block in blocks:
            block.set_config(block_config(block, setting))
        start = time.perf_counter()
        scores = evaluate_images(cfg, render(G, z, y, args.batch_size, to_cpu=False), None, extractor, device)
        synchronize(device)
        rows.append({"attention": "dense" if setting is None else f"{setting[0]} {setting[1]}x{setting[2]}",
                     "describe": blocks[0].config.describe(), "score_share": score_share(blocks, setting),
                     **scores, "seconds": time.perf_counter() - start})
        rows[-1]["is_share"] = rows[-1]["is_mean"] / rows[0]["is_mean"]
        print(rows[-1], flush=True)
    table = markdown_table(rows, [("attention", "attention"), ("score_share", "scores vs dense"), ("is_mean", "IS"),
                                  ("is_std", "IS std"), ("is_share", "IS vs dense"), ("seconds", "s")])
    stem = write_results(args.name, device, rows, table, {"ckpt": str(args.ckpt), "n": args.n,
                                                          "blocks": [b.describe_place() for b in blocks]})
    print(table)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
