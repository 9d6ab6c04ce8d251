"""What the user sees while data is fetched: one-line notices on stderr and download progress."""

from __future__ import annotations

import math
import sys
import time

from tqdm import tqdm


def notice(message: str) -> None:
    """One line on stderr (a source dropped, a wait, a warning): never a traceback."""
    print(message, file=sys.stderr, flush=True)


def size_text(count: float) -> str:
    """``170.5 MB``, ``64 kB``: how byte counts read in messages."""
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def duration_text(seconds: float) -> str:
    """``42 s``, ``7 min`` or ``forever``."""
    if math.isinf(seconds):
        return "forever"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


class Progress:
    """Download progress on stderr: a tqdm bar on a terminal, else a plain line at each quarter."""

    def __init__(self, name: str, source: str, total: int | None, done: int) -> None:
        self.source, self.total, self.done = source, total, done
        self.first, self.started = done, time.monotonic()
        self.quarters_shown = 4 * done // total if total else 0
        self.bar = None
        if sys.stderr.isatty():
            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=source, file=sys.stderr)
        else:
            resuming = f", resuming at {size_text(done)}" if done else ""
            notice(f"downloading {name} from {source} ({size_text(total) if total else 'size unknown'}{resuming})")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        while self.total and self.quarters_shown < 4 and self.done * 4 >= (self.quarters_shown + 1) * self.total:
            self.quarters_shown += 1
            notice(self._line())

    def _line(self) -> str:
        assert self.total
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = (self.done - self.first) / elapsed
        left = (self.total - self.done) / rate if rate else math.inf
        return (
            f"{self.source}: {100 * self.done // self.total}% of {size_text(self.total)} "
            f"({size_text(rate)}/s, {duration_text(left)} left)"
        )
