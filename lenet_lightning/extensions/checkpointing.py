"""Checkpoints written atomically, named relative to their run folder, saved at the step a run stops."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lenet_lightning.checkpoints import DIGEST_KEY, state_digest
from lenet_lightning.errors import Interrupted
from lenet_lightning.leftovers import owner_tag, remove_abandoned
from lenet_lightning.records import RUN_KEY
from lenet_lightning.settings import RunOptions
from lenet_lightning.signals import agreed_signal

# ".tmp-<owner tag><8 hex digits>-<name>": what AtomicCheckpointIO writes before renaming.
TMP_PREFIX = ".tmp-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file, syncs it to disk, then renames it into place.

    A run killed at any moment (``kill -9`` included) leaves either the previous
    checkpoint or the new one, never a truncated file. Each write has its own
    temporary name, which names its writer (process space and id): the writer removes it,
    or, after a ``kill -9``, the next run in that folder once the writer is gone
    (:func:`~lenet_lightning.leftovers.remove_abandoned`); a live writer's file is never
    touched. Every checkpoint with weights also gets their digest
    (:func:`~lenet_lightning.checkpoints.state_digest`), which loading checks.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if isinstance(checkpoint.get("state_dict"), dict):
            # A copy: the caller's dict is Lightning's, and other plugins may still read it.
            checkpoint = {**checkpoint, DIGEST_KEY: state_digest(checkpoint["state_dict"])}
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TMP_PREFIX}{owner_tag()}{uuid.uuid4().hex[:8]}-{target.name}")
        try:
            with tmp.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


class RunCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose saved state names files relative to its folder.

    Lightning stores absolute paths (``dirpath``, ``best_model_path``, ...) in each
    checkpoint and, on resume, forgets the best score when ``dirpath`` differs, so a
    run started with a relative ``--log-dir`` from another folder, or a moved run
    folder, would pick a different best checkpoint. Stored relative to the
    checkpoint folder, the state is valid wherever the run folder is now.
    """

    PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        folder = str(self.dirpath)
        state["dirpath"] = "."
        for key in self.PATH_KEYS:
            state[key] = os.path.relpath(state[key], folder) if state.get(key) else state.get(key, "")
        state["best_k_models"] = {os.path.relpath(k, folder): v for k, v in state.get("best_k_models", {}).items()}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == ".":
            folder = str(self.dirpath)
            state_dict = {**state_dict, "dirpath": self.dirpath}
            for key in self.PATH_KEYS:
                if state_dict.get(key):
                    state_dict[key] = os.path.join(folder, state_dict[key])
            state_dict["best_k_models"] = {os.path.join(folder, k): v for k, v in state_dict["best_k_models"].items()}
        best = state_dict.get("best_model_path")
        if best and not os.path.isfile(best):
            return  # continued in a new run folder: the old best lies elsewhere, so this run chooses its own
        super().load_state_dict(state_dict)


class LastCheckpoint(RunCheckpoint):
    """``last.ckpt``: replaced at every epoch's end (after its validation), every N steps, and when stopped.

    A ``ModelCheckpoint`` only so that Lightning runs it after the other callbacks, like
    the best-checkpoint callback before it: ``last.ckpt`` then holds that callback's
    state of the same epoch. Its saving rule is its own.

    Lightning cannot resume exactly from a checkpoint taken between an epoch's last batch
    and its validation (it skips that validation and miscounts the epoch). So no save falls
    on an epoch's last batch; instead ``last.ckpt`` is also saved before each epoch's last
    batch. A run stopped during the last batch or the validation after it (SIGTERM, Ctrl-C,
    a crash) then resumes from there: it trains that batch again and validates, exactly as
    the uninterrupted run did, and loses one step instead of the whole epoch.

    When a stop signal has arrived (on any rank: :func:`~lenet_lightning.signals.agreed_signal`
    decides for all of them, before any of them takes part in a save), the step just
    trained is saved and :class:`~lenet_lightning.errors.Interrupted` stops the run.
    """

    def __init__(self, dirpath: Path, every_n_train_steps: int = 0) -> None:
        super().__init__(dirpath=dirpath, filename="last", save_top_k=0)
        self.path = dirpath / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self.saved_on_stop = False

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit" and trainer.is_global_zero:
            remove_abandoned(self.path.parent, TMP_PREFIX)  # of writers killed before

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stop = agreed_signal(trainer)
        batches = trainer.num_training_batches
        every = self.every_n_train_steps
        due = stop or batch_idx + 2 == batches or (every and trainer.global_step % every == 0)
        if due and batch_idx + 1 != batches and not trainer.fast_dev_run:  # type: ignore[attr-defined]
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_on_stop = stop is not None
        if stop is not None:
            raise Interrupted(stop)

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the epoch's save comes at its end, after validation."""

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]
            trainer.save_checkpoint(self.path, weights_only=False)
        stop = agreed_signal(trainer)
        if stop is not None:
            self.saved_on_stop = True
            raise Interrupted(stop)


class BestCheckpoint(RunCheckpoint):
    """``best-epoch<NNN>-acc<val/acc>.ckpt``: the epoch with the highest validation accuracy, one file.

    A resumed run validates again the epoch its checkpoint stopped in; when the stopped run
    had already saved that epoch's best file, Lightning would write a ``-v1`` copy beside it
    and keep both. Exact resume makes them the same checkpoint, so the file is replaced
    instead (``enable_version_counter=False``), and when training ends, best files of the
    folder that are not the best (``-vN`` copies left by earlier versions, a previous best
    left by a run killed between saving the new one and removing it) are removed.
    """

    FILE = re.compile(r"best-epoch[0-9]+-acc[0-9.]+(-v[0-9]+)?\.ckpt")

    def __init__(self, dirpath: Path) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-epoch{epoch:03d}-acc{val/acc:.4f}",
            monitor="val/acc",
            mode="max",
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        if not trainer.is_global_zero or trainer.fast_dev_run or not self.best_model_path:  # type: ignore[attr-defined]
            return
        best = Path(self.best_model_path).name
        for path in Path(str(self.dirpath)).iterdir():
            if self.FILE.fullmatch(path.name) and path.name != best:
                path.unlink(missing_ok=True)


class SaveRunOptions(Callback):
    """Stores the run options in every checkpoint, beside Lightning's model and DataModule hyperparameters.

    Together they are the run's settings (``records.checkpoint_settings`` reads them back),
    so resuming, evaluating and exporting need no flags.
    """

    def __init__(self, options: RunOptions) -> None:
        self.options = dataclasses.asdict(options)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_KEY] = self.options
