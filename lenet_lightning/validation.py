"""Checks that constructors run on their own arguments, raising :class:`SettingError` naming the parameter.

Values reach the classes from Python calls, ``train.py`` flags, YAML files and
LightningCLI alike, so each class checks its arguments itself: type, range and
finiteness, with messages such as ``val_size must be at least 1, got 0``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lenet_lightning.errors import SettingError


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` is one of ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise SettingError(name, f"must be one of {', '.join(options)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` is ``True`` or ``False`` (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise SettingError(name, f"must be true or false, got {value!r}")
    return value


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` is a whole number (an ``int``, not a bool or a float) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingError(name, f"must be a whole number, got {value!r}")
    _check_bounds(name, value, minimum, maximum)
    return value


def check_float(
    name: str,
    value: Any,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """``value`` is a finite number within ``[minimum, maximum]``, ``> above`` and ``< below``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(name, f"must be a number, got {value!r}")
    if not math.isfinite(value):
        raise SettingError(name, f"must be a finite number, got {value}")
    _check_bounds(name, value, minimum, maximum)
    if above is not None and not value > above:
        raise SettingError(name, f"must be above {above}, got {value}")
    if below is not None and not value < below:
        raise SettingError(name, f"must be below {below}, got {value}")
    return float(value)


def check_path(name: str, value: Any) -> str:
    """``value`` is a non-empty path or name (``str`` or ``Path``)."""
    if not isinstance(value, (str, Path)) or not str(value):
        raise SettingError(name, f"must be a non-empty path or name, got {value!r}")
    return str(value)


def _check_bounds(name: str, value: float, minimum: float | None, maximum: float | None) -> None:
    if minimum is not None and value < minimum:
        raise SettingError(name, f"must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise SettingError(name, f"must be at most {maximum}, got {value}")
