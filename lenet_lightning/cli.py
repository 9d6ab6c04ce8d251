"""The command line behind ``train.py``: train, resume, evaluate a checkpoint, predict files.

``main(argv)`` returns its results (for tests and notebooks); ``run(argv)`` is the
console entry point that turns a :class:`UserError` into one ``error:`` line and
a non-zero exit code.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from lenet_lightning.checkpoints import (
    SETTINGS_KEY,
    AtomicCheckpointIO,
    LastCheckpoint,
    find_last_checkpoint,
    load_checkpoint,
    run_dir_of,
)
from lenet_lightning.data import NORMALIZATIONS, CIFAR10DataModule
from lenet_lightning.errors import UserError
from lenet_lightning.export import export_bundle, summary_text
from lenet_lightning.guards import FiniteLossGuard, check_numbers
from lenet_lightning.module import OPTIMIZERS, SCHEDULERS, LeNetClassifier
from lenet_lightning.pictures import TensorBoardPictures, confusion_figure, save_figure
from lenet_lightning.predict import predict_paths
from lenet_lightning.recipes import RECIPES
from lenet_lightning.reporting import format_table, metrics_from_confusion, write_json

# Defaults of the flags that are not part of a recipe.
DEFAULTS: dict[str, Any] = {
    "recipe": "default",
    "accelerator": "auto",
    "devices": "auto",
    "strategy": "auto",
    "num_nodes": 1,
    "precision": "32-true",
    "data_dir": "data",
    "cache_dir": None,
    "download_url": None,
    "num_workers": 0,
    "val_size": 5000,
    "seed": 0,
    "log_dir": "logs",
    "name": "lenet",
    "checkpoint_every_n_steps": 0,
    "log_every_n_steps": 50,
}
# Settings that describe a run (saved in its checkpoints, reused on resume).
RUN_SETTINGS = tuple(DEFAULTS) + tuple(RECIPES["default"])


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
    modes.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    hardware = parser.add_argument_group("hardware (the Trainer places everything)")
    _add(hardware, "--accelerator", "cpu, gpu, mps or auto")
    _add(hardware, "--devices", "devices per node: a number, a list like 0,1, or auto")
    _add(hardware, "--strategy", "auto, ddp, ddp_spawn, ...")
    _add(hardware, "--num-nodes", "nodes for multi-node DDP", type=int)
    _add(hardware, "--precision", "32-true, bf16-mixed, 16-mixed (GPU), ...")

    recipe = parser.add_argument_group("training recipe (defaults: the 'default' recipe; tutorial values in [])")
    _add(recipe, "--recipe", "preset for the flags below; explicit flags override it", choices=sorted(RECIPES))
    _add_recipe(recipe, "--max-epochs", "epochs to train", type=int)
    _add_recipe(recipe, "--batch-size", "images per batch (per device)", type=int)
    _add_recipe(recipe, "--optimizer", "optimizer", choices=OPTIMIZERS)
    _add_recipe(recipe, "--lr", "peak learning rate", type=float)
    _add_recipe(recipe, "--momentum", "SGD momentum", type=float)
    _add_recipe(recipe, "--nesterov", "Nesterov momentum", action=argparse.BooleanOptionalAction)
    _add_recipe(recipe, "--weight-decay", "weight decay", type=float)
    _add_recipe(recipe, "--label-smoothing", "label smoothing of the training loss", type=float)
    _add_recipe(recipe, "--scheduler", "learning-rate schedule, stepped per batch", choices=SCHEDULERS)
    _add_recipe(recipe, "--warmup-fraction", "share of steps spent warming up", type=float)
    _add_recipe(recipe, "--normalization", "cifar10: channel mean/std; half: 0.5/0.5", choices=sorted(NORMALIZATIONS))
    _add_recipe(recipe, "--hflip", "random horizontal flips", action=argparse.BooleanOptionalAction)
    _add_recipe(recipe, "--translate", "random shifts of up to N pixels (0: off)", type=int)

    data = parser.add_argument_group("data")
    _add(data, "--data-dir", "CIFAR-10 folder: official archive (downloaded if missing) or image folder")
    _add(data, "--cache-dir", "cache for decoded image folders (None: $LENET_LIGHTNING_CACHE or ~/.cache)")
    _add(data, "--download-url", "mirror of cifar-10-python.tar.gz (md5-checked; also $LENET_LIGHTNING_DOWNLOAD_URL)")
    _add(data, "--num-workers", "loader worker processes (0 measures fastest, see README)", type=int)
    _add(data, "--val-size", "validation images carved from the training split", type=int)
    _add(data, "--seed", "seed of initialisation, split, shuffling and augmentation", type=int)

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
    values = f"default: {RECIPES['default'][key]} [{RECIPES['tutorial'][key]}]"
    group.add_argument(flag, default=None, help=f"{text} ({values})", **kwargs)


def resolve_settings(args: argparse.Namespace, saved: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < recipe < settings saved in a checkpoint (resume) < flags given now."""
    given = {key: value for key, value in vars(args).items() if value is not None and key in RUN_SETTINGS}
    saved = saved or {}
    recipe = given.get("recipe") or saved.get("recipe") or DEFAULTS["recipe"]
    return {**DEFAULTS, **RECIPES[recipe], **saved, **given, "recipe": recipe}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command line; returns the test metrics (train, evaluate) or the predictions."""
    args = build_parser().parse_args(argv)
    configure_console()
    if args.predict:
        return {"predictions": predict(args)}
    if args.export:
        return export(args)
    if args.evaluate:
        return evaluate(args)
    return train(args)


def run(argv: Sequence[str] | None = None) -> int:
    """Console entry point: one ``error:`` line and exit code 2 for problems the user can fix."""
    try:
        result = main(argv)
    except UserError as error:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = result.get("predictions") is not None and not any("error" not in p for p in result["predictions"])
    return 1 if failed else 0


def configure_console() -> None:
    """Keep the console to what users can act on: progress, results, problems."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # Our loaders are in-memory tensors: advice about DataLoader workers does not apply.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # "best" means our monitored checkpoint, which is the first callback by construction.
    warnings.filterwarnings("ignore", message=".*configured with multiple `ModelCheckpoint` callbacks.*")
    # Raised inside PyTorch/Lightning (graph tracing, pytree), not by anything a user does.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


# --- train --------------------------------------------------------------------------


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Fit, then test the best checkpoint; print the per-class table and write test_metrics.json."""
    resume_from = resolve_resume(args)
    saved = load_checkpoint(resume_from).get(SETTINGS_KEY) if resume_from else None
    settings = resolve_settings(args, saved)
    check_numbers(settings)
    check_hardware(settings)
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(settings)
    model = LeNetClassifier(**{key: settings[key] for key in MODEL_KEYS})
    logger = build_logger(settings, resume_from)
    trainer = build_trainer(settings, logger, fast_dev_run=args.fast_dev_run, extra_callbacks=[SaveSettings(settings)])
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    best = None if args.fast_dev_run else "best"
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
    metrics = report_test(trainer, model, Path(logger.log_dir))
    callback = trainer.checkpoint_callback
    best_val = callback.best_model_score if isinstance(callback, ModelCheckpoint) else None
    # The HPARAMS tab compares runs by these two numbers.
    hp_metrics = {"hp/test_acc": metrics["test/acc"]}
    if best_val is not None:
        hp_metrics["hp/val_acc"] = float(best_val)
    logger.log_hyperparams({key: str(value) if value is None else value for key, value in settings.items()}, hp_metrics)
    return metrics


MODEL_KEYS = (
    "optimizer",
    "lr",
    "momentum",
    "nesterov",
    "weight_decay",
    "label_smoothing",
    "scheduler",
    "warmup_fraction",
)
DATA_KEYS = ("data_dir", "batch_size", "num_workers", "val_size", "seed", "normalization", "hflip", "translate")


def build_datamodule(settings: dict[str, Any]) -> CIFAR10DataModule:
    return CIFAR10DataModule(
        **{key: settings[key] for key in DATA_KEYS},
        pin_memory=settings["accelerator"] in ("gpu", "cuda")
        or (settings["accelerator"] == "auto" and torch.cuda.is_available()),
        cache_dir=settings["cache_dir"],
        download_url=settings["download_url"],
    )


def resolve_resume(args: argparse.Namespace) -> Path | None:
    if args.ckpt_path is None:
        return None
    if args.ckpt_path == "last":
        return find_last_checkpoint(Path(args.log_dir or DEFAULTS["log_dir"]), args.name or DEFAULTS["name"])
    return Path(args.ckpt_path)


def build_logger(settings: dict[str, Any], resume_from: Path | None) -> TensorBoardLogger:
    """One folder per run; a resumed run keeps writing into the folder of its checkpoint."""
    log_dir = Path(settings["log_dir"])
    if resume_from is not None:
        run_dir = run_dir_of(resume_from)
        log_dir, name = run_dir.parent.parent, run_dir.parent.name
        number = run_dir.name.removeprefix("version_")
        version: int | str = int(number) if number.isdigit() else run_dir.name
    else:
        # Under DDP only rank 0 writes; Lightning broadcasts its checkpoint folder.
        name, version = settings["name"], next_version(log_dir / settings["name"])
    check_writable(log_dir)
    return TensorBoardLogger(log_dir, name=name, version=version, default_hp_metric=False, log_graph=True)


def next_version(folder: Path) -> int:
    numbers = [int(p.name[8:]) for p in folder.glob("version_*") if p.name[8:].isdigit()]
    return max(numbers, default=-1) + 1


def check_writable(log_dir: Path) -> None:
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        probe = log_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write to log folder '{log_dir}' ({error.strerror}): pass a writable --log-dir"
        ) from None


def check_hardware(settings: dict[str, Any]) -> None:
    """Fail early, in one line, on hardware requests this machine cannot meet."""
    accelerator, precision = settings["accelerator"], settings["precision"]
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("--accelerator gpu: PyTorch sees no CUDA GPU here; use --accelerator cpu (or auto)")
    uses_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if uses_cpu and precision.startswith("16"):
        raise UserError(f"--precision {precision} needs a GPU; on CPU use --precision bf16-mixed or 32-true")
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


def build_trainer(
    settings: dict[str, Any], logger: TensorBoardLogger, fast_dev_run: bool, extra_callbacks: list[Callback]
) -> L.Trainer:
    # dirpath stays None: Lightning then uses <run folder>/checkpoints as seen by rank 0.
    best = ModelCheckpoint(
        filename="best-epoch{epoch:03d}-acc{val/acc:.4f}",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
    )
    last = LastCheckpoint(every_n_train_steps=settings["checkpoint_every_n_steps"])
    # A redraw per step costs as much as a LeNet step at batch 4 (benchmarks/throughput.py).
    progress = TQDMProgressBar(refresh_rate=10)
    devices = settings["devices"]
    try:
        trainer = L.Trainer(
            accelerator=settings["accelerator"],
            devices=int(devices) if devices.isdigit() else devices,
            strategy=settings["strategy"],
            num_nodes=settings["num_nodes"],
            precision=settings["precision"],
            max_epochs=settings["max_epochs"],
            logger=logger,
            callbacks=[best, last, progress, TensorBoardPictures(), FiniteLossGuard(), *extra_callbacks],
            plugins=[AtomicCheckpointIO()],
            fast_dev_run=fast_dev_run,
            deterministic=True,
            log_every_n_steps=settings["log_every_n_steps"],
        )
    except (MisconfigurationException, ValueError) as error:
        raise UserError(f"{error} (check --accelerator, --devices, --strategy and --precision)") from None
    # deterministic=True also fills every new tensor with NaN, to expose reads of
    # uninitialised memory; nothing here reads any, and the fills cost ~0.5 ms a step.
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return trainer


class SaveSettings(Callback):
    """Stores the run's resolved settings in every checkpoint, so resume needs no flags."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = {key: settings[key] for key in RUN_SETTINGS}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[SETTINGS_KEY] = self.settings


def report_test(trainer: L.Trainer, model: LeNetClassifier, run_dir: Path) -> dict[str, Any]:
    """Print the per-class table (rank 0), write test_metrics.json and confusion_matrix.png, return the metrics."""
    confusion = model.confusion["test"]
    metrics = metrics_from_confusion(confusion, model.class_names)
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)  # --fast-dev-run logs nothing, so nothing made it
        write_json(run_dir / "test_metrics.json", metrics)
        figure = confusion_figure(confusion, model.class_names, "test confusion matrix (% of true class)")
        save_figure(figure, str(run_dir / "confusion_matrix.png"))
        print(format_table(confusion, model.class_names))
        print(f"run folder: {run_dir}")
    return metrics


# --- evaluate -----------------------------------------------------------------------


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Test a checkpoint with the settings stored in it; flags given now override them."""
    if args.ckpt_path is None:
        raise UserError("--evaluate needs --ckpt-path <checkpoint.ckpt>")
    path = Path(args.ckpt_path)
    checkpoint = load_checkpoint(path)
    settings = resolve_settings(args, checkpoint.get(SETTINGS_KEY))
    data_settings = {**checkpoint.get("datamodule_hyper_parameters", {}), **_given(args, (*DATA_KEYS, "cache_dir"))}
    check_hardware({**settings, "devices": "1"})  # evaluation runs on one device, whatever training used
    model = LeNetClassifier.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    datamodule = CIFAR10DataModule(**data_settings)
    run_dir = run_dir_of(path)
    trainer = L.Trainer(
        accelerator=settings["accelerator"],
        devices=1,
        precision=settings["precision"],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    return report_test(trainer, model, run_dir)


def _given(args: argparse.Namespace, keys: Sequence[str]) -> dict[str, Any]:
    return {key: getattr(args, key) for key in keys if getattr(args, key) is not None}


# --- predict ------------------------------------------------------------------------


def predict(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Top-3 classes of each file (folders: every image in them); unreadable files get an error entry."""
    if args.ckpt_path is None:
        raise UserError("--predict needs --ckpt-path <checkpoint.ckpt>")
    output = Path(args.output) if args.output else None
    return predict_paths(Path(args.ckpt_path), [Path(p) for p in args.predict], output=output, as_json=args.json)


# --- export -------------------------------------------------------------------------


def export(args: argparse.Namespace) -> dict[str, Any]:
    """Write and verify the bundle; print its files and the verification numbers."""
    checkpoint = resolve_resume(args)
    if checkpoint is None:
        raise UserError("--export needs --ckpt-path <checkpoint.ckpt>")
    summary = export_bundle(
        checkpoint, Path(args.export), force=args.force, data_dir=args.data_dir, cache_dir=args.cache_dir
    )
    print(summary_text(summary))
    return summary
