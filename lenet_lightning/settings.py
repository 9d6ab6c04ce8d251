"""A run's settings in one place: defaults, recipes, how they merge, what values are allowed.

A run is described by one flat dictionary (``RUN_SETTINGS`` keys). It is
resolved in this order, later layers winning: the defaults, the recipe, the
settings a resumed checkpoint stored, a ``--config`` file, the flags given now.
The resolved settings are saved in every run folder as ``config.yaml`` and in
every checkpoint, so a run can be repeated (``--config``) or resumed with no flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

from lenet_lightning.errors import UserError

# Flags that are not part of a recipe, with their defaults.
DEFAULTS: dict[str, Any] = {
    "recipe": "default",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
    "num_nodes": 1,
    "precision": "32-true",
    "deterministic": True,
    "data_dir": "data",
    "cache_dir": None,
    "download_url": None,
    "num_workers": 0,
    "eval_batch_size": 1000,
    "val_size": 5000,
    "seed": 0,
    "log_dir": "logs",
    "name": "lenet",
    "checkpoint_every_n_steps": 0,
    "log_every_n_steps": 50,
    "tta": False,
}

RECIPES: dict[str, dict[str, Any]] = {
    # Exact LeNet-5, 30 epochs. Every value chosen on the validation split (5,000 images held
    # out of the training images, never the test split): best val/acc of 30-epoch runs, seed 0,
    # and seed 1 where candidates came within half a point (the table is in the README).
    # Batch 128 at peak lr 0.07 gave 72.74 / 73.34 % (seeds 0 / 1) against 72.30 / 71.18 for
    # batch 256 at 0.05; label smoothing 0 or 0.2, weight decay 2e-4 or 1e-3, 1-pixel shifts,
    # reflect padding, momentum 0.95 did worse, and so did lr 0.035 (72.56, seed 0) and 0.1
    # (73.04 / 71.56) at batch 128.
    "default": {
        "max_epochs": 30,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.07,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "scheduler": "onecycle",
        "warmup_fraction": 0.15,
        "normalization": "cifar10",
        "hflip": True,
        "translate": 2,
        "pad_mode": "zeros",
        "init": "default",
        "decay_biases": False,
        "ema_decay": 0.0,
    },
    # The tutorial's accuracy in the least wall time on 2 CPU cores. Chosen on the validation
    # split (3 epochs unless said): peak lr 0.02 / 0.05 / 0.1 / 0.2 with He init gave 54.5 /
    # 58.2 / 50.8 / 48.3 % val accuracy; PyTorch's init 59.5 (He: 58.2, 4 epochs 58.2); flips
    # 59.5 (no gain, left out); PyTorch's init and 4 epochs 60.3 % (test 61.2 %).
    "fast": {
        "max_epochs": 4,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.0,
        "scheduler": "onecycle",
        "warmup_fraction": 0.15,
        "normalization": "cifar10",
        "hflip": False,
        "translate": 0,
        "pad_mode": "zeros",
        "init": "default",
        "decay_biases": False,
        "ema_decay": 0.0,
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
        "pad_mode": "zeros",
        "init": "default",
        "decay_biases": True,
        "ema_decay": 0.0,
    },
}

# Everything that describes a run (saved in its config.yaml and checkpoints).
RUN_SETTINGS = (*DEFAULTS, *RECIPES["default"])
# The arguments of LeNetClassifier and of CIFAR10DataModule among them.
MODEL_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "label_smoothing",
    "scheduler",
    "warmup_fraction",
    "init",
    "decay_biases",
    "tta",
)
DATA_KEYS = (
    "data_dir",
    "batch_size",
    "eval_batch_size",
    "num_workers",
    "val_size",
    "seed",
    "normalization",
    "hflip",
    "translate",
    "pad_mode",
    "cache_dir",
    "download_url",
)

# What may differ when a run is resumed: where and how it runs, not what it computes. Everything
# else (the recipe, epochs, batch size, seed, split) shapes the schedule or the data order.
CHANGEABLE_ON_RESUME = (
    "accelerator",
    "devices",
    "strategy",
    "num_nodes",
    "precision",
    "deterministic",
    "data_dir",
    "cache_dir",
    "download_url",
    "num_workers",
    "eval_batch_size",
    "log_dir",
    "name",
    "checkpoint_every_n_steps",
    "log_every_n_steps",
    "tta",
)

# Lightning's --precision values, each either supported here or refused with what to use instead.
PRECISIONS = ("32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true")
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}
MAX_SEED = 2**32 - 1  # what NumPy (seeded by Lightning's seed_everything) accepts


def resolve_settings(
    given: Mapping[str, Any], saved: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults < recipe < ``saved`` (a resumed checkpoint's) < ``config`` (a file) < ``given`` (flags).

    ``given`` may hold other keys (they are ignored) and ``None`` for "not given".
    """
    layers = [dict(saved or {}), dict(config or {}), {k: v for k, v in given.items() if v is not None}]
    layers = [{k: v for k, v in layer.items() if k in RUN_SETTINGS} for layer in layers]
    recipe = next((layer["recipe"] for layer in reversed(layers) if "recipe" in layer), DEFAULTS["recipe"])
    if recipe not in RECIPES:
        raise UserError(f"unknown recipe '{recipe}': use one of {', '.join(RECIPES)}")
    settings = {**DEFAULTS, **RECIPES[recipe]}
    for layer in layers:
        settings.update(layer)
    settings["recipe"] = recipe
    settings["precision"] = PRECISION_ALIASES.get(str(settings["precision"]), str(settings["precision"]))
    settings["devices"] = str(settings["devices"])
    return settings


def check_resume_changes(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Refuse settings that a resumed run cannot change (``requested``: flags and config file, ``None``: not given)."""
    changed = [
        key
        for key, value in requested.items()
        if value is not None and key in RUN_SETTINGS and key not in CHANGEABLE_ON_RESUME and key in saved
        if str(value) != str(saved[key])
    ]
    if changed:
        given = ", ".join(f"{flag(key)} {requested[key]} (checkpoint: {saved[key]})" for key in changed)
        raise UserError(
            f"cannot change {given} when resuming: they shape the schedule and the data order; start a new run "
            "instead, e.g. --config <run folder>/config.yaml with the new values"
        )


def check_numbers(settings: Mapping[str, Any]) -> None:
    """Reject run settings no run can use (one line naming the flag and what it needs)."""
    minimums = {"max_epochs": 1, "num_nodes": 1, "log_every_n_steps": 1, "checkpoint_every_n_steps": 0}
    for key, minimum in minimums.items():
        if settings[key] < minimum:
            raise UserError(f"{flag(key)} must be at least {minimum}, got {settings[key]}")
    if not 0 <= settings["ema_decay"] < 1:
        raise UserError(f"--ema-decay must be in [0, 1) (0: no weight averaging), got {settings['ema_decay']}")
    if not 0 <= settings["seed"] <= MAX_SEED:
        raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {settings['seed']}")


def check_hardware(settings: Mapping[str, Any]) -> None:
    """Fail early, in one line, on hardware requests this machine cannot meet."""
    accelerator, precision = settings["accelerator"], settings["precision"]
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("--accelerator gpu: PyTorch sees no CUDA GPU here; use --accelerator cpu (or auto)")
    uses_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    check_precision(precision, uses_cpu)
    devices = str(settings["devices"])
    if uses_cpu and devices != "auto" and not (devices.isdigit() and int(devices) > 0):
        raise UserError(f"--devices {devices}: on CPU pass a number of processes (1 or more) or auto")
    if uses_cpu and accelerator == "auto" and devices != "auto" and int(devices) > 1:
        raise UserError(
            f"--devices {devices}: PyTorch sees no CUDA GPU here; to train with {devices} CPU processes (DDP) pass "
            f"--accelerator cpu --devices {devices}, else leave --devices out"
        )
    if not uses_cpu and accelerator != "mps" and devices.isdigit() and int(devices) > torch.cuda.device_count():
        raise UserError(
            f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) here; pass --devices "
            f"{max(1, torch.cuda.device_count())} or fewer"
        )


def check_precision(precision: str, uses_cpu: bool) -> None:
    """Refuse precisions this project or this machine cannot train with, naming what to use."""
    if precision.startswith("transformer-engine"):
        raise UserError(
            f"--precision {precision} is for NVIDIA Transformer Engine layers, which LeNet-5 has none of: "
            "use bf16-mixed (or 16-mixed)"
        )
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision}: use one of {', '.join(PRECISIONS)}")
    if uses_cpu and precision.startswith("16"):
        raise UserError(f"--precision {precision} needs a GPU; on CPU use --precision bf16-mixed, bf16-true or 32-true")
    if not uses_cpu and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise UserError(f"--precision {precision}: this GPU has no bfloat16 support; use --precision 16-mixed")


def flag(key: str) -> str:
    """The command-line flag of a settings key: ``max_epochs`` -> ``--max-epochs``."""
    return "--" + key.replace("_", "-")


def load_config(path: Path) -> dict[str, Any]:
    """Read a YAML file of settings (a run's ``config.yaml``), refusing keys no run knows."""
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UserError(f"cannot read --config '{path}' ({error.strerror}): pass a run's config.yaml") from None
    except yaml.YAMLError as error:
        raise UserError(
            f"--config '{path}' is not valid YAML ({str(error).splitlines()[0]}): fix or regenerate it"
        ) from None
    if not isinstance(loaded, dict):
        raise UserError(f"--config '{path}' holds no settings: pass a run's config.yaml (key: value per line)")
    unknown = sorted(set(loaded) - set(RUN_SETTINGS))
    if unknown:
        raise UserError(
            f"--config '{path}' has unknown settings {unknown}: remove them (known: see train.py --print-config)"
        )
    return loaded


def dump_config(settings: Mapping[str, Any]) -> str:
    """The settings as YAML, in ``RUN_SETTINGS`` order (what ``--config`` reads back)."""
    return yaml.safe_dump({key: settings[key] for key in RUN_SETTINGS}, sort_keys=False)
