"""Triton kernels of the attention routes, and what can be known of them without importing triton.

triton is optional: this module imports it only inside `triton_available()`, and nothing outside
this package imports the modules below it before that check (or the choice of kernel "triton")
has passed, so the library works where triton is not installed. Under it:
- `blocks.py`: the building blocks both kinds of kernel share (fp32 dots, online softmax, block
  sizes, the input check, FlashAttention's row-dot D), and whether the interpreter is on;
- `clusters.py`: attention inside gathered clusters (G, L, d), the "triton" cluster kernel of
  `cluster_attention.py` (SMYRF's hub round on CUDA);
- `rounds.py`: SMYRF's hashed rounds read through the sort permutation and merged in place, the
  kernels of `cuda_route.py`;
- `summaries.py`: SMYRF's summary keys written after the keys, and their gradients folded back
  into the keys' (two launches each);
- `hashing.py`: SMYRF's clustering (`hashing.cluster_orders`) in a few launches: XBOX+ and the
  projections fused into one kernel per k-d level, one sort each;
- `hub.py`: the hub keys' selection (the attention mass of sampled queries on every key, two
  launches) and their gradients added at their rows;
- `buffers.py`, `combine.py`: the CUDA route's inputs laid out and gradients cut back (one launch
  each), and its rounds combined into the output (one launch).
"""
from __future__ import annotations

import functools
import importlib

import torch

TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Largest head dim of the triton kernels: one program holds a block of rows at the padded width in
# registers, and past 256 they would spill (BigGAN: d_qk = C/8, d_v = C/2, 12 and 48 at ch 96, 128 px).
TRITON_MAX_HEAD_DIM = 256


@functools.cache
def triton_available() -> bool:
    try:
        importlib.import_module("triton")
    except ImportError:
        return False
    return True
