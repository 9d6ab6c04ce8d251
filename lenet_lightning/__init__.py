"""LeNet-5 on CIFAR-10 with PyTorch Lightning: model, training system and reusable data.

The names below are imported on first use, so that ``lenet_lightning.model``,
``lenet_lightning.batches`` and ``lenet_lightning.sources`` can be used without
importing Lightning (several seconds): a plain PyTorch loop needs only those.
Inference needs no Lightning either: ``lenet_lightning.checkpoints`` reads a
checkpoint, ``lenet_lightning.inference`` turns it into a model, and
``lenet_lightning.predict`` classifies image files with it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lenet_lightning.cifar10 import CLASSES as CIFAR10_CLASSES
    from lenet_lightning.cifar10 import MEAN as CIFAR10_MEAN
    from lenet_lightning.cifar10 import STD as CIFAR10_STD
    from lenet_lightning.data import CIFAR10DataModule
    from lenet_lightning.model import LeNet5
    from lenet_lightning.module import LeNetClassifier

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10DataModule", "LeNet5", "LeNetClassifier"]
try:
    __version__ = version("lenet-lightning")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> (module, name there).
_HOMES = {
    "CIFAR10_CLASSES": ("lenet_lightning.cifar10", "CLASSES"),
    "CIFAR10_MEAN": ("lenet_lightning.cifar10", "MEAN"),
    "CIFAR10_STD": ("lenet_lightning.cifar10", "STD"),
    "CIFAR10DataModule": ("lenet_lightning.data", "CIFAR10DataModule"),
    "LeNet5": ("lenet_lightning.model", "LeNet5"),
    "LeNetClassifier": ("lenet_lightning.module", "LeNetClassifier"),
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        module, attribute = _HOMES[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'lenet_lightning' has no attribute {name!r}")
