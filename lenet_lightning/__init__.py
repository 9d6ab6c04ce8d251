"""LeNet-5 on CIFAR-10 with PyTorch Lightning: model, training system and reusable data.

The names below are imported on first use, so that ``lenet_lightning.model``,
``lenet_lightning.batches`` and ``lenet_lightning.sources`` can be used without
importing Lightning (several seconds): a plain PyTorch loop needs only those.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lenet_lightning.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
    from lenet_lightning.model import LeNet5
    from lenet_lightning.module import LeNetClassifier
    from lenet_lightning.sources import CIFAR10_CLASSES

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10DataModule", "LeNet5", "LeNetClassifier"]
__version__ = "0.2.0"

_HOMES = {
    "CIFAR10_CLASSES": "lenet_lightning.sources",
    "CIFAR10_MEAN": "lenet_lightning.data",
    "CIFAR10_STD": "lenet_lightning.data",
    "CIFAR10DataModule": "lenet_lightning.data",
    "LeNet5": "lenet_lightning.model",
    "LeNetClassifier": "lenet_lightning.module",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lenet_lightning' has no attribute {name!r}")
