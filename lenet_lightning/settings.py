"""A run's settings, derived from the constructors: names, types, defaults, help, recipes, one record per run.

The arguments of :class:`LeNetClassifier` and :class:`CIFAR10DataModule` (and the
fields of :class:`RunOptions`, the Trainer's side) *are* the settings: their defaults
are the default recipe, their docstrings the help text, their annotations the
types. ``train.py``'s flags, its ``--config`` files, LightningCLI and checkpoints
all go through this table, and the classes validate every value themselves.

A run is resolved in this order, later layers winning: the defaults, the recipe,
the settings a resumed checkpoint holds, a ``--config`` file's changes, the flags
given now. Where the resolved settings are written and read back (``config.yaml``,
checkpoints) is :mod:`lenet_lightning.records`.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from lightning.pytorch.strategies import StrategyRegistry

from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import SettingError, UserError
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.validation import check_bool, check_choice, check_float, check_int, check_path

RecipeName = Literal["default", "fast", "tutorial"]
AcceleratorName = Literal["auto", "cpu", "gpu", "cuda", "mps"]
PrecisionName = Literal["32-true", "64-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true"]
PRECISIONS: tuple[str, ...] = get_args(PrecisionName)
PRECISION_ALIASES = {"32": "32-true", "64": "64-true", "16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out: the settings that belong to the Trainer and its callbacks.

    Args:
        recipe: named recipe the other settings start from; given settings change it.
        max_epochs: epochs to train.
        ema_decay: exponential moving average of the weights, per step; validation, test and checkpoints use it
            (0: off).
        accelerator: cpu, gpu, mps or auto.
        devices: devices per node: a number, a list like 0,1, or auto.
        strategy: auto, ddp, ddp_spawn, ...
        num_nodes: nodes for multi-node DDP.
        precision: numeric precision of training and evaluation.
        deterministic: deterministic algorithms (reproducible to the last bit on the same machine).
        log_dir: runs go to <log_dir>/<name>/version_<n>/.
        name: experiment name.
        checkpoint_every_n_steps: also write last.ckpt every N steps (0: once per epoch).
        log_every_n_steps: write per-step scalars (train/loss, train/lr) every N steps.
    """

    recipe: RecipeName = "default"
    max_epochs: int = 30
    ema_decay: float = 0.0
    accelerator: AcceleratorName = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: PrecisionName = "32-true"
    deterministic: bool = True
    log_dir: str = "logs"
    name: str = "lenet"
    checkpoint_every_n_steps: int = 0
    log_every_n_steps: int = 50

    def __post_init__(self) -> None:
        check_choice("recipe", self.recipe, RECIPES)
        check_int("max_epochs", self.max_epochs, minimum=1)
        check_float("ema_decay", self.ema_decay, minimum=0, below=1)
        check_choice("accelerator", self.accelerator, get_args(AcceleratorName))
        check_devices(self.devices)
        check_strategy(self.strategy)
        check_int("num_nodes", self.num_nodes, minimum=1)
        check_choice("precision", self.precision, PRECISIONS)
        check_bool("deterministic", self.deterministic)
        check_path("log_dir", self.log_dir)
        check_path("name", self.name)
        if "/" in self.name or self.name in (".", ".."):
            raise SettingError("name", f"must be a plain folder name, got {self.name!r}")
        check_int("checkpoint_every_n_steps", self.checkpoint_every_n_steps, minimum=0)
        check_int("log_every_n_steps", self.log_every_n_steps, minimum=1)


def check_strategy(strategy: Any) -> None:
    """A strategy Lightning knows by name (else the Trainer fails later, with a traceback).

    XLA strategies need TPUs, which this project does not support.
    """
    known = ["auto", *(name for name in StrategyRegistry.available_strategies() if not re.search("xla|tpu", name))]
    if strategy not in known:
        raise SettingError("strategy", f"must be auto, ddp, ddp_spawn or another of Lightning's, got {strategy!r}")


def check_devices(devices: Any) -> None:
    """``auto``, a positive count, ``-1`` (all), or a comma-separated list of device indices."""
    text = str(devices) if isinstance(devices, int) and not isinstance(devices, bool) else devices
    if not isinstance(text, str) or not re.fullmatch(r"auto|-1|[1-9]\d*|\d+(,\d+)*,?", text):
        raise SettingError("devices", f"must be auto, a number of devices or a list like 0,1, got {devices!r}")


@dataclass(frozen=True)
class Setting:
    """One setting: which constructor takes it, its type, default and help."""

    name: str
    owner: str  # "run", "model" or "data"
    annotation: Any
    default: Any
    help: str


# Constructor arguments that are for Python callers only: objects, or values train.py derives itself.
PYTHON_ONLY = {"class_names", "num_classes", "mean", "std", "augmentation", "device", "pin_memory"}


def signature_settings(target: Callable[..., Any], owner: str, docstring: str | None) -> list[Setting]:
    """The settings a constructor (or dataclass) takes, in signature order, with help from its docstring."""
    hints = typing.get_type_hints(target)
    helps = docstring_args(docstring or "")
    return [
        Setting(name, owner, hints[name], parameter.default, helps.get(name, ""))
        for name, parameter in inspect.signature(target).parameters.items()
        if name not in PYTHON_ONLY and name != "self"
    ]


def docstring_args(docstring: str) -> dict[str, str]:
    """The ``Args:`` section of a Google-style docstring: name -> its text on one line, markup removed."""
    args: dict[str, str] = {}
    section = inspect.cleandoc(docstring).partition("Args:\n")[2]
    name = None
    for line in section.splitlines():
        match = re.match(r"    (\w+): (.*)", line)
        if match:
            name, args[match[1]] = match[1], match[2]
        elif line.startswith("        ") and name:
            args[name] += " " + line.strip()
        elif line.strip():
            break
    return {
        key: text.replace("``", "").replace(":func:", "").replace("`", "").rstrip(".") for key, text in args.items()
    }


SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        *signature_settings(RunOptions, "run", RunOptions.__doc__),
        *signature_settings(LeNetClassifier.__init__, "model", LeNetClassifier.__doc__),
        *signature_settings(CIFAR10DataModule.__init__, "data", CIFAR10DataModule.__doc__),
    )
}
DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in SETTINGS.items()}
MODEL_KEYS = tuple(name for name, setting in SETTINGS.items() if setting.owner == "model")
DATA_KEYS = tuple(name for name, setting in SETTINGS.items() if setting.owner == "data")
RUN_KEYS = tuple(name for name, setting in SETTINGS.items() if setting.owner == "run")

# Each named recipe as its differences from the constructors' defaults (which are the default recipe).
RECIPES: dict[str, dict[str, Any]] = {
    # Exact LeNet-5, 30 epochs, every value chosen on the validation split (docs/training.md).
    "default": {},
    # The tutorial's accuracy in the least wall time on 2 CPU cores (docs/training.md).
    "fast": {"max_epochs": 4, "lr": 0.05, "label_smoothing": 0.0, "hflip": False, "translate": 0},
    # PyTorch's "Training a classifier" tutorial, exactly.
    "tutorial": {
        "max_epochs": 5,
        "batch_size": 4,
        "lr": 0.001,
        "nesterov": False,
        "weight_decay": 0.0,
        "label_smoothing": 0.0,
        "scheduler": "none",
        "normalization": "half",
        "hflip": False,
        "translate": 0,
        "decay_biases": True,
    },
}

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
    "download",
    "download_url",
    "num_workers",
    "eval_batch_size",
    "log_dir",
    "name",
    "checkpoint_every_n_steps",
    "log_every_n_steps",
    "tta",
)


def recipe_settings(recipe: str) -> dict[str, Any]:
    """Every setting of the named recipe."""
    check_choice("recipe", recipe, RECIPES)
    return {**DEFAULTS, **RECIPES[recipe], "recipe": recipe}


def resolve_settings(
    given: Mapping[str, Any], saved: Mapping[str, Any] | None = None, config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Defaults < recipe < ``saved`` (a resumed checkpoint's) < ``config`` (a file) < ``given`` (flags).

    ``given`` may hold other keys (they are ignored) and ``None`` for "not given". A new run's
    recipe is the one given, else the config file's, else ``default``; a config file
    contributes only its changes from its own recipe, so ``--config fast.yaml --recipe
    default`` is the default recipe (plus whatever fast.yaml changed from fast), labelled so.
    """
    flags = {key: value for key, value in given.items() if value is not None and key in SETTINGS}
    config = {key: value for key, value in (config or {}).items() if key in SETTINGS}
    if saved is not None:
        settings = {**recipe_settings(saved.get("recipe", "default")), **saved, **config}
    else:
        recipe = flags.get("recipe", config.get("recipe", "default"))
        settings = {**recipe_settings(recipe), **changes_from_recipe(config)}
    settings.update(flags)
    settings["precision"] = PRECISION_ALIASES.get(str(settings["precision"]), settings["precision"])
    if isinstance(settings["devices"], int) and not isinstance(settings["devices"], bool):
        settings["devices"] = str(settings["devices"])
    return {key: settings[key] for key in SETTINGS}


def changes_from_recipe(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that differ from their recipe's (the recipe named in ``settings``, else default)."""
    recipe = recipe_settings(settings.get("recipe", "default"))
    return {key: value for key, value in settings.items() if key != "recipe" and value != recipe.get(key)}


def validate_settings(settings: Mapping[str, Any]) -> RunOptions:
    """Check every value where it is used: the run options here, the rest by the classes' own checks."""
    options = run_options(settings)
    LeNetClassifier(**model_arguments(settings))
    CIFAR10DataModule(**data_arguments(settings))
    return options


def run_options(settings: Mapping[str, Any]) -> RunOptions:
    return RunOptions(**{key: settings[key] for key in RUN_KEYS})


def model_arguments(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: settings[key] for key in MODEL_KEYS}


def data_arguments(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {key: settings[key] for key in DATA_KEYS}


def check_resume_changes(saved: Mapping[str, Any], requested: Mapping[str, Any]) -> None:
    """Refuse settings that a resumed run cannot change (``requested``: flags and config file, ``None``: not given)."""
    changed = [
        key
        for key, value in requested.items()
        if value is not None and key in SETTINGS and key not in CHANGEABLE_ON_RESUME and key in saved
        if str(value) != str(saved[key])
    ]
    if changed:
        given = ", ".join(f"{flag(key)} {requested[key]} (checkpoint: {saved[key]})" for key in changed)
        raise UserError(
            f"cannot change {given} when resuming: they shape the schedule and the data order; start a new run "
            "instead, e.g. --config <run folder>/config.yaml with the new values"
        )


def flag(key: str) -> str:
    """The command-line flag of a settings key: ``max_epochs`` -> ``--max-epochs``."""
    return "--" + key.replace("_", "-")


def annotation_choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a ``Literal[...]`` annotation, else ``None``."""
    return get_args(annotation) if get_origin(annotation) is Literal else None


def annotation_types(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``int | float`` -> ``(int, float)``), ``None`` left out."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(member for member in get_args(annotation) if member is not type(None))
    return (annotation,)
