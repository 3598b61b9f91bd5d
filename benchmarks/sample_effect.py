"""The image-level effect of approximate attention: one trained G sampled with dense attention,
the paper's SMYRF recipe and our default SMYRF, on the same latents.

    python -m benchmarks.sample_effect --ckpt checkpoints/<run>/last.ckpt
    python -m benchmarks.sample_effect --ckpt ... --weights_path /path/to/weights-inception-2015-12-05-6726825d.pth \
        --data_root /path/to/celeba_hq    # + FID / KID of every variant against the data

Columns: pixel error of each SMYRF variant against the dense images of the same latents
(‖x − x_dense‖ / ‖x_dense‖ over [0, 1] pixels, and PSNR in dB), and, when Inception weights are
given, torch-fidelity FID/KID of each variant against the real data through the same metrics code
as training (`biggan_smyrf.metrics`). Without weights (this offline machine) the FID columns are
left empty rather than faked. Attention settings: 4 hashes, q_cluster_size = N / 8 of the
smallest attention block (the paper's 2048 for one block at 128 px), so it fits every block.
One G, swapped between the variants (`biggan_smyrf.models.attention`): same weights throughout.
"""
from __future__ import annotations


import torch

from benchmarks.common import benchmark_parser, markdown_table, parse_device_args, write_results  # noqa: E402

from biggan_smyrf.attention import AttentionConfig  # noqa: E402
from biggan_smyrf.inference import latents, load_generator  # noqa: E402
from biggan_smyrf.inference.sampling import labels, render  # noqa: E402
from biggan_smyrf.models import attention_blocks, using_attention  # noqa: E402


def variants(G) -> dict[str, AttentionConfig]:
    queries = min(block.n_queries for block in attention_blocks(G).values())
    q_cluster = max(1, queries // 8)
    return {
        "dense": AttentionConfig(kind="dense"),
        "smyrf paper": AttentionConfig.paper(n_hashes=4, q_cluster_size=q_cluster),
        "smyrf ours": AttentionConfig(kind="smyrf", n_hashes=4, q_cluster_size=q_cluster),
    }


def sample(G, config: AttentionConfig, n: int, seed: int, batch_size: int) -> torch.Tensor:
    z, y = latents(n, G.config.dim_z, seed), labels(n, G.config.n_classes, seed)
    with using_attention(G, config):
        return torch.cat(list(render(G, z, y, batch_size)))


def pixel_error(images: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    x, ref = images.double() / 255, reference.double() / 255
    mse = (x - ref).pow(2).mean().item()
    psnr = float("inf") if mse == 0 else -10 * torch.log10(torch.tensor(mse)).item()
    return ((x - ref).norm() / ref.norm()).item(), psnr


def fid_scorer(args, resolution: int):
    """A function uint8 images -> FID/KID against the data, or None without weights."""
    if not args.weights_path:
        return None
    from biggan_smyrf.metrics import MetricsConfig, evaluate_images, prepare_scoring

    cfg = MetricsConfig(n_samples=args.n, batch_size=args.batch_size, weights_path=args.weights_path, names=["fid", "kid"])
    device = torch.device("cpu")
    extractor, real = prepare_scoring(cfg, args.data_root, resolution, device)
    return lambda images: evaluate_images(cfg, images.split(cfg.batch_size), real, extractor, device)


def build_parser():
    parser = benchmark_parser(__doc__, device=False)
    parser.add_argument("--ckpt", required=True, help="a trained checkpoint (any attention; it is swapped)")
    parser.add_argument("--n", type=int, default=64, help="images per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--weights_path", help="Inception weights file: adds FID/KID columns")
    parser.add_argument("--data_root", help="real images for FID (default: the built-in demo faces)")
    parser.add_argument("--name", default="sample_effect")
    return parser


def main():
    args = parse_device_args(build_parser())

    G = load_generator(args.ckpt)
    configs = variants(G)
    images = {name: sample(G, cfg, args.n, args.seed, args.batch_size) for name, cfg in configs.items()}
    score = fid_scorer(args, G.config.resolution)
    rows = []
    for name, cfg in configs.items():
        error, psnr = pixel_error(images[name], images["dense"])
        row = {"variant": name, "attention": cfg.describe(), "pixel_error": error, "psnr_db": psnr}
        if score:
            row.update(score(images[name]))
        rows.append(row)
        print(row, flush=True)
    columns = [("variant", "variant"), ("attention", "attention"), ("pixel_error", "pixel error vs dense"),
               ("psnr_db", "PSNR vs dense (dB)"), ("fid", "FID"), ("kid_mean", "KID")]
    table = markdown_table(rows, columns)
    print(table)
    meta = {"ckpt": args.ckpt, "n": args.n, "seed": args.seed, "resolution": G.config.resolution,
            "fid": "computed" if score else "no Inception weights given: FID not computed"}
    stem = write_results(args.name, torch.device("cpu"), rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
