"""The exceptions the command line turns into one line and an exit code."""


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix.

    The command line prints it as a single ``error: ...`` line and exits with code 2
    instead of showing a traceback (``--debug`` shows the traceback).
    """


class PreemptedError(Exception):
    """Training was stopped by SIGTERM (a scheduler's preemption) after saving ``last.ckpt``.

    The command line prints its message (how to resume) and exits with code 143,
    the shell's code for "terminated by SIGTERM", so a scheduler never records success.
    """

    exit_code = 143
