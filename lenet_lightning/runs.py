"""Run folders and their checkpoints: claimed atomically, written atomically, loaded safely.

A run folder is ``<log_dir>/<name>/version_<n>/`` and holds everything of one run:
``config.yaml``, the TensorBoard event files, ``checkpoints/`` and the test results.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import socket
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from lenet_lightning.errors import Interrupted, UserError, invocation
from lenet_lightning.module import LeNetClassifier
from lenet_lightning.settings import RUN_KEY, SETTINGS, RunOptions
from lenet_lightning.signals import agreed_signal

VERSION_PREFIX = "version_"
VERSION_PATTERN = re.compile(r"version_([0-9]+)")
# Written when a run has been tested, after everything else: a run folder holding it has finished.
FINISHED_MARK = "test_metrics.json"


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
    return max((number for number, _ in run_dirs(experiment_dir)), default=-1) + 1


def run_dirs(experiment_dir: Path) -> list[tuple[int, Path]]:
    """The run folders under ``experiment_dir``, oldest first: exactly ``version_<digits>``, nothing else.

    Copies and backups a user leaves beside them (``version_1_0``, ``version_0.bak``) are
    not run folders and are never parsed as numbers.
    """
    if not experiment_dir.is_dir():
        return []
    found = [(VERSION_PATTERN.fullmatch(entry.name), entry) for entry in experiment_dir.iterdir()]
    return sorted((int(match[1]), entry) for match, entry in found if match and entry.is_dir())


def own_run_dir(checkpoint_path: Path) -> Path | None:
    """The train.py run folder a checkpoint lies in (symlinks resolved), or ``None`` when it lies elsewhere.

    A run folder is ``version_<digits>/`` holding ``config.yaml`` of this project's settings and
    the checkpoint in ``checkpoints/``; a copy in a user's own folder, or a LightningCLI or plain
    ``Trainer`` run, is not one.
    """
    path = checkpoint_path.resolve()
    folder = path.parent.parent
    if path.parent.name != "checkpoints" or not VERSION_PATTERN.fullmatch(folder.name):
        return None
    try:
        config = yaml.safe_load((folder / "config.yaml").read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return folder if isinstance(config, dict) and config and set(config) <= set(SETTINGS) else None


def check_resumable(checkpoint_path: Path) -> None:
    """Refuse to resume a finished run: a resume would test it again and rewrite its results."""
    run_dir = own_run_dir(checkpoint_path)
    if run_dir is not None and is_finished(run_dir):
        raise UserError(
            f"the run in '{run_dir}' has finished (its results are in {FINISHED_MARK}), so resuming it would "
            f"rewrite them: evaluate it with {invocation()} --evaluate --ckpt-path {checkpoint_path}, or train "
            f"longer in a new run with --config {run_dir / 'config.yaml'} --max-epochs <more>"
        )


def is_finished(run_dir: Path) -> bool:
    """Whether the run trained to its end and was tested (its test results are written last)."""
    return (run_dir / FINISHED_MARK).is_file()


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


def find_last_checkpoint(log_dir: Path, name: str, unfinished: bool = False) -> Path:
    """The ``last.ckpt`` of the newest run under ``<log_dir>/<name>/`` (``--ckpt-path last``).

    ``unfinished``: of the newest run that has not finished (what resuming means).
    """
    runs = [run_dir for _, run_dir in run_dirs(log_dir / name) if (run_dir / "checkpoints" / "last.ckpt").is_file()]
    candidates = [run_dir for run_dir in runs if not (unfinished and is_finished(run_dir))]
    if not candidates and runs:
        raise UserError(
            f"every run under '{log_dir / name}' has finished, so there is nothing to resume: start a new run, or "
            f"evaluate the newest with {invocation()} --evaluate --ckpt-path last"
        )
    if not candidates:
        raise UserError(
            f"no last.ckpt under '{log_dir / name}': train first, or pass --ckpt-path with a checkpoint's path"
        )
    return candidates[-1] / "checkpoints" / "last.ckpt"


# --- writing checkpoints ----------------------------------------------------------------


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary file, syncs it to disk, then renames it into place.

    A run killed at any moment (``kill -9`` included) leaves either the previous
    checkpoint or the new one, never a truncated file. Each write has its own
    temporary name, which names its writer (host and process id): the writer removes
    it, or, after a ``kill -9``, the next run in that folder once the writer is gone
    (:func:`remove_stale_temporary_files`); a live writer's file is never touched.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{host_name()}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with tmp.open("wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


# ".<name>.<host>.<pid>.<32 hex digits>.tmp": what AtomicCheckpointIO writes before renaming.
TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>[0-9]+)\.[0-9a-f]{32}\.tmp")


def host_name() -> str:
    """This host's name as temporary file names carry it (without dots, which separate the name's parts)."""
    return socket.gethostname().replace(".", "_")


def remove_stale_temporary_files(folder: Path) -> list[Path]:
    """Remove the temporary checkpoint files in ``folder`` whose writer, a process on this host, is gone.

    Files of live processes, of other hosts (a shared file system) and of other programs stay.
    Returns the files removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = host_name()
    for path in folder.iterdir():
        match = TEMPORARY_NAME.fullmatch(path.name)
        if match and match["host"] == host and not process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            remove_stale_temporary_files(self.path.parent)  # of writers killed before

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

    Together they are the run's settings (``settings.checkpoint_settings`` reads them back),
    so resuming, evaluating and exporting need no flags.
    """

    def __init__(self, options: RunOptions) -> None:
        self.options = dataclasses.asdict(options)

    @override
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[RUN_KEY] = self.options


# --- reading checkpoints ----------------------------------------------------------------


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: tensors and plain data only.

    A checkpoint that carries any other pickled object (which could run code) is
    refused before anything in it is executed.
    """
    if path.is_dir():
        raise UserError(f"--ckpt-path '{path}' is a folder: pass a .ckpt file from a run's checkpoints/ folder")
    if not path.is_file():
        raise UserError(f"checkpoint '{path}' does not exist: pass the path of a .ckpt file from a run's checkpoints/")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # PyTorch's message suggests loading with weights_only=False: exactly what must not happen.
        if "Weights only load failed" in str(error):
            unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
            raise UserError(
                f"refused to load '{path}': it holds Python objects beyond tensors and plain data "
                f"({unsafe.group(1) if unsafe else 'unsupported content'}), which could run code; "
                "use a checkpoint written by train.py"
            ) from None
        raise UserError(f"'{path}' is not a readable checkpoint: pass a .ckpt written by train.py") from None
    except Exception as error:  # a damaged or foreign file: RuntimeError, EOFError, KeyError, ...
        reason = str(error).split(". ")[0] if isinstance(error, (RuntimeError, OSError)) else "not a PyTorch file"
        raise UserError(f"'{path}' is not a readable checkpoint ({reason}): pass a .ckpt written by train.py") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise UserError(f"'{path}' is not a lenet-lightning checkpoint: pass a .ckpt written by train.py")
    if not any(key.startswith("net.") for key in checkpoint["state_dict"]):
        raise UserError(f"'{path}' is a checkpoint of another model: pass a .ckpt written by train.py")
    check_weights(path, checkpoint)
    return checkpoint


def check_weights(path: Path, checkpoint: dict[str, Any]) -> None:
    """Every weight of the model the checkpoint describes is there, with its shape (else one line)."""
    try:
        expected = LeNetClassifier(**checkpoint["hyper_parameters"]).state_dict()
    except (TypeError, UserError) as error:
        raise UserError(f"'{path}' holds settings this version cannot build a model from ({error})") from None
    found = checkpoint["state_dict"]
    missing = sorted(set(expected) - set(found))
    wrong = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        problem = f"missing {missing[:3]}" if missing else f"{wrong[0]} has shape {tuple(found[wrong[0]].shape)}"
        raise UserError(
            f"'{path}' does not match the model it describes ({problem}, expected "
            f"{tuple(expected[wrong[0]].shape) if wrong and not missing else 'all weights'}): "
            "it is damaged or was edited; use another checkpoint of the run (e.g. last.ckpt or best-*.ckpt)"
        )
