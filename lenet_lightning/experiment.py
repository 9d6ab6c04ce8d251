"""Training a run: build the DataModule, module, logger and Trainer, fit, test the best checkpoint, report.

:func:`train` takes resolved settings (see :mod:`lenet_lightning.settings`) and returns
the test metrics; printing the per-class table is part of the result, nothing here
parses a command line. Evaluating a checkpoint is :mod:`lenet_lightning.evaluation`.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import Interrupted, UserError, invocation, signal_name
from lenet_lightning.evaluation import report_test
from lenet_lightning.extensions.callbacks import AveragedWeights, FiniteLossGuard, RunFolderSync, TrainingStart
from lenet_lightning.extensions.checkpointing import AtomicCheckpointIO, BestCheckpoint, LastCheckpoint, SaveRunOptions
from lenet_lightning.extensions.console import console_callbacks, end_progress_bar
from lenet_lightning.extensions.tensorboard import TensorBoardPictures, build_logger
from lenet_lightning.hardware import check_hardware, nodes_did_not_join, strategy_for, waiting_for_nodes
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.process import process_state_restored
from lenet_lightning.records import plain
from lenet_lightning.runs import (
    is_finished,
    launch_rank,
    new_run_dir,
    own_run_dir,
    removed_unless_started,
    write_config,
)
from lenet_lightning.settings import (
    SETTINGS,
    RunOptions,
    data_arguments,
    model_arguments,
    validate_settings,
)
from lenet_lightning.signals import StopOnSignal, deferred, forward_to, stop_signal, stops_on_signals

# --- train --------------------------------------------------------------------------


def train(
    settings: Mapping[str, Any],
    resume_from: Path | None = None,
    fast_dev_run: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit, then test the best checkpoint; print the per-class table, write test_metrics.json, return the metrics.

    ``settings``: every key of :data:`~lenet_lightning.settings.SETTINGS` (see ``resolve_settings``).
    ``fast_dev_run`` (one batch of each stage) writes nothing: no run folder, no results.
    ``callbacks`` are added to the Trainer's own.
    """
    settings = {key: settings[key] for key in SETTINGS}
    options = validate_settings(settings)  # every value, named, before anything is seeded or claimed
    check_hardware(settings)
    with process_state_restored(), stops_on_signals():
        return _train(settings, options, resume_from, fast_dev_run, callbacks)


def _train(
    settings: dict[str, Any],
    options: RunOptions,
    resume_from: Path | None,
    fast_dev_run: bool,
    callbacks: Sequence[Callback],
) -> dict[str, Any]:
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    datamodule = CIFAR10DataModule(**data_arguments(settings))
    model = LeNetClassifier(class_names=datamodule.classes, **model_arguments(settings))
    created: list[Path] = []
    own = own_run_dir(resume_from) if resume_from else None
    if own is not None:
        run_dir = own  # a resume writes only inside the checkpoint's own run folder
    elif fast_dev_run:
        run_dir = Path(settings["log_dir"]) / settings["name"] / "fast_dev_run"  # never created: nothing is saved
    else:
        run_dir, created = new_run_dir(settings)  # a new run, or the continuation of a checkpoint from elsewhere
    writes = launch_rank() == 0 and not fast_dev_run
    start, stopper = TrainingStart(), StopOnSignal()
    with removed_unless_started(created, start):
        if writes:
            write_config(run_dir, settings, resumed=own is not None)
        logger = build_logger(run_dir)
        folder = RunFolderSync(run_dir)
        extra = [SaveRunOptions(options), folder, start, stopper, *callbacks]
        trainer = build_trainer(options, logger, run_dir, fast_dev_run, extra)
        forward_to(trainer)
        fit(trainer, model, datamodule, resume_from, stopper)
    try:
        return test_and_report(trainer, model, datamodule, logger, settings, None if fast_dev_run else folder.run_dir)
    except (Interrupted, SIGTERMException) as stop:
        end_progress_bar(trainer)
        raise Interrupted(stop_signal(stop), stopped_testing_line(stop_signal(stop), trainer)) from None


def test_and_report(
    trainer: L.Trainer,
    model: LeNetClassifier,
    datamodule: CIFAR10DataModule,
    logger: TensorBoardLogger,
    settings: Mapping[str, Any],
    run_dir: Path | None,
) -> dict[str, Any]:
    """Test the best checkpoint, then report (``run_dir`` ``None``: a fast dev run, nothing written).

    The last weights are tested when no checkpoint was chosen here: a fast dev run, or a
    resumed run that had already ended.
    """
    chosen = trainer.checkpoint_callback
    best = "best" if isinstance(chosen, ModelCheckpoint) and chosen.best_model_path else None
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
    # The results are written whole or not at all: a signal now waits until they are.
    with deferred():
        metrics = report_test(trainer, model, run_dir, "test_metrics.json")
        if run_dir is None:
            return metrics
        callback = trainer.checkpoint_callback
        best_val = callback.best_model_score if isinstance(callback, ModelCheckpoint) else None
        # The HPARAMS tab compares runs by these two numbers.
        hp_metrics = {"hp/test_acc": metrics["test/acc"]}
        if best_val is not None:
            hp_metrics["hp/val_acc"] = float(best_val)
        hparams = {key: "None" if value is None else plain(value) for key, value in settings.items()}
        logger.log_hyperparams(hparams, hp_metrics)
        logger.finalize("success")  # flushes the event file now, not whenever the process happens to exit
    return metrics


def fit(
    trainer: L.Trainer,
    model: LeNetClassifier,
    datamodule: CIFAR10DataModule,
    resume_from: Path | None,
    stopper: StopOnSignal,
) -> None:
    """``trainer.fit``; a stop signal becomes :class:`Interrupted` saying which step was kept and how to resume."""
    waiting = waiting_for_nodes(trainer)
    if waiting is not None:
        print(waiting, file=sys.stderr, flush=True)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except torch.distributed.DistError as error:
        if waiting is None:
            raise
        raise nodes_did_not_join(trainer, error) from None
    except (Interrupted, SIGTERMException) as stop:
        end_progress_bar(trainer)
        signum = stop_signal(stop)
        raise Interrupted(signum, stopped_training_line(signum, trainer, stopper.phase, resume_from)) from None


def last_checkpoint(trainer: L.Trainer) -> LastCheckpoint | None:
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)


def saved_step(path: Path) -> int | None:
    """The step a checkpoint holds, ``None`` when there is none."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])
    except (OSError, RuntimeError, EOFError, KeyError):
        return None


def stopped_training_line(signum: int, trainer: L.Trainer, phase: str, resume_from: Path | None) -> str:
    """One line: where training stopped, which step ``last.ckpt`` holds, what to run next."""
    last = last_checkpoint(trainer)
    held = saved_step(last.path) if last is not None and not trainer.fast_dev_run else None  # type: ignore[attr-defined]
    step = trainer.global_step
    name = signal_name(signum)
    if held is None:
        again = "start the run again with the same command"
        if resume_from is not None:
            again = f"resume again with: {invocation()} --ckpt-path {resume_from}"
        return f"stopped by {name} {phase}, before the first checkpoint: nothing was saved; {again}"
    assert last is not None
    where = f"at step {step}" + ("" if phase == "during training" else f" {phase}")
    if step < held:  # a resume stopped before its checkpoint was restored: no step of its own yet
        where = phase
    kept = f"last.ckpt saved at step {held}" if last.saved_on_stop else f"last.ckpt holds step {held}"
    if held < step:
        kept += (
            f" (steps {held + 1}-{step} are trained again on resume)"
            if step > held + 1
            else f" (step {step} is trained again on resume)"
        )
    return f"stopped by {name} {where}, {kept}; resume with: {invocation()} --ckpt-path {last.path}"


def stopped_testing_line(signum: int, trainer: L.Trainer) -> str:
    """One line for a stop after training: the run stays unfinished, resuming it tests it."""
    last = last_checkpoint(trainer)
    name = signal_name(signum)
    if last is None or trainer.fast_dev_run:  # type: ignore[attr-defined]
        return f"stopped by {name} while testing: nothing was written"
    if is_finished(last.path.parent.parent):
        return f"stopped by {name} as the run finished: its results are written in {last.path.parent.parent}"
    return (
        f"stopped by {name} while testing, after training to step {trainer.global_step}: nothing was written "
        f"and the run stays unfinished (last.ckpt holds step {saved_step(last.path)}); test it and finish the run "
        f"with: {invocation()} --ckpt-path {last.path}"
    )


def build_trainer(
    options: RunOptions,
    logger: TensorBoardLogger,
    run_dir: Path,
    fast_dev_run: bool,
    extra_callbacks: list[Callback],
) -> L.Trainer:
    best = BestCheckpoint(run_dir / "checkpoints")
    last = LastCheckpoint(run_dir / "checkpoints", every_n_train_steps=options.checkpoint_every_n_steps)
    callbacks: list[Callback] = [
        best,
        last,
        *console_callbacks(),
        TensorBoardPictures(),
        FiniteLossGuard(),
        *extra_callbacks,
    ]
    if options.ema_decay > 0:
        callbacks.append(AveragedWeights(decay=options.ema_decay))
    devices = str(options.devices)
    try:
        return L.Trainer(
            accelerator=options.accelerator,
            devices=int(devices) if devices.isdigit() else devices,
            strategy=strategy_for(options),
            num_nodes=options.num_nodes,
            precision=options.precision,
            max_epochs=options.max_epochs,
            logger=logger,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            fast_dev_run=fast_dev_run,
            deterministic=options.deterministic,
            log_every_n_steps=options.log_every_n_steps,
        )
    except (MisconfigurationException, ValueError) as error:
        raise UserError(f"{error} (check --accelerator, --devices, --strategy and --precision)") from None
