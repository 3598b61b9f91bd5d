#!/usr/bin/env python
"""Import a BigGAN-PyTorch generator (G_ema.pth) for sample.py and SMYRF (`python import_biggan.py --help`)."""
from biggan_smyrf.inference.biggan_pytorch import main

if __name__ == "__main__":
    main()
