"""Validation cost: our in-training metrics pipeline vs standalone torch-fidelity, per 1,000 images.

    python -m benchmarks.validation --weights /path/to/weights-inception-2015-12-05-6726825d.pth
    python -m benchmarks.validation            # offline: same architecture, random weights (same cost)
    python -m benchmarks.validation --device cuda --n 10000 --attention-resolution 128 \
        --kinds smyrf dense --no-standalone --name validation_10k   # the paper config's validation

Times, on the same G_ema samples (fixed latents) and the same real images:
- real statistics, once (ours: extract + cache; later runs load them);
- ours: render n images (uint8, no files) + extract Inception features + FID/IS/KID, as the
  validation loop does on one rank;
- standalone: the same render, then `torch_fidelity.calculate_metrics` on those images with the
  real statistics cached by torch-fidelity itself (its own cache, warmed by an untimed call).
Model: a freshly initialised G (speed does not depend on training) at --resolution / --ch, attention
at --attention-resolution. --kinds: one "ours" row per attention kind G_ema is scored with (the
config's eval kind and its `compare` kind: a validation pays for both). On CUDA, "ours" renders and
extracts on the GPU as train.py does; the standalone comparison runs torch-fidelity with cuda=True.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch_fidelity

from benchmarks.common import (  # noqa: E402
    add_cuda_options, benchmark_parser, markdown_table, parse_device_args, write_results)

from biggan_smyrf.data import ImageDataModule  # noqa: E402
from biggan_smyrf.inference.sampling import labels, latents, render  # noqa: E402
from biggan_smyrf.metrics import (  # noqa: E402
    MetricsConfig, UInt8Images, create_extractor, evaluate_images, load_or_compute_real_stats)
from biggan_smyrf.metrics.random_weights import write_random_inception_weights  # noqa: E402
from biggan_smyrf.models import Generator, GeneratorConfig, attention_blocks, using_attention  # noqa: E402



def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def build_parser() -> argparse.ArgumentParser:
    parser = benchmark_parser(__doc__)
    parser.add_argument("--weights", help="Inception weights file (default: random weights, same cost)")
    parser.add_argument("--n", type=int, default=64, help="generated and real images")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--ch", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attention-resolution", type=int, default=64)
    parser.add_argument("--kinds", nargs="+", default=["dense"], choices=["dense", "smyrf"],
                        help="attention kinds G is scored with, one timed row each (default: dense)")
    add_cuda_options(parser)
    parser.add_argument("--no-standalone", action="store_true", help="skip the torch-fidelity comparison")
    parser.add_argument("--name", default="validation", help="results file stem")
    return parser


def main():
    args = parse_device_args(build_parser())
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        weights = args.weights
        if weights is None:
            weights = str(write_random_inception_weights(Path(tmp) / "inception.pth"))
        cfg = MetricsConfig(n_samples=args.n, n_real=args.n, batch_size=args.batch_size,
                            kid_subset_size=args.n, weights_path=weights, cache_dir=str(Path(tmp) / "stats"))
        data = ImageDataModule(resolution=args.resolution, batch_size=1, num_workers=0)
        G = Generator(GeneratorConfig(resolution=args.resolution, ch=args.ch, attention_resolutions=[args.attention_resolution],
                                      dim_z=140 if args.resolution == 256 else 120)).eval().to(device)
        for block in attention_blocks(G).values():
            block.gamma.data.fill_(1.0)  # attention shapes the images, so the kinds' scores differ
        z, y = latents(args.n, G.config.dim_z, 0), labels(args.n, G.config.n_classes, 0)
        extractor = create_extractor(cfg, device, weights)
        real, real_s = timed(lambda: load_or_compute_real_stats(
            cfg, data.fingerprint, args.resolution, lambda: data.uint8_batches(args.batch_size),
            len(data.images), device, extractor=extractor, weights_path=weights))
        ours_rows = []
        for kind in args.kinds:
            with using_attention(G, kind):
                ours, ours_s = timed(lambda: evaluate_images(
                    cfg, render(G, z, y, args.batch_size, to_cpu=False), real, extractor, device))
            ours_rows.append({"what": f"ours: render + features + FID/IS/KID, {kind} attention@{args.attention_resolution}",
                              "seconds": ours_s, "per_1000_images_s": ours_s * 1000 / args.n, "fid": ours["fid"]})
        n_real = min(args.n, len(data.images))  # the built-in faces are 100 images
        rows = [{"what": f"real statistics of {n_real} images (once, then cached)", "seconds": real_s,
                 "per_1000_images_s": real_s * 1000 / n_real}, *ours_rows]
        if args.no_standalone:
            save(args, device, rows, None, None)
            return

        real_images = UInt8Images(torch.from_numpy(data.images[: args.n]).permute(0, 3, 1, 2).contiguous())
        options = dict(input2=real_images, input2_cache_name="validation-bench-real", cache_root=str(Path(tmp) / "tf"),
                       cuda=device.type == "cuda", fid=True, isc=True, kid=True, kid_subset_size=args.n,
                       isc_splits=min(10, args.n // 2), batch_size=args.batch_size,
                       feature_extractor_weights_path=weights, verbose=False, save_cpu_ram=True)
        with using_attention(G, args.kinds[0]):
            fake_once = torch.cat(list(render(G, z, y, args.batch_size)))
            torch_fidelity.calculate_metrics(input1=UInt8Images(fake_once), **options)  # warms its real-stats cache

            def standalone():
                fake = torch.cat(list(render(G, z, y, args.batch_size)))
                return torch_fidelity.calculate_metrics(input1=UInt8Images(fake), **options)

            theirs, theirs_s = timed(standalone)
        rows.append({"what": f"standalone torch-fidelity (same render, {args.kinds[0]} attention)", "seconds": theirs_s,
                     "per_1000_images_s": theirs_s * 1000 / args.n, "fid": theirs[torch_fidelity.KEY_METRIC_FID]})
    save(args, device, rows, ours_rows[0]["seconds"], theirs_s)


def save(args, device: torch.device, rows: list[dict], ours_s, theirs_s) -> None:
    table = markdown_table(rows, [("what", "step"), ("seconds", f"seconds ({args.n} images)"),
                                  ("per_1000_images_s", "s per 1,000 images"), ("fid", "FID (random weights: cost only)")])
    ours_total = sum(r["seconds"] for r in rows if r["what"].startswith("ours"))
    table += (f"\n\nOne validation ({', '.join(args.kinds)}): {ours_total:.1f} s for {args.n} images per kind. "
              f"G{args.resolution} ch {args.ch}, attention at {args.attention_resolution}, "
              f"{'given' if args.weights else 'random'} Inception weights, batch {args.batch_size}.")
    meta = {"n": args.n, "resolution": args.resolution, "ch": args.ch, "weights": "given" if args.weights else "random",
            "kinds": args.kinds, "validation_s": ours_total}
    if theirs_s is not None:
        table += f" Ours / standalone ({args.kinds[0]}) = {ours_s / theirs_s:.2f}."
        meta["ratio_ours_over_standalone"] = ours_s / theirs_s
    print(table)
    stem = write_results(args.name, device, rows, table, meta)
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
