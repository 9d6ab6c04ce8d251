"""Run folders and their checkpoints: claimed atomically, written atomically with a digest.

A run folder is ``<log_dir>/<name>/version_<n>/`` and holds everything of one run:
``config.yaml``, the TensorBoard event files, ``checkpoints/`` and the test results.
Checkpoints are read (and their digest checked) by :mod:`lenet_lightning.checkpoints`.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lenet_lightning.checkpoints import DIGEST_KEY, SETTINGS_KEY, state_digest
from lenet_lightning.errors import UserError

VERSION_PREFIX = "version_"


# --- run folders ---------------------------------------------------------------------


def claim_run_dir(experiment_dir: Path) -> Path:
    """Create and return the next free ``version_<n>`` folder under ``experiment_dir``.

    The folder is created exclusively (``mkdir`` fails if it exists), so two runs
    started at the same moment in the same log folder get different folders.
    """
    check_writable(experiment_dir)
    while True:
        candidate = experiment_dir / f"{VERSION_PREFIX}{next_version(experiment_dir)}"
        try:
            candidate.mkdir()
        except FileExistsError:
            continue  # another run took it between listing and creating: take the next one
        return candidate


def next_version(experiment_dir: Path) -> int:
    """One more than the highest ``version_<n>`` under ``experiment_dir`` (0 if none)."""
    suffixes = [p.name[len(VERSION_PREFIX) :] for p in experiment_dir.glob(f"{VERSION_PREFIX}*")]
    return max((int(s) for s in suffixes if s.isdigit()), default=-1) + 1


def check_writable(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise UserError(
            f"cannot write to log folder '{folder}' ({error.strerror}): pass a writable --log-dir"
        ) from None


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run folder a checkpoint belongs to (``.../version_n/checkpoints/x.ckpt`` -> ``.../version_n``)."""
    parent = checkpoint_path.absolute().parent
    return parent.parent if parent.name == "checkpoints" else parent


def find_last_checkpoint(log_dir: Path, name: str) -> Path:
    """The ``last.ckpt`` of the newest run under ``<log_dir>/<name>/`` (for ``--ckpt-path last``)."""
    candidates = sorted(
        (log_dir / name).glob(f"{VERSION_PREFIX}*/checkpoints/last.ckpt"),
        key=lambda path: int(path.parent.parent.name.removeprefix(VERSION_PREFIX)),
    )
    if not candidates:
        raise UserError(
            f"no last.ckpt under '{log_dir / name}': train first, or pass --ckpt-path with a checkpoint's path"
        )
    return candidates[-1]


# --- writing checkpoints ----------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file, syncs it to disk, then renames it into place.

    A run killed at any moment (``kill -9`` included) leaves either the previous
    checkpoint or the new one, never a truncated file. Each write has its own
    temporary name, and only the writer removes it (two runs never touch each
    other's files). Every checkpoint with weights also gets their digest
    (:func:`~lenet_lightning.checkpoints.state_digest`), which loading checks.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if isinstance(checkpoint.get("state_dict"), dict):
            # A copy: the caller's dict is Lightning's, and other plugins may still read it.
            checkpoint = {**checkpoint, DIGEST_KEY: state_digest(checkpoint["state_dict"])}
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
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
        super().load_state_dict(state_dict)


class LastCheckpoint(RunCheckpoint):
    """``last.ckpt``: replaced at every epoch's end (after its validation), every N steps, and on SIGTERM.

    A ``ModelCheckpoint`` only so that Lightning runs it after the other callbacks, like
    the best-checkpoint callback before it: ``last.ckpt`` then holds that callback's
    state of the same epoch. Its saving rule is its own. A step save that falls on an
    epoch's last batch is left to the epoch-end save: Lightning cannot resume exactly
    from a checkpoint taken between an epoch's last batch and its validation (it skips
    that validation and miscounts the epoch).
    """

    def __init__(self, dirpath: Path, every_n_train_steps: int = 0) -> None:
        super().__init__(dirpath=dirpath, filename="last", save_top_k=0)
        self.path = dirpath / "last.ckpt"
        self.every_n_train_steps = every_n_train_steps
        self.saved_on_sigterm = False
        self._sigterm_at_batch_start = False

    @override
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Under DDP Lightning shares rank 0's SIGTERM with every rank just before this hook, so this
        # snapshot is the same on all ranks (they must all take part in a save).
        self._sigterm_at_batch_start = trainer.received_sigterm

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.fast_dev_run or batch_idx + 1 == trainer.num_training_batches:  # type: ignore[attr-defined]
            return
        # Lightning stops after this step when SIGTERM (a preemption) has arrived: save it first.
        stopping = trainer.received_sigterm if trainer.world_size == 1 else self._sigterm_at_batch_start
        every = self.every_n_train_steps
        if stopping or (every and trainer.global_step % every == 0):
            trainer.save_checkpoint(self.path, weights_only=False)
            self.saved_on_sigterm = stopping

    @override
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing: the epoch's save comes at its end, after validation."""

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:  # type: ignore[attr-defined]
            trainer.save_checkpoint(self.path, weights_only=False)


class SaveSettings(Callback):
    """Stores the run's resolved settings in every checkpoint, so resume needs no flags."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[SETTINGS_KEY] = self.settings
