"""The exceptions the command line turns into one line and an exit code."""

from __future__ import annotations

import os
import signal
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


class Interrupted(BaseException):
    """SIGTERM (a scheduler's preemption, ``kill``) or SIGINT (Ctrl-C) stopped the work at a safe point.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    swallows it. The message is the one line the command line prints: what was kept (which step
    ``last.ckpt`` holds, or that nothing was written) and what to run next. The exit code is the
    shell's for death by that signal (143 for SIGTERM, 130 for SIGINT), so a scheduler or a
    script never records an interrupted run as a success.
    """

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"stopped by {signal_name(signum)}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])


def signal_name(signum: int) -> str:
    """``SIGTERM``, ``SIGINT (Ctrl-C)``: how the stop messages name a signal."""
    name = signal.Signals(signum).name
    return f"{name} (Ctrl-C)" if signum == signal.SIGINT else name
