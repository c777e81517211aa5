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
