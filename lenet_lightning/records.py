"""One settings record per run: written to ``config.yaml`` and checkpoints, read back by one function.

The resolved settings go into the run folder's ``config.yaml`` (plain YAML that
``--config`` and ``yaml.safe_load`` read back); the checkpoints hold the same
values as the model's ``hyper_parameters``, the DataModule's
``datamodule_hyper_parameters`` and the run options (:data:`RUN_KEY`), and
:func:`checkpoint_settings` reads them back for evaluating, exporting and resuming,
whichever way in wrote the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lenet_lightning.errors import UserError
from lenet_lightning.settings import DATA_KEYS, MODEL_KEYS, SETTINGS, resolve_settings

# The run options a checkpoint written by train.py holds (the model's and data's are Lightning's own keys).
RUN_KEY = "lenet_lightning_run"
# Checkpoints of earlier releases held every setting, flat, under this key.
EARLIER_KEY = "lenet_lightning_settings"


def checkpoint_record(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint holds, whichever way in saved it (only those it holds).

    train.py's checkpoints hold the run options under ``RUN_KEY``; LightningCLI's and a plain
    ``Trainer``'s hold only the model's and the DataModule's hyperparameters; earlier releases
    held everything under ``EARLIER_KEY``.
    """
    record: dict[str, Any] = dict(checkpoint.get(EARLIER_KEY) or {})
    record.update(checkpoint.get(RUN_KEY) or {})
    record.update({k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k in MODEL_KEYS})
    record.update({k: v for k, v in (checkpoint.get("datamodule_hyper_parameters") or {}).items() if k in DATA_KEYS})
    return {key: value for key, value in record.items() if key in SETTINGS}


def checkpoint_settings(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting of the run a checkpoint comes from (those it does not hold take their defaults)."""
    return resolve_settings({}, saved=checkpoint_record(checkpoint))


def load_config(path: Path) -> dict[str, Any]:
    """Read a YAML file of settings (a run's ``config.yaml``), refusing what no run can use in one line.

    Checks the file (readable, UTF-8, YAML, a mapping of known keys); the values are
    checked by the classes that take them (:func:`validate_settings`).
    """
    try:
        text = path.read_bytes().decode("utf-8")
        loaded = yaml.safe_load(text)
    except OSError as error:
        raise UserError(f"cannot read --config '{path}' ({error.strerror}): pass a run's config.yaml") from None
    except UnicodeDecodeError as error:
        raise UserError(
            f"--config '{path}' is not UTF-8 text (byte {error.start}): save it as UTF-8 or regenerate it "
            "with train.py --print-config"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(
            f"--config '{path}' is not valid YAML ({str(error).splitlines()[0]}): fix or regenerate it"
        ) from None
    if not isinstance(loaded, dict):
        raise UserError(f"--config '{path}' holds no settings: pass a run's config.yaml (key: value per line)")
    unknown = sorted(str(key) for key in set(loaded) - set(SETTINGS))
    if unknown:
        raise UserError(
            f"--config '{path}' has unknown settings {unknown}: remove them (known: see train.py --print-config)"
        )
    return loaded


def dump_config(settings: Mapping[str, Any]) -> str:
    """The settings as plain YAML, in ``SETTINGS`` order (what ``--config`` and ``yaml.safe_load`` read back)."""
    return yaml.safe_dump({key: plain(settings[key]) for key in SETTINGS}, sort_keys=False)


def plain(value: Any) -> Any:
    """A value as plain YAML/JSON data (paths as strings, tuples as lists)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [plain(item) for item in value]
    return value
