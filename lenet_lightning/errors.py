"""The one exception type the command line turns into a one-line message."""


class UserError(Exception):
    """A problem the user can fix; its message names the problem and the fix.

    The command line prints it as a single ``error: ...`` line and exits non-zero
    instead of showing a traceback (``--debug`` shows the traceback).
    """
