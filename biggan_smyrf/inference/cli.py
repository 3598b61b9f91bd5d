"""`sample.py`: images from a checkpoint as a grid, numbered files, an .npz, or an interpolation.

    python sample.py --ckpt checkpoints/demo/last.ckpt --out samples/ --n 64 --grid
    python sample.py --ckpt ... --out samples/ --n 50000 --npz --batch-size 100 --device cuda
    python sample.py --ckpt ... --out samples/ --attention smyrf --n-hashes 4 --q-cluster-size 2048
    python sample.py --ckpt ... --out samples/ --interpolate 3 7 --steps 10 --slerp
"""
from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from biggan_smyrf.attention import AttentionChange, AttentionConfig
from biggan_smyrf.metrics import MetricsConfig, MissingWeightsError, evaluate_images, prepare_scoring
from biggan_smyrf.metrics.registry import METRICS
from biggan_smyrf.models import attention_configs

from biggan_smyrf.commands import script_command
from biggan_smyrf.errors import DEBUG_ENV, DEBUG_FLAG, debug_requested, reported_errors
from biggan_smyrf.parse_errors import OneLineErrorParser

from .checkpoint import class_index, load_generator
from .sampling import interpolate, labels, latents, render
from .standing_stats import accumulate_standing_stats

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
# One flag per SMYRF field of AttentionConfig (--n-hashes, --q-cluster-size, ...), from its table.
SMYRF_FIELDS = tuple(f for f in fields(AttentionConfig) if f.name != "kind")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           prog=script_command("sample.py"))
    p.add_argument("--ckpt", required=True, help="train.py checkpoint (last.ckpt, best) or an exported generator file")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--grid", action="store_true", help="one grid PNG, out/grid.png (default)")
    what.add_argument("--individual", action="store_true", help="out/000000.png, ... (resumable: existing files are kept)")
    what.add_argument("--npz", action="store_true", help="out/samples.npz: uint8 (n, H, W, 3) under 'arr_0', for FID tools")
    what.add_argument("--interpolate", nargs=2, type=int, metavar=("SEED_A", "SEED_B"), help="latent walk between two seeds' samples")
    what.add_argument("--metrics", action="store_true",
                      help="FID/IS/KID of --n samples against the real images of --data-root, to out/metrics.json")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--truncation", type=float, default=None, help="truncate z to [-t, t] (e.g. 0.5); default none")
    p.add_argument("--standing-stats", type=int, default=0, metavar="BATCHES",
                   help="first re-estimate G's batch-norm statistics from this many batches of --batch-size latents "
                        "drawn as the samples are (truncation, class): BigGAN's standing statistics; default off")
    p.add_argument("--class", dest="class_id", default=None,
                   help="class index, or class folder name of a run on data.classes=folders (class-conditional models)")
    p.add_argument("--nrow", type=int, default=None, help="images per grid row (default: about sqrt(n))")
    p.add_argument("--steps", type=int, default=8, help="interpolation steps, endpoints included")
    p.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    p.add_argument("--frames", action="store_true", help="interpolation as numbered frames instead of one strip")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--raw", action="store_true", help="use the raw G instead of G_ema")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or auto (default)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="32")
    p.add_argument(DEBUG_FLAG, action="store_true", help=f"show the traceback of any error (or set {DEBUG_ENV}=1)")
    metrics = p.add_argument_group("--metrics (same code as validation; real statistics cached in data/cache/metrics)")
    metrics.add_argument("--data-root", help="real images (folder or zip); default: the built-in demo faces")
    metrics.add_argument("--n-real", type=int, help="real images for the statistics (default: all)")
    metrics.add_argument("--weights-path", help="local Inception weights file (offline machines)")
    metrics.add_argument("--metric-names", nargs="+", choices=list(METRICS), default=list(METRICS),
                         help="metrics to compute (default all); isc alone needs no real images")
    attention = p.add_argument_group(
        "attention (default: what the run evaluated with; SMYRF starts from the run's own SMYRF settings, "
        "and each flag below changes one of them)")
    attention.add_argument("--attention", choices=["dense", "smyrf", "paper"],
                           help="dense, smyrf (the run's settings) or paper (the run's sizes, SMYRF exactly as published)")
    for f in SMYRF_FIELDS:
        attention.add_argument(f"--{f.name.replace('_', '-')}", help=f.metadata["help"], **flag_type(f.name))
    return p


def flag_type(name: str) -> dict:
    """argparse's type or choices for an AttentionConfig field (int, Optional[int] or a Literal)."""
    hint = typing.get_type_hints(AttentionConfig)[name]
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": list(options)}
    return {"type": int if hint is int or int in options else str}


def attention_override(args) -> Optional[AttentionChange]:
    """The change the flags ask for, applied by load_generator on top of the run's settings."""
    settings = {f.name: getattr(args, f.name) for f in SMYRF_FIELDS if getattr(args, f.name) is not None}
    if args.attention is None:
        if settings:
            raise ValueError("SMYRF settings given without --attention smyrf (or paper)")
        return None
    return AttentionChange.named(args.attention, **settings)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
    return device


def prepare_output(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write to output directory {path}: {err.strerror or err}") from err
    return path


def save_png(images: torch.Tensor, path: Path) -> None:
    Image.fromarray(images.permute(1, 2, 0).numpy()).save(path)


def grid_of(images: torch.Tensor, nrow: Optional[int]) -> torch.Tensor:
    return make_grid(images, nrow=nrow or max(1, round(len(images) ** 0.5)), padding=2)


def refuse_overwrite(path: Path, args) -> None:
    if path.exists() and not args.overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")


def run(args) -> list[Path]:
    if args.n < 1 or args.batch_size < 1:
        raise ValueError(f"--n and --batch-size must be >= 1, got {args.n}, {args.batch_size}")
    if args.standing_stats < 0 or (args.standing_stats and args.batch_size < 2):
        raise ValueError("--standing-stats needs a number of batches >= 0 and --batch-size >= 2 (batch statistics)")
    override = attention_override(args)
    device = pick_device(args.device)
    G = load_generator(args.ckpt, ema=not args.raw, device=device, attention=override)
    args.class_id = class_index(G, args.class_id)
    out = prepare_output(Path(args.out))
    dtype = PRECISIONS[args.precision]
    if args.standing_stats:
        accumulate_standing_stats(G, args.standing_stats, args.batch_size, args.seed, args.truncation, args.class_id, dtype)
        print(f"standing statistics from {args.standing_stats} x {args.batch_size} samples")
    elif args.truncation is not None:
        print("tip: truncated z no longer fits the batch-norm statistics of training; --standing-stats 16 "
              "re-estimates them for it (BigGAN's standing statistics)")
    c = G.config
    if args.interpolate:
        return write_interpolation(G, args, out)
    if args.metrics:
        return write_metrics(G, args, out, device)
    z = latents(args.n, c.dim_z, args.seed, args.truncation)
    y = labels(args.n, c.n_classes, args.seed, args.class_id)
    if args.individual:
        todo = [i for i in range(args.n) if args.overwrite or not (out / f"{i:06d}.png").exists()]
        written = []
        batches = render(G, z[todo], y[todo], args.batch_size, progress=True, dtype=dtype)
        for start, images in zip(range(0, len(todo), args.batch_size), batches):
            for index, image in zip(todo[start:], images):
                save_png(image, out / f"{index:06d}.png")
                written.append(out / f"{index:06d}.png")
        print(f"wrote {len(written)} images to {out} ({args.n - len(todo)} already there)")
        return written
    target = out / ("samples.npz" if args.npz else "grid.png")
    refuse_overwrite(target, args)
    images = torch.cat(list(render(G, z, y, args.batch_size, progress=True, dtype=dtype)))
    if args.npz:
        np.savez(target, images.permute(0, 2, 3, 1).numpy())
    else:
        save_png(grid_of(images, args.nrow), target)
    print(f"wrote {target}")
    return [target]


def write_metrics(G, args, out: Path, device: torch.device) -> list[Path]:
    target = out / "metrics.json"
    refuse_overwrite(target, args)
    cfg = MetricsConfig(n_samples=args.n, n_real=args.n_real, batch_size=args.batch_size, weights_path=args.weights_path,
                        names=args.metric_names)
    extractor, real = prepare_scoring(cfg, args.data_root, G.config.resolution, device)
    z = latents(args.n, G.config.dim_z, args.seed, args.truncation)
    y = labels(args.n, G.config.n_classes, args.seed, args.class_id)
    batches = render(G, z, y, args.batch_size, progress=True, dtype=PRECISIONS[args.precision], to_cpu=False)
    scores = evaluate_images(cfg, batches, real, extractor, device)
    report = {"checkpoint": str(args.ckpt), "n_samples": args.n, "n_real": real.n if real else None, "seed": args.seed,
              "truncation": args.truncation, "standing_stats": args.standing_stats, "attention": {k: v.describe() for k, v in attention_configs(G).items()},
              **scores}
    target.write_text(json.dumps(report, indent=1))
    print(json.dumps(scores))
    return [target]


def write_interpolation(G, args, out: Path) -> list[Path]:
    a, b = args.interpolate
    images = interpolate(G, a, b, args.steps, spherical=args.slerp, truncation=args.truncation,
                         class_id=args.class_id, batch_size=args.batch_size)
    stem = f"interp_{a}_{b}_{'slerp' if args.slerp else 'lerp'}"
    if args.frames:
        paths = [out / f"{stem}_{i:03d}.png" for i in range(len(images))]
        for path in paths:
            refuse_overwrite(path, args)
        for path, image in zip(paths, images):
            save_png(image, path)
    else:
        paths = [out / f"{stem}.png"]
        refuse_overwrite(paths[0], args)
        save_png(grid_of(images, args.nrow or len(images)), paths[0])
    print(f"wrote {len(paths)} file(s) to {out}")
    return paths


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Bad input ends in one `error:` line; --debug or BIGGAN_SMYRF_DEBUG=1 shows the traceback.
    debug, _ = debug_requested(argv)
    with reported_errors(debug, input_error_types=(MissingWeightsError,)):
        run(build_parser().parse_args(argv))
