#!/usr/bin/env python
"""Generate images from a checkpoint — NOT IMPLEMENTED YET (tracked as its own issue).

Planned: grids, single images, interpolations, truncation and final metrics, with a dense/SMYRF
attention override. Until then, sample grids of a run are written by train.py to
checkpoints/<run>/samples/.
"""
import argparse
import sys


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    sys.exit("sample.py is a placeholder: sampling from checkpoints is not implemented yet (see --help).")


if __name__ == "__main__":
    main()
