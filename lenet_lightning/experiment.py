"""Building and running an experiment: train, evaluate a checkpoint, classify files.

Each entry point takes resolved settings (see :mod:`lenet_lightning.settings`) or a
checkpoint and returns its results; printing the per-class table is part of the
result, nothing here parses a command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lenet_lightning.callbacks import AveragedWeights, FiniteLossGuard, StderrProgressBar
from lenet_lightning.checkpoints import load_checkpoint
from lenet_lightning.data import CIFAR10DataModule
from lenet_lightning.errors import PreemptedError, UserError
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.pictures import TensorBoardPictures, confusion_image
from lenet_lightning.reporting import format_table, metrics_from_confusion, write_json
from lenet_lightning.runs import (
    SETTINGS_KEY,
    VERSION_PREFIX,
    AtomicCheckpointIO,
    LastCheckpoint,
    RunCheckpoint,
    SaveSettings,
    claim_run_dir,
    run_dir_of,
)
from lenet_lightning.settings import DATA_KEYS, MODEL_KEYS, RUN_SETTINGS, check_hardware, check_numbers, dump_config

# Processes that Lightning launches for DDP inherit the run folder that rank 0 claimed.
RUN_DIR_ENV = "LENET_LIGHTNING_RUN_DIR"


def quiet_console() -> None:
    """Keep the console to what users can act on: progress, results, problems."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)
    # Our loaders are in-memory tensors: advice about DataLoader workers does not apply.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    # "best" means our monitored checkpoint, which is the first callback by construction.
    warnings.filterwarnings("ignore", message=".*configured with multiple `ModelCheckpoint` callbacks.*")
    # A resumed run writes into its own checkpoints/ folder again, by design.
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
    # Raised inside PyTorch/Lightning (graph tracing, pytree), not by anything a user does.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


# --- train --------------------------------------------------------------------------


def train(settings: Mapping[str, Any], resume_from: Path | None = None, fast_dev_run: bool = False) -> dict[str, Any]:
    """Fit, then test the best checkpoint; print the per-class table, write test_metrics.json, return the metrics.

    ``fast_dev_run`` (one batch of each stage) writes nothing: no run folder, no results.
    """
    settings = {key: settings[key] for key in RUN_SETTINGS}
    check_numbers(settings)
    check_hardware(settings)
    L.seed_everything(settings["seed"], workers=True, verbose=False)
    datamodule = build_datamodule(settings)
    model = build_model(settings, datamodule.classes)
    if resume_from:
        run_dir = run_dir_of(resume_from)
    elif fast_dev_run:
        run_dir = Path(settings["log_dir"]) / settings["name"] / "fast_dev_run"  # never created: nothing is saved
    else:
        run_dir = new_run_dir(settings)
    writes = launch_rank() == 0 and not fast_dev_run
    if writes:
        (run_dir / "config.yaml").write_text(dump_config(settings))
    logger = build_logger(run_dir)
    folder = RunFolderSync(run_dir)
    trainer = build_trainer(settings, logger, run_dir, fast_dev_run, [SaveSettings(settings), folder])
    fit(trainer, model, datamodule, resume_from, run_dir if writes and not resume_from else None)
    best = None if fast_dev_run else "best"
    trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True, verbose=False)
    metrics = report_test(trainer, model, None if fast_dev_run else folder.run_dir, "test_metrics.json")
    if fast_dev_run:
        return metrics
    callback = trainer.checkpoint_callback
    best_val = callback.best_model_score if isinstance(callback, ModelCheckpoint) else None
    # The HPARAMS tab compares runs by these two numbers.
    hp_metrics = {"hp/test_acc": metrics["test/acc"]}
    if best_val is not None:
        hp_metrics["hp/val_acc"] = float(best_val)
    logger.log_hyperparams({key: str(value) if value is None else value for key, value in settings.items()}, hp_metrics)
    logger.finalize("success")  # flushes the event file now, not whenever the process happens to exit
    return metrics


def launch_rank() -> int:
    """This process's global rank as its launcher (torchrun, SLURM, Lightning) set it, before any Trainer exists."""
    return int(getattr(rank_zero_only, "rank", 0))


def fit(
    trainer: L.Trainer,
    model: LeNetClassifier,
    datamodule: CIFAR10DataModule,
    resume_from: Path | None,
    claimed_dir: Path | None,
) -> None:
    """``trainer.fit``; SIGTERM becomes :class:`PreemptedError`, and a new run's folder goes if it never started.

    Data problems surface inside ``fit`` (``prepare_data``/``setup``), after the run folder
    was claimed: a folder that holds nothing but its ``config.yaml`` then goes again, so a
    failed start does not shift the numbers of later runs.
    """
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException:
        end_progress_bar(trainer)
        last = next((c for c in trainer.checkpoint_callbacks if isinstance(c, LastCheckpoint)), None)
        if last is None or not last.path.is_file():
            raise PreemptedError("stopped by SIGTERM before the first checkpoint: start the run again") from None
        saved = "last.ckpt saved" if last.saved_on_sigterm else "last.ckpt holds the latest epoch's end"
        raise PreemptedError(
            f"stopped by SIGTERM at step {trainer.global_step}, {saved}; resume with: "
            f"python train.py --ckpt-path {last.path}"
        ) from None
    except BaseException:
        if claimed_dir is not None and {p.name for p in claimed_dir.iterdir()} <= {"config.yaml"}:
            shutil.rmtree(claimed_dir, ignore_errors=True)
        raise


def end_progress_bar(trainer: L.Trainer) -> None:
    """Close the training bar of a stopped fit, so that it is not redrawn after the last message."""
    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar):
        with contextlib.suppress(TypeError):  # no bar was made yet
            bar.train_progress_bar.close()


def new_run_dir(settings: Mapping[str, Any]) -> Path:
    """Rank 0 claims a fresh ``version_<n>`` folder; processes Lightning launches for DDP inherit it."""
    if launch_rank() == 0:
        run_dir = claim_run_dir(Path(settings["log_dir"]) / settings["name"])
        os.environ[RUN_DIR_ENV] = str(run_dir.absolute())
        return run_dir
    # Other ranks never write; under torchrun/SLURM they learn rank 0's folder in RunFolderSync.
    return Path(os.environ.get(RUN_DIR_ENV) or Path(settings["log_dir"]) / settings["name"] / "version_unknown")


def build_datamodule(settings: Mapping[str, Any]) -> CIFAR10DataModule:
    return CIFAR10DataModule(**{key: settings[key] for key in DATA_KEYS})


def build_model(settings: Mapping[str, Any], class_names: tuple[str, ...]) -> LeNetClassifier:
    return LeNetClassifier(class_names=class_names, **{key: settings[key] for key in MODEL_KEYS})


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
    settings: Mapping[str, Any],
    logger: TensorBoardLogger,
    run_dir: Path,
    fast_dev_run: bool,
    extra_callbacks: list[Callback],
) -> L.Trainer:
    best = RunCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best-epoch{epoch:03d}-acc{val/acc:.4f}",
        monitor="val/acc",
        mode="max",
        auto_insert_metric_name=False,
    )
    last = LastCheckpoint(run_dir / "checkpoints", every_n_train_steps=settings["checkpoint_every_n_steps"])
    # A redraw per step costs as much as a LeNet step at batch 4 (benchmarks/throughput.py).
    progress = StderrProgressBar(refresh_rate=10)
    callbacks: list[Callback] = [best, last, progress, TensorBoardPictures(), FiniteLossGuard(), *extra_callbacks]
    if settings["ema_decay"] > 0:
        callbacks.append(AveragedWeights(decay=settings["ema_decay"]))
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
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            fast_dev_run=fast_dev_run,
            deterministic=settings["deterministic"],
            log_every_n_steps=settings["log_every_n_steps"],
        )
    except (MisconfigurationException, ValueError) as error:
        raise UserError(f"{error} (check --accelerator, --devices, --strategy and --precision)") from None
    if settings["deterministic"]:
        # deterministic=True also fills every new tensor with NaN, to expose reads of
        # uninitialised memory; nothing here reads any, and the fills cost ~0.5 ms a step.
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return trainer


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


def evaluate(checkpoint_path: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Test a checkpoint with the settings stored in it; ``overrides`` (flags given now) win."""
    checkpoint = load_checkpoint(checkpoint_path)
    saved = checkpoint.get(SETTINGS_KEY, {})
    hardware = {**saved, **{k: v for k, v in overrides.items() if v is not None}, "devices": "1"}
    check_hardware(hardware)  # evaluation runs on one device, whatever training used
    data = {**checkpoint.get("datamodule_hyper_parameters", {}), **_given(overrides, DATA_KEYS)}
    # --tta (or --no-tta) given now wins over the training run's setting.
    tta = {"tta": overrides["tta"]} if overrides.get("tta") is not None else {}
    # Built from the checkpoint already read (and checked) above, not read from disk a second time.
    model = LeNetClassifier(**{**checkpoint["hyper_parameters"], **tta})
    model.load_state_dict(checkpoint["state_dict"])
    datamodule = CIFAR10DataModule(**data)
    trainer = L.Trainer(
        accelerator=hardware["accelerator"],
        devices=1,
        precision=hardware["precision"],
        logger=False,
        enable_checkpointing=False,
    )
    trainer.test(model, datamodule=datamodule, verbose=False)
    # Its own file, named after the checkpoint and data: the training run's test results stay as they were.
    stem = f"eval_{checkpoint_path.stem}_{datamodule.data_dir.absolute().name}"
    run_dir = run_dir_of(checkpoint_path)
    metrics = report_test(trainer, model, run_dir, f"{stem}_metrics.json")
    print(f"evaluation of '{checkpoint_path}' on '{datamodule.data_dir}': {run_dir / stem}_metrics.json")
    return metrics


def _given(values: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: values[key] for key in keys if values.get(key) is not None}
