"""A minimal progress bar for long loops (no dependency beyond the standard library).

Every bar consults :func:`skquant.get_config`: ``skquant.set_config(progress=False)``
(or ``skquant.config_context(progress=False)``, or ``SKQUANT_PROGRESS=0`` in the
environment) silences them all.
"""

import sys
import time

from ._config import get_config


class progress:
    """Wrap an iterable and draw ``desc [#####     ] 5/10 3.2s`` on stderr.

    On a terminal the bar redraws in place; elsewhere (logs, CI) it prints one line
    when done, so logs stay readable. ``enabled=False`` silences it, and so does
    ``skquant.set_config(progress=False)`` (read when the loop starts).

    Parameters
    ----------
    iterable : iterable
        What to iterate over.
    desc : str, default=""
        Label in front of the bar.
    total : int, default=None
        Number of items; ``len(iterable)`` when it has one.
    enabled : bool, default=True
        Whether to draw anything (when the global ``progress`` setting allows it).
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
        if not (self.enabled and get_config()["progress"]):
            yield from self.iterable
            return
        start = time.perf_counter()
        tty = getattr(self.stream, "isatty", lambda: False)()
        n = 0
        if tty:
            self.stream.write("\r" + self._line(0, 0.0))
            self.stream.flush()
        try:
            for item in self.iterable:
                yield item
                n += 1
                if tty:
                    line = self._line(n, time.perf_counter() - start)
                    self.stream.write("\r" + line)
                    self.stream.flush()
        finally:  # also when the loop breaks early
            line = self._line(n, time.perf_counter() - start)
            self.stream.write(("\r" if tty else "") + line + "\n")
            self.stream.flush()


def run_in_batches(run, n, desc, *, first=1, target_seconds=0.25, announce_after=2.0):
    """Call ``run(start, stop)`` over ``[0, n)`` in batches, with a progress bar
    when the rest of the work is long.

    For numba kernels that cannot report progress themselves (one call per batch
    of neurons). The first batch (``first`` items) is timed. Its time includes
    one-off costs (JIT compilation, loading numba's cache, cold memory), so when it
    projects the rest to take more than ``announce_after`` seconds, a second batch
    of ``first`` items is timed to check. A progress bar is drawn only when that
    second measure also projects more than ``announce_after`` seconds for the
    rest; the rest then goes in batches of about ``target_seconds`` each, so the
    bar moves. Otherwise the rest goes in one call. With the global ``progress``
    setting off (:func:`skquant.set_config`), everything goes in one call.

    Parameters
    ----------
    run : callable
        ``run(start, stop)`` does the items ``start`` to ``stop - 1``.
    n : int
        Number of items.
    desc : str
        Label of the bar.
    first : int, default=1
        Size of the timed first batches (and the smallest batch).
    target_seconds : float, default=0.25
        Aimed duration of a batch while a bar is drawn.
    announce_after : float, default=2.0
        Projected seconds of the remaining work above which the bar is drawn.

    Examples
    --------
    >>> from skquant._common._progress import run_in_batches
    >>> seen = []
    >>> run_in_batches(lambda a, b: seen.extend(range(a, b)), 5, "demo")
    >>> seen
    [0, 1, 2, 3, 4]
    """
    if n <= 0:
        return
    if not get_config()["progress"]:
        run(0, n)
        return
    first = max(1, min(int(first), n))
    done = 0
    for _ in range(2):  # the first batch, then a warm one when the first says long
        size = min(first, n - done)
        if size <= 0:
            return
        start = time.perf_counter()
        run(done, done + size)
        per_item = (time.perf_counter() - start) / size
        done += size
        if per_item * (n - done) <= announce_after:
            if done < n:
                run(done, n)
            return
    batch = max(first, int(target_seconds / max(per_item, 1e-9)))
    for a in progress(range(done, n, batch), desc=desc):
        run(a, min(a + batch, n))
