"""Run folders: claimed atomically, found again (``--ckpt-path last``), left only by runs that started.

A run folder is ``<log_dir>/<name>/version_<n>/`` and holds everything of one run:
``config.yaml``, the TensorBoard event files, ``checkpoints/`` and the test results.
Checkpoints are written by :mod:`lenet_lightning.extensions.checkpointing` and read
(their digest checked) by :mod:`lenet_lightning.checkpoints`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lenet_lightning.errors import Interrupted, UserError, invocation
from lenet_lightning.extensions.callbacks import TrainingStart
from lenet_lightning.records import dump_config
from lenet_lightning.settings import (
    SETTINGS,
)

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


# --- runs that start -------------------------------------------------------------------


# Processes that Lightning launches for DDP inherit the run folder that rank 0 claimed.
RUN_DIR_ENV = "LENET_LIGHTNING_RUN_DIR"


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


def new_run_dir(settings: Mapping[str, Any]) -> tuple[Path, list[Path]]:
    """Rank 0 claims a fresh ``version_<n>`` folder; processes Lightning launches for DDP inherit it.

    Returns the folder and the folders created for it, innermost first.
    """
    experiment_dir = Path(settings["log_dir"]) / settings["name"]
    if launch_rank() == 0:
        missing = [folder for folder in (experiment_dir, *experiment_dir.parents) if not exists(folder)]
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
