"""The exceptions the command line turns into one line and an exit code."""

from __future__ import annotations

import os
import sys


def invocation() -> str:
    """How this process was started (``python train.py`` or ``lenet-lightning``), for messages that say what to run."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if program.endswith(".py") or not program or program.startswith("-"):
        return f"python {program if program.endswith('.py') else 'train.py'}"
    return program


class UserError(ValueError):
    """A problem the user can fix; its message names the problem and the fix.

    A ``ValueError``, so library callers catch it as one. The command line prints it as a
    single ``error: ...`` line and exits with code 2 instead of showing a traceback
    (``--debug`` shows the traceback).
    """


class SettingError(UserError):
    """A constructor argument no run can use; ``parameter`` names it, ``problem`` says what it needs.

    The message reads ``"<parameter> <problem>"`` (``val_size must be at least 1, got 0``);
    each front door rewords the parameter as its users know it (``--val-size`` for
    ``train.py``, ``--data.val_size`` for LightningCLI).
    """

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter} {problem}")
        self.parameter = parameter
        self.problem = problem


class PreemptedError(Exception):
    """Training was stopped by SIGTERM (a scheduler's preemption) after saving ``last.ckpt``.

    The command line prints its message (how to resume) and exits with code 143,
    the shell's code for "terminated by SIGTERM", so a scheduler never records success.
    """

    exit_code = 143
