"""``python -m lenet_lightning.lightning_cli``: the model and DataModule through Lightning's own CLI.

For users who configure runs with ``LightningCLI`` YAML files rather than
``train.py`` flags: ``fit``, ``validate``, ``test`` and ``predict`` subcommands,
``--print_config``, and the resolved config saved in each run's log folder. The
defaults are train.py's: the classes' own (the default recipe) and the Trainer
settings of :class:`~lenet_lightning.settings.RunOptions`, so ``fit --print_config``
shows the values ``train.py --print-config`` shows. Needs the ``cli`` extra
(``pip install -e ".[cli]"``, for ``jsonargparse``).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import SettingError
from lenet_lightning.extensions.console import console_callbacks
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.settings import MODEL_KEYS, RunOptions

RECIPE = RunOptions()
TRAINER_DEFAULTS = {
    "max_epochs": RECIPE.max_epochs,
    "precision": RECIPE.precision,
    "deterministic": RECIPE.deterministic,
    "log_every_n_steps": RECIPE.log_every_n_steps,
}


# LightningCLI's own default ("seed at random"), which here means: the DataModule's seed, as in train.py.
SEED_FROM_DATA = True


class LeNetCLI(LightningCLI):
    """``LightningCLI`` with train.py's defaults, whose model takes its class names from the DataModule."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse; unless ``--seed_everything`` was given, the DataModule's seed seeds everything, as in train.py."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")  # (self.subcommand is set only after parsing)
        config = self.config[subcommand] if subcommand else self.config
        if config.get("seed_everything") is SEED_FROM_DATA:
            config["seed_everything"] = config["data"]["seed"]

    @override
    def instantiate_classes(self) -> None:
        """As LightningCLI does; a class's refusal becomes a usage error naming ``--model.<x>`` or ``--data.<x>``."""
        try:
            super().instantiate_classes()
        except SettingError as error:
            section = "model" if error.parameter in (*MODEL_KEYS, "class_names", "num_classes") else "data"
            self.parser.error(f"--{section}.{error.parameter} {error.problem}")

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with the progress bar and summary chosen explicitly (the same with or without ``rich``)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer", {})
        given = trainer.get("callbacks") or []
        callbacks = list(given) if isinstance(given, list) else [given]
        extra = console_callbacks(
            progress_bar=trainer.get("enable_progress_bar") is not False
            and not any(isinstance(c, ProgressBar) for c in callbacks),
            model_summary=trainer.get("enable_model_summary") is not False
            and not any(isinstance(c, ModelSummary) for c in callbacks),
        )
        return super().instantiate_trainer(**{**kwargs, "callbacks": [*callbacks, *extra]})


def main(args: ArgsType = None, run: bool = True) -> LeNetCLI:
    """Run the CLI on ``args`` (default: the command line); returns it, with its trainer, model and data.

    ``run=False``: parse and instantiate only (no subcommand), as ``LightningCLI(run=False)``.
    """
    return LeNetCLI(
        LeNetClassifier,
        CIFAR10DataModule,
        args=args,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        seed_everything_default=SEED_FROM_DATA,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
