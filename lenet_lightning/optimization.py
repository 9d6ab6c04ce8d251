"""The recipe's building blocks, Lightning-free: optimizer, learning-rate schedule, initialisation.

``LeNetClassifier`` builds its training from these, and a plain PyTorch loop
(``benchmarks/``) can build the very same from a run's settings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn
from torch.optim import SGD, AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def build_optimizer(parameters: Iterable[Tensor], recipe: Mapping[str, Any]) -> Optimizer:
    """The optimizer a recipe names (keys as in ``LeNetClassifier``'s arguments).

    Without ``decay_biases`` (absent: decay everything) the biases form a second parameter
    group without weight decay: shrinking them towards 0 regularises nothing (a bias does not
    scale any input) and only shifts the activations.
    """
    groups: Iterable[Tensor] | list[dict[str, Any]] = parameters
    if not recipe.get("decay_biases", True):
        tensors = list(parameters)
        weights: dict[str, Any] = {"params": [p for p in tensors if p.ndim > 1]}
        biases: dict[str, Any] = {"params": [p for p in tensors if p.ndim <= 1], "weight_decay": 0.0}
        groups = [weights, biases]
    if recipe["optimizer"] == "adamw":
        return AdamW(groups, lr=recipe["lr"], weight_decay=recipe["weight_decay"])
    return SGD(
        groups,
        lr=recipe["lr"],
        momentum=recipe["momentum"],
        nesterov=recipe["nesterov"] and recipe["momentum"] > 0,
        weight_decay=recipe["weight_decay"],
    )


def build_scheduler(optimizer: Optimizer, recipe: Mapping[str, Any], total_steps: int) -> LRScheduler | None:
    """The per-step learning-rate schedule a recipe names, over ``total_steps`` steps."""
    if recipe["scheduler"] == "onecycle":
        # Momentum stays what --momentum says: cycling it would make that flag a lie.
        return OneCycleLR(
            optimizer,
            max_lr=recipe["lr"],
            total_steps=total_steps,
            pct_start=recipe["warmup_fraction"],
            cycle_momentum=False,
        )
    if recipe["scheduler"] == "cosine":
        warmup = max(1, round(recipe["warmup_fraction"] * total_steps))
        return LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup, total_steps))
    return None


def he_initialize(network: nn.Module) -> None:
    """Kaiming-normal weights (fan-in, for ReLU) and zero biases in every convolution and linear layer.

    PyTorch's default (Kaiming-uniform with a=sqrt(5)) gives each layer a third of the
    variance ReLU needs to keep signals at scale, so LeNet's outputs start near zero and the
    first epochs are spent growing them.
    """
    for layer in network.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear from 0 to 1 over ``warmup_steps``, then cosine to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
