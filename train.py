"""Train LeNet-5 on CIFAR-10: ``python train.py --help`` lists every flag.

The implementation lives in :mod:`lenet_lightning.cli` so that it is importable
and installed with the package (also as the ``lenet-lightning`` command).
"""

import atexit
import os
import sys

# run()'s exit code once it has returned; empty while it runs, and after an uncaught exception.
_finished: list[int] = []


def _skip_teardown() -> None:
    """Leave once every other exit handler has run, without the interpreter's teardown.

    Registered before anything else is imported, so it runs last. By then ``run()`` has
    written and closed every file; freeing the thousands of modules Lightning imports would
    only add time (``benchmarks/fixed_cost.py``, docs/performance.md). After an uncaught exception (or
    argparse's own exit) Python ends as usual.
    """
    if _finished:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_finished[0])


atexit.register(_skip_teardown)

# After the exit handler: it must run last. Importing Lightning takes seconds: a Ctrl-C then is no traceback either.
try:
    from lenet_lightning.cli import build_parser, main, run
except KeyboardInterrupt:
    sys.stderr.write("stopped by SIGINT (Ctrl-C) while starting: nothing was done\n")
    os._exit(130)

__all__ = ["build_parser", "launch", "main"]


def launch(argv: list[str] | None = None) -> None:
    """Run the command line and exit with its code (what ``python train.py`` does)."""
    _finished.append(run(argv))
    sys.exit(_finished[0])


if __name__ == "__main__":
    launch()
