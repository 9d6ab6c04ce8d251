"""Building and running an experiment: train, evaluate a checkpoint, classify files.

Each entry point takes resolved settings (see :mod:`lenet_lightning.settings`) or a
checkpoint and returns its results; printing the per-class table is part of the
result, nothing here parses a command line.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import random
import shutil
import signal
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lenet_lightning.callbacks import AveragedWeights, FiniteLossGuard, console_callbacks
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import Interrupted, UserError, invocation, signal_name
from lenet_lightning.hardware import check_hardware
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.pictures import TensorBoardPictures, confusion_image
from lenet_lightning.records import checkpoint_settings, dump_config, plain
from lenet_lightning.reporting import format_table, metrics_from_confusion, write_json
from lenet_lightning.runs import (
    VERSION_PREFIX,
    AtomicCheckpointIO,
    BestCheckpoint,
    LastCheckpoint,
    SaveRunOptions,
    claim_run_dir,
    is_finished,
    own_run_dir,
    run_dir_of,
)
from lenet_lightning.settings import (
    CHANGEABLE_ON_RESUME,
    SETTINGS,
    RunOptions,
    data_arguments,
    flag,
    model_arguments,
    resolve_settings,
    run_options,
)
from lenet_lightning.signals import StopOnSignal, deferred, forward_to, stops_on_signals, wait_for_children

# Processes that Lightning launches for DDP inherit the run folder that rank 0 claimed.
RUN_DIR_ENV = "LENET_LIGHTNING_RUN_DIR"


QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Keep the console to what users can act on (progress, results, problems) while inside; restored after."""
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with warnings.catch_warnings():
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        # Our loaders are in-memory tensors: advice about DataLoader workers does not apply.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # "best" means our monitored checkpoint, which is the first callback by construction.
        warnings.filterwarnings("ignore", message=".*configured with multiple `ModelCheckpoint` callbacks.*")
        # A resumed run writes into its own checkpoints/ folder again, by design.
        warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
        # Raised inside PyTorch/Lightning (graph tracing, pytree), not by anything a user does.
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# What Lightning's seed_everything, Trainer(deterministic=True) and a run's DDP launch set in the environment.
RESTORED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "CUBLAS_WORKSPACE_CONFIG", RUN_DIR_ENV)


@contextlib.contextmanager
def process_state_restored() -> Iterator[None]:
    """Put back what a run changes process-wide: the global RNGs, deterministic mode, environment variables.

    The processes a DDP run launches inherit them while it runs; a notebook or a test that
    trains twice finds the process as it was. Inside, ``fill_uninitialized_memory`` is off:
    ``deterministic=True`` would fill every new tensor with NaN to expose reads of
    uninitialised memory, nothing here reads any, and the fills cost ~0.5 ms a step.
    """
    env = {key: os.environ.get(key) for key in RESTORED_ENV}
    rngs = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda_rngs = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    switch: Any = torch.utils.deterministic
    fill = switch.fill_uninitialized_memory
    switch.fill_uninitialized_memory = False
    try:
        yield
    finally:
        switch.fill_uninitialized_memory = fill
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        random.setstate(rngs[0])
        np.random.set_state(rngs[1])
        torch.random.set_rng_state(rngs[2])
        if cuda_rngs is not None:
            torch.cuda.set_rng_state_all(cuda_rngs)
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
    options = run_options(settings)
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


def write_config(run_dir: Path, settings: Mapping[str, Any], resumed: bool) -> None:
    """Write the run's ``config.yaml``; a resume that cannot write into its own run folder says so in one line."""
    try:
        (run_dir / "config.yaml").write_text(dump_config(settings))
    except OSError as error:
        if not resumed:
            raise
        raise UserError(
            f"cannot write to the run folder '{run_dir}' ({error.strerror}): a resume writes only into the "
            f"checkpoint's own run folder; make it writable (chmod -R u+w '{run_dir}'), or copy the checkpoint "
            "out of it and resume from the copy, which starts a new run folder under --log-dir"
        ) from None


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


def launch_rank() -> int:
    """This process's global rank as its launcher (torchrun, SLURM, Lightning) set it, before any Trainer exists."""
    return int(getattr(rank_zero_only, "rank", 0))


@contextlib.contextmanager
def removed_unless_started(created: list[Path], start: TrainingStart) -> Iterator[None]:
    """On a failure before training started, remove the folders this run created (run folder first).

    Data and Trainer problems surface after the run folder was claimed (``prepare_data`` and
    ``setup`` run inside ``fit``, after Lightning has opened the event file): a run that never
    started leaves no folder and no empty parent, so a failed start does not shift the numbers
    of later runs either. A run
    stopped by a signal before its first checkpoint has nothing to resume: its folder
    (config, event files of the sanity check) goes too. Parents go only when empty.
    """
    try:
        yield
    except BaseException as error:
        stopped = isinstance(error, (Interrupted, SIGTERMException))
        run_dir = created[0] if created else None
        if run_dir is not None and (not start.started or (stopped and not any(run_dir.rglob("*.ckpt")))):
            shutil.rmtree(run_dir, ignore_errors=True)
            for parent in created[1:]:
                with contextlib.suppress(OSError):
                    parent.rmdir()
        raise


class TrainingStart(Callback):
    """Knows whether training has started: a run folder with a started run is kept, whatever happens next."""

    def __init__(self) -> None:
        self.started = False

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = True


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


def stop_signal(stop: BaseException) -> int:
    """The signal behind a stop (Lightning raises ``SIGTERMException`` in the moment before our handler is in place)."""
    return stop.signum if isinstance(stop, Interrupted) else int(signal.SIGTERM)


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


def end_progress_bar(trainer: L.Trainer) -> None:
    """Close the bars of a stopped stage, so that none is redrawn after the last message.

    Under DDP, rank 0 then waits for the ranks it launched to stop too.
    """
    if trainer.world_size > 1 and launch_rank() == 0:
        wait_for_children()
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar):
        for name in ("val_progress_bar", "test_progress_bar", "predict_progress_bar", "train_progress_bar"):
            with contextlib.suppress(TypeError):  # that bar was never made
                getattr(bar, name).close()
        if trainer.is_global_zero:
            sys.stderr.write("\n")  # a closed bar leaves the cursor on its line: the message gets its own


def new_run_dir(settings: Mapping[str, Any]) -> tuple[Path, list[Path]]:
    """Rank 0 claims a fresh ``version_<n>`` folder; processes Lightning launches for DDP inherit it.

    Returns the folder and the folders created for it, innermost first.
    """
    experiment_dir = Path(settings["log_dir"]) / settings["name"]
    if launch_rank() == 0:
        missing = [folder for folder in (experiment_dir, experiment_dir.parent) if not exists(folder)]
        run_dir = claim_run_dir(experiment_dir)
        os.environ[RUN_DIR_ENV] = str(run_dir.absolute())
        return run_dir, [run_dir, *missing]
    # Other ranks never write; under torchrun/SLURM they learn rank 0's folder in RunFolderSync.
    return Path(os.environ.get(RUN_DIR_ENV) or experiment_dir / "version_unknown"), []


def exists(path: Path) -> bool:
    """``path.exists()``, but ``False`` for a name the file system refuses (claiming it then says why)."""
    try:
        return path.exists()
    except OSError:
        return False


def build_logger(run_dir: Path) -> TensorBoardLogger:
    """TensorBoard writing into exactly ``run_dir`` (``<log_dir>/<name>/<version>``)."""
    number = run_dir.name.removeprefix(VERSION_PREFIX)
    version: int | str = int(number) if number.isdigit() else run_dir.name  # an int shows as v_num in the bar
    return OneGraphTensorBoardLogger(
        run_dir.parent.parent, name=run_dir.parent.name, version=version, default_hp_metric=False, log_graph=True
    )


class OneGraphTensorBoardLogger(TensorBoardLogger):
    """A ``TensorBoardLogger`` that writes the model graph once per process, not once per stage.

    Lightning asks for the graph when fit starts and again when test starts; each time
    the JIT traces and re-checks the model (0.2-0.4 s on CPU) for the same graph.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.graph_logged = False

    @override
    def log_graph(  # type: ignore[override]  # narrowed to LightningModule, as Lightning's own override does
        self, model: L.LightningModule, input_array: torch.Tensor | None = None
    ) -> None:
        if not self.graph_logged:
            super().log_graph(model, input_array)
            self.graph_logged = True


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


# How long a multi-node run waits for the other nodes to join before it gives up.
NODE_TIMEOUT_ENV = "LENET_LIGHTNING_NODE_TIMEOUT"
NODE_TIMEOUT_S = 600


def node_timeout() -> int:
    """Seconds to wait for the other nodes (``$LENET_LIGHTNING_NODE_TIMEOUT``, default 600)."""
    text = os.environ.get(NODE_TIMEOUT_ENV, "")
    if not text:
        return NODE_TIMEOUT_S
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{NODE_TIMEOUT_ENV}={text!r}: give the seconds to wait for the other nodes, e.g. 600")
    return int(text)


def strategy_for(options: RunOptions) -> str | Strategy:
    """``--strategy``; for several nodes, DDP that gives up waiting for them after :func:`node_timeout`.

    Torch waits 30 minutes by default (per collective, and for the nodes to join), silently.
    """
    if options.num_nodes > 1 and options.strategy in ("auto", "ddp"):
        return DDPStrategy(timeout=timedelta(seconds=node_timeout()))
    return options.strategy


def waiting_for_nodes(trainer: L.Trainer) -> str | None:
    """The line a multi-node run prints before it waits for the other nodes (``None`` for one node)."""
    if trainer.num_nodes < 2:
        return None
    environment = trainer.strategy.cluster_environment  # type: ignore[attr-defined]
    where = f"{environment.main_address}:{environment.main_port}"
    return (
        f"node {trainer.node_rank} of {trainer.num_nodes}: waiting for the other nodes to join at {where} "
        f"(start this command on the others with NODE_RANK set to their number, 1 to {trainer.num_nodes - 1}, "
        f"and MASTER_ADDR, MASTER_PORT set to this address and port); giving up after {node_timeout()} s "
        f"(${NODE_TIMEOUT_ENV})"
    )


def nodes_did_not_join(trainer: L.Trainer, error: Exception) -> UserError:
    """One line for a multi-node start whose other nodes never came."""
    environment = trainer.strategy.cluster_environment  # type: ignore[attr-defined]
    where = f"{environment.main_address}:{environment.main_port}"
    return UserError(
        f"the other nodes did not join at {where} within {node_timeout()} s ({str(error).splitlines()[0]}): "
        f"start this command on every node with NODE_RANK, MASTER_ADDR and MASTER_PORT set, or wait longer with "
        f"{NODE_TIMEOUT_ENV}=<seconds>"
    )


class RunFolderSync(Callback):
    """Makes every process agree with rank 0 on the run folder (torchrun/SLURM start ranks separately)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))


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


# --- evaluate -----------------------------------------------------------------------


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
    settings = resolve_settings(given, saved=checkpoint_settings(checkpoint))
    check_hardware({**settings, "devices": "1"})  # evaluation runs on one device, whatever training used
    class_names = (checkpoint.get("hyper_parameters") or {}).get("class_names")
    model = LeNetClassifier(class_names=class_names, **model_arguments(settings))
    # Built from the checkpoint already read (and checked) above, not read from disk a second time.
    model.load_state_dict(checkpoint["state_dict"])
    datamodule = CIFAR10DataModule(**data_arguments(settings))
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
