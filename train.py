"""Train LeNet-5 on CIFAR-10: ``python train.py --help`` lists every flag.

The implementation lives in :mod:`lenet_lightning.cli` so that it is importable
and installed with the package (also as the ``lenet-lightning`` command).
"""

import sys

from lenet_lightning.cli import build_parser, main, run

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(run())
