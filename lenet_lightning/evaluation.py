"""Testing a checkpoint (``--evaluate``) and reporting test results: the per-class table, its JSON and picture."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import Interrupted, UserError, signal_name
from lenet_lightning.extensions.console import console_callbacks, end_progress_bar
from lenet_lightning.hardware import check_hardware
from lenet_lightning.inference import checkpoint_normalization
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.pictures import confusion_image
from lenet_lightning.records import checkpoint_record
from lenet_lightning.reporting import format_table, metrics_from_confusion, write_json
from lenet_lightning.runs import (
    run_dir_of,
)
from lenet_lightning.settings import (
    CHANGEABLE_ON_RESUME,
    data_arguments,
    flag,
    model_arguments,
    resolve_settings,
    run_options,
)
from lenet_lightning.signals import StopOnSignal, deferred, stop_signal, stops_on_signals


def report_test(trainer: L.Trainer, model: LeNetClassifier, run_dir: Path | None, result_name: str) -> dict[str, Any]:
    """Print the per-class table (rank 0), then write the metrics JSON and confusion-matrix PNG into ``run_dir``.

    The PNG is named like the JSON (``*_metrics.json`` -> ``*_confusion_matrix.png``).
    The table comes first, so the results are seen even when they cannot be written.
    """
    confusion = model.confusion["test"]
    tta_confusion = model.confusion.get("test_tta") if model.tta else None
    metrics = metrics_from_confusion(confusion, model.class_names)
    if tta_confusion is not None:
        metrics |= metrics_from_confusion(tta_confusion, model.class_names, prefix="test/acc_tta")
    if not trainer.is_global_zero:
        return metrics
    print(format_table(confusion, model.class_names, tta_confusion))
    if run_dir is None:
        return metrics
    figure_name = result_name.replace("metrics.json", "confusion_matrix.png").removeprefix("test_")
    try:
        write_json(run_dir / result_name, metrics)
        title = "test confusion matrix (% of true class)"
        confusion_image(confusion, model.class_names, title).save(run_dir / figure_name)
    except OSError as error:
        raise UserError(
            f"cannot write the results to '{run_dir}' ({error.strerror}): the table above holds them; "
            "copy the run folder somewhere writable to keep them as files"
        ) from None
    print(f"run folder: {run_dir}")
    return metrics


def evaluate(checkpoint_path: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`_evaluate`, stopping on SIGTERM and SIGINT with :class:`Interrupted` (nothing is written then)."""
    with stops_on_signals():
        return _evaluate(checkpoint_path, given)


def _evaluate(checkpoint_path: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    """Test a checkpoint with the settings it holds; ``given`` may change where and how it runs, not the model.

    Writes ``eval_<checkpoint>_<data folder>_<digest of its path>_metrics.json`` into the run
    folder: the training run's own results stay as they were, and evaluations of other data
    never overwrite each other.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    fixed = sorted(key for key in given if key not in CHANGEABLE_ON_RESUME)
    if fixed:
        raise UserError(
            f"--evaluate tests the checkpoint as it was trained: {', '.join(flag(key) for key in fixed)} cannot "
            "change it; leave them out"
        )
    settings = resolve_settings(given, saved=checkpoint_record(checkpoint))
    run_options(settings)  # the run options given now are checked like any run's
    check_hardware({**settings, "devices": "1"})  # evaluation runs on one device, whatever training used
    class_names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    model = LeNetClassifier(class_names=class_names, **model_arguments(settings))
    # Built from the checkpoint already read (and checked) above, not read from disk a second time.
    model.load_state_dict(checkpoint["state_dict"])
    # A normalisation of one's own (mean/std, from Python or LightningCLI) is the checkpoint's, as trained.
    _, mean, std = checkpoint_normalization(checkpoint)
    datamodule = CIFAR10DataModule(**data_arguments(settings), mean=mean, std=std)
    trainer = L.Trainer(
        accelerator=settings["accelerator"],
        devices=1,
        precision=settings["precision"],
        logger=False,
        enable_checkpointing=False,
        callbacks=[*console_callbacks(), StopOnSignal()],
    )
    data_dir = datamodule.data_dir.absolute()
    where = hashlib.sha256(str(data_dir).encode()).hexdigest()[:8]
    stem = f"eval_{checkpoint_path.stem}_{data_dir.name}_{where}"
    run_dir = run_dir_of(checkpoint_path)
    metrics: dict[str, Any] | None = None
    try:
        trainer.test(model, datamodule=datamodule, verbose=False)
        with deferred():  # the results are written whole or not at all
            metrics = report_test(trainer, model, run_dir, f"{stem}_metrics.json")
    except (Interrupted, SIGTERMException) as stop:
        end_progress_bar(trainer)
        signum = stop_signal(stop)
        done = "nothing was written" if metrics is None else f"its results are written in {run_dir}"
        raise Interrupted(
            signum, f"stopped by {signal_name(signum)} while evaluating '{checkpoint_path}': {done}"
        ) from None
    print(f"evaluation of '{checkpoint_path}' on '{datamodule.data_dir}': {run_dir / stem}_metrics.json")
    return metrics
