"""``python -m lenet_lightning.lightning_cli``: the model and DataModule through Lightning's own CLI.

For users who configure runs with ``LightningCLI`` YAML files rather than
``train.py`` flags: ``fit``, ``validate``, ``test`` and ``predict`` subcommands,
``--print_config``, and the resolved config saved in each run's log folder.
Needs the ``cli`` extra (``pip install -e ".[cli]"``, for ``jsonargparse``).
"""

from __future__ import annotations

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from typing_extensions import override

from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.module import LeNetClassifier


class LeNetCLI(LightningCLI):
    """``LightningCLI`` whose model takes its class names from the DataModule."""

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.classes", "model.class_names", apply_on="instantiate")


def main(args: ArgsType = None) -> LeNetCLI:
    """Run the CLI on ``args`` (default: the command line); returns it, with its trainer, model and data."""
    return LeNetCLI(LeNetClassifier, CIFAR10DataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
