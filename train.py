#!/usr/bin/env python
"""Train BigGAN with dense or SMYRF attention (LightningCLI; `python train.py --help`).

    python train.py --config configs/demo.yaml
    python train.py --config configs/celebahq128_smyrf.yaml --data.root /path/to/celeba_hq --run celeba128
    python train.py --config configs/celebahq128_smyrf.yaml --run celeba128 --ckpt_path last   # resume
"""
from biggan_smyrf.cli import main

if __name__ == "__main__":
    main()
