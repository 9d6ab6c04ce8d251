"""LeNet-5 on CIFAR-10 with PyTorch Lightning: model, training system and reusable data."""

from lenet_lightning.data import CIFAR10_MEAN, CIFAR10_STD, CIFAR10DataModule
from lenet_lightning.model import LeNet5
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.sources import CIFAR10_CLASSES

__all__ = ["CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR10DataModule", "LeNet5", "LeNetClassifier"]
__version__ = "0.2.0"
