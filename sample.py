#!/usr/bin/env python
"""Generate images from a trained checkpoint with dense or SMYRF attention (`python sample.py --help`)."""
from biggan_smyrf.inference.cli import main

if __name__ == "__main__":
    main()
