"""A minimal progress bar for long loops (no dependency beyond the standard library)."""

import sys
import time


class progress:
    """Wrap an iterable and draw ``desc [#####     ] 5/10 3.2s`` on stderr.

    On a terminal the bar redraws in place; elsewhere (logs, CI) it prints one line
    when done, so logs stay readable. ``enabled=False`` silences it.

    Parameters
    ----------
    iterable : iterable
        What to iterate over.
    desc : str, default=""
        Label in front of the bar.
    total : int, default=None
        Number of items; ``len(iterable)`` when it has one.
    enabled : bool, default=True
        Whether to draw anything.
    stream : file, default=None
        Where to draw; ``sys.stderr`` when ``None``.
    """

    def __init__(self, iterable, desc="", total=None, enabled=True, stream=None):
        self.iterable = iterable
        self.desc = desc
        self.total = (
            len(iterable) if total is None and hasattr(iterable, "__len__") else total
        )
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""

    def set_postfix(self, text):
        """Show ``text`` after the counter on the next redraw."""
        self.postfix = str(text)

    def _line(self, n, elapsed):
        width = 24
        if self.total:
            filled = int(width * n / self.total)
            bar = "#" * filled + " " * (width - filled)
            count = f"{n}/{self.total}"
        else:
            bar, count = "", str(n)
        post = f" {self.postfix}" if self.postfix else ""
        return f"{self.desc} [{bar}] {count} {elapsed:.1f}s{post}"

    def __iter__(self):
        start = time.perf_counter()
        tty = getattr(self.stream, "isatty", lambda: False)()
        n = 0
        if self.enabled and tty:
            self.stream.write("\r" + self._line(0, 0.0))
            self.stream.flush()
        try:
            for item in self.iterable:
                yield item
                n += 1
                if self.enabled and tty:
                    line = self._line(n, time.perf_counter() - start)
                    self.stream.write("\r" + line)
                    self.stream.flush()
        finally:  # also when the loop breaks early
            if self.enabled:
                line = self._line(n, time.perf_counter() - start)
                self.stream.write(("\r" if tty else "") + line + "\n")
                self.stream.flush()


def run_in_batches(run, n, desc, *, first=1, target_seconds=0.25, announce_after=1.0):
    """Call ``run(start, stop)`` over ``[0, n)`` in batches, with a progress bar
    when the work is long.

    The first batch (``first`` items) is timed; the rest go in batches of about
    ``target_seconds`` each, and a progress bar is drawn when they are projected to
    take more than ``announce_after`` seconds. For numba kernels that cannot
    report progress themselves (one call per batch of neurons).

    Parameters
    ----------
    run : callable
        ``run(start, stop)`` does the items ``start`` to ``stop - 1``.
    n : int
        Number of items.
    desc : str
        Label of the bar.
    first : int, default=1
        Size of the timed first batch (and the smallest batch).
    target_seconds : float, default=0.25
        Aimed duration of a batch.
    announce_after : float, default=1.0
        Projected seconds above which the bar is drawn.
    """
    first = max(1, min(int(first), n))
    if n == 0:
        return
    start = time.perf_counter()
    run(0, first)
    per_item = (time.perf_counter() - start) / first
    rest = n - first
    if rest <= 0:
        return
    batch = max(first, int(target_seconds / max(per_item, 1e-9)))
    starts = range(first, n, batch)
    for a in progress(starts, desc=desc, enabled=per_item * rest > announce_after):
        run(a, min(a + batch, n))
