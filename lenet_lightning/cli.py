"""The command line behind ``train.py``: parse the flags, then train, resume, evaluate or predict.

``main(argv)`` returns its results (for tests and notebooks); ``run(argv)`` is the
console entry point that turns a :class:`UserError` into one ``error:`` line and
exit code 2. The work itself is in :mod:`lenet_lightning.experiment`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lenet_lightning import experiment
from lenet_lightning.batches import PAD_MODES
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.cifar10 import NORMALIZATIONS
from lenet_lightning.errors import PreemptedError, UserError
from lenet_lightning.export import export_bundle, summary_text
from lenet_lightning.module import INITS, OPTIMIZERS, SCHEDULERS
from lenet_lightning.predict import predict_paths
from lenet_lightning.runs import SETTINGS_KEY, find_last_checkpoint
from lenet_lightning.settings import (
    DEFAULTS,
    PRECISIONS,
    RECIPES,
    check_resume_changes,
    dump_config,
    load_config,
    resolve_settings,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every flag's help ends with its default."""
    parser = argparse.ArgumentParser(
        prog="train.py",
        description=(
            "Train LeNet-5 on CIFAR-10 with PyTorch Lightning, then test the best checkpoint. "
            "With --evaluate: test a saved checkpoint. With --predict: classify image files."
        ),
    )
    modes = parser.add_argument_group("what to do (default: train)")
    modes.add_argument("--evaluate", action="store_true", help="test the checkpoint given by --ckpt-path")
    modes.add_argument(
        "--predict",
        nargs="+",
        metavar="PATH",
        help="classify these image files and folders (recursively) with --ckpt-path (default: none)",
    )
    modes.add_argument("--json", action="store_true", help="with --predict: print JSON instead of text")
    modes.add_argument(
        "--output", metavar="FILE", help="with --predict: write results.csv or results.json (default: print)"
    )
    modes.add_argument(
        "--export",
        metavar="DIR",
        help="write a verified ONNX + torch.export bundle of --ckpt-path to DIR (default: none)",
    )
    modes.add_argument("--force", action="store_true", help="with --export: replace the bundle in a non-empty DIR")
    modes.add_argument(
        "--ckpt-path",
        help="checkpoint to resume training from ('last': the newest run's last.ckpt), or to evaluate/predict "
        "with (default: none, a new run)",
    )
    modes.add_argument(
        "--config", type=Path, help="YAML settings, e.g. a run's config.yaml; flags override it (default: none)"
    )
    modes.add_argument("--print-config", action="store_true", help="print the resolved settings as YAML and exit")
    modes.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    hardware = parser.add_argument_group("hardware (the Trainer places everything)")
    _add(hardware, "--accelerator", "cpu, gpu, mps or auto")
    _add(hardware, "--devices", "devices per node: a number, a list like 0,1, or auto")
    _add(hardware, "--strategy", "auto, ddp, ddp_spawn, ...")
    _add(hardware, "--num-nodes", "nodes for multi-node DDP", type=int)
    _add(hardware, "--precision", f"one of {', '.join(PRECISIONS)}")
    _add(hardware, "--deterministic", "deterministic algorithms (see README)", action=argparse.BooleanOptionalAction)

    recipe = parser.add_argument_group(
        "training recipe (defaults: the 'default' recipe; other recipes' values in [], e.g. [tutorial: 5])"
    )
    _add(recipe, "--recipe", "preset for the flags below; explicit flags override it", choices=sorted(RECIPES))
    _add_recipe(recipe, "--max-epochs", "epochs to train", type=int)
    _add_recipe(recipe, "--batch-size", "images per training batch (per device)", type=int)
    _add_recipe(recipe, "--optimizer", "optimizer", choices=OPTIMIZERS)
    _add_recipe(recipe, "--lr", "peak learning rate", type=float)
    _add_recipe(recipe, "--momentum", "SGD momentum", type=float)
    _add_recipe(recipe, "--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    _add_recipe(recipe, "--weight-decay", "weight decay", type=float)
    _add_recipe(recipe, "--label-smoothing", "label smoothing of the training loss", type=float)
    _add_recipe(recipe, "--scheduler", "learning-rate schedule, stepped per batch", choices=SCHEDULERS)
    _add_recipe(recipe, "--warmup-fraction", "share of steps spent warming up", type=float)
    _add_recipe(recipe, "--normalization", "cifar10: channel mean/std; half: 0.5/0.5; none", choices=NORMALIZATIONS)
    _add_recipe(recipe, "--hflip", "random horizontal flips", action=argparse.BooleanOptionalAction)
    _add_recipe(recipe, "--translate", "random shifts of up to N pixels (0: off)", type=int)
    _add_recipe(
        recipe, "--pad-mode", "pixels shifted into view: zeros or reflect (the mirrored edge)", choices=PAD_MODES
    )
    _add_recipe(recipe, "--init", "weight initialisation: default (PyTorch's) or he (Kaiming normal)", choices=INITS)
    _add_recipe(
        recipe, "--decay-biases", "weight decay on biases too (no: weights only)", action=argparse.BooleanOptionalAction
    )
    _add_recipe(
        recipe,
        "--ema-decay",
        "exponential moving average of the weights, per step; validation, test, checkpoints use it (0: off)",
        type=float,
    )

    data = parser.add_argument_group("data")
    _add(data, "--data-dir", "CIFAR-10 folder: official archive (downloaded if missing) or image folder")
    _add(data, "--cache-dir", "cache for decoded image folders (None: $LENET_LIGHTNING_CACHE or ~/.cache)")
    _add(
        data,
        "--download-url",
        "mirror(s) of cifar-10-python.tar.gz, comma-separated, tried first (md5-checked; also "
        "$LENET_LIGHTNING_DOWNLOAD_URL)",
    )
    _add(data, "--num-workers", "loader worker processes (0 measures fastest, see README)", type=int)
    _add(data, "--eval-batch-size", "images per validation/test/predict batch (any size: the same results)", type=int)
    _add(data, "--val-size", "validation images carved from the training split", type=int)
    _add(data, "--seed", "seed of initialisation, split, shuffling and augmentation", type=int)

    testing = parser.add_argument_group("testing")
    _add(
        testing,
        "--tta",
        "also test on each image averaged with its mirror image: test/acc_tta, reported apart from test/acc",
        action=argparse.BooleanOptionalAction,
    )

    output = parser.add_argument_group("output")
    _add(output, "--log-dir", "runs go to <log-dir>/<name>/version_<n>/")
    _add(output, "--name", "experiment name")
    _add(output, "--checkpoint-every-n-steps", "also write last.ckpt every N steps (0: once per epoch)", type=int)
    _add(output, "--log-every-n-steps", "write per-step scalars (train/loss, train/lr) every N steps", type=int)
    output.add_argument("--fast-dev-run", action="store_true", help="one batch of each stage, no checkpoints")
    return parser


def _add(group: argparse._ArgumentGroup, flag: str, text: str, **kwargs: Any) -> None:
    key = flag.removeprefix("--").replace("-", "_")
    # The real default is applied after parsing, so that "not given" stays visible.
    group.add_argument(flag, default=None, help=f"{text} (default: {DEFAULTS[key]})", **kwargs)


def _add_recipe(group: argparse._ArgumentGroup, flag: str, text: str, **kwargs: Any) -> None:
    key = flag.removeprefix("--").replace("-", "_")
    others = ", ".join(f"{name}: {recipe[key]}" for name, recipe in RECIPES.items() if name != "default")
    values = f"default: {RECIPES['default'][key]} [{others}]"
    group.add_argument(flag, default=None, help=f"{text} ({values})", **kwargs)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns the test metrics (train, evaluate), the predictions or the settings."""
    args = build_parser().parse_args(argv)
    experiment.quiet_console()
    if args.predict:
        return {"predictions": predict(args)}
    if args.export:
        return export(args)
    if args.evaluate:
        if args.ckpt_path is None:
            raise UserError("--evaluate needs --ckpt-path <checkpoint.ckpt>")
        return experiment.evaluate(Path(args.ckpt_path) if args.ckpt_path != "last" else resolve_last(args), vars(args))
    resume_from = resolve_checkpoint(args)
    saved = load_checkpoint(resume_from).get(SETTINGS_KEY) if resume_from else None
    config = load_config(args.config) if args.config else None
    if saved is not None:
        given = {key: value for key, value in vars(args).items() if value is not None}
        check_resume_changes(saved, {**(config or {}), **given})
    settings = resolve_settings(vars(args), saved, config)
    if args.print_config:
        print(dump_config(settings), end="")
        return settings
    return experiment.train(settings, resume_from, fast_dev_run=args.fast_dev_run)


def run(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one ``error:`` line and exit code 2 for problems the user can fix."""
    try:
        result = main(argv)
    except UserError as error:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PreemptedError as stop:
        print(stop, file=sys.stderr)
        return PreemptedError.exit_code
    failed = result.get("predictions") is not None and not any("error" not in p for p in result["predictions"])
    return 1 if failed else 0


def resolve_checkpoint(args: argparse.Namespace) -> Path | None:
    """``--ckpt-path``: ``None``, ``last`` (the newest run's last.ckpt) or a path."""
    if args.ckpt_path is None:
        return None
    return resolve_last(args) if args.ckpt_path == "last" else Path(args.ckpt_path)


def resolve_last(args: argparse.Namespace) -> Path:
    """The newest run's last.ckpt under ``--log-dir``/``--name``."""
    return find_last_checkpoint(Path(args.log_dir or DEFAULTS["log_dir"]), args.name or DEFAULTS["name"])


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Top-3 classes of each file (folders: every image in them); unreadable files get an error entry."""
    if args.ckpt_path is None:
        raise UserError("--predict needs --ckpt-path <checkpoint.ckpt>")
    output = Path(args.output) if args.output else None
    checkpoint = resolve_checkpoint(args) or resolve_last(args)
    return predict_paths(checkpoint, [Path(p) for p in args.predict], output=output, as_json=args.json)


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Write and verify the bundle; print its files and the verification numbers."""
    checkpoint = resolve_checkpoint(args)
    if checkpoint is None:
        raise UserError("--export needs --ckpt-path <checkpoint.ckpt>")
    summary = export_bundle(
        checkpoint, Path(args.export), force=args.force, data_dir=args.data_dir, cache_dir=args.cache_dir
    )
    print(summary_text(summary))
    return summary
