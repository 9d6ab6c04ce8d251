"""The model a checkpoint describes, ready for inference: uint8 images in, class probabilities out.

Lightning-free: prediction, export and their users need only PyTorch. The class
names and the normalisation come from the checkpoint itself, so the model gives
what evaluation in this project gives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lenet_lightning.checkpoints import NET_PREFIX
from lenet_lightning.cifar10 import CLASSES, resolve_normalization
from lenet_lightning.errors import UserError
from lenet_lightning.model import LeNet5

# The names of the model's input and output in exported graphs.
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class ImageClassifier(nn.Module):
    """uint8 RGB images ``(N, 3, 32, 32)`` -> class probabilities ``(N, classes)``.

    The plain :class:`LeNet5` plus the normalisation it was trained with, held as
    buffers so that exports carry it in their graph. Scale and shift are computed
    exactly as :func:`lenet_lightning.batches.normalize` computes them, so the
    wrapper gives the same numbers as evaluation in this project.
    """

    scale: Tensor
    shift: Tensor

    def __init__(self, net: LeNet5, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, -1, 1, 1))
        self.register_buffer("shift", torch.tensor([-m / s for m, s in zip(mean, std, strict=True)]).view(1, -1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.float() * self.scale + self.shift).softmax(dim=1)


def classifier_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[ImageClassifier, tuple[str, ...]]:
    """The checkpoint's network with its normalisation, in eval mode, and its class names.

    ``checkpoint`` is one that :func:`~lenet_lightning.checkpoints.load_checkpoint` returned.
    The weights are the checkpoint's ``state_dict``: when training averages weights,
    Lightning stores the averaged ones there, so those are what gets exported.
    """
    class_names = checkpoint_class_names(checkpoint)
    net = LeNet5(len(class_names))
    state = checkpoint["state_dict"]
    net.load_state_dict(
        {key.removeprefix(NET_PREFIX): value for key, value in state.items() if key.startswith(NET_PREFIX)}
    )
    return ImageClassifier(net, *checkpoint_normalization(checkpoint)[1:]).eval(), class_names


def checkpoint_class_names(checkpoint: dict[str, Any]) -> tuple[str, ...]:
    """The checkpoint's class names; without any (checkpoints of earlier releases), its DataModule's: CIFAR-10's."""
    hparams = checkpoint["hyper_parameters"]
    if hparams.get("class_names"):
        return tuple(hparams["class_names"])
    num_classes = hparams.get("num_classes") or len(CLASSES)
    if "datamodule_hyper_parameters" in checkpoint and num_classes == len(CLASSES):
        return CLASSES
    return tuple(f"class_{i}" for i in range(num_classes))


def checkpoint_normalization(checkpoint: dict[str, Any]) -> tuple[str, tuple[float, ...], tuple[float, ...]]:
    """The normalisation a checkpoint was trained with: its name and per-channel mean and std."""
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    name = data.get("normalization", "cifar10")
    try:
        mean, std = resolve_normalization(name, data.get("mean"), data.get("std"))
    except (TypeError, ValueError) as error:
        raise UserError(
            f"the checkpoint's normalisation settings are unusable ({error}): use a checkpoint written by train.py"
        ) from None
    return (name if data.get("mean") is None else "custom"), mean, std
