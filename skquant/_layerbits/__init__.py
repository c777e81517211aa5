"""Layer bit-widths (Zhou et al.) without a network: the measured choices, the noise
law and the tolerated noise, the exact allocation."""

from .._compat import moved_name


def __getattr__(name):
    # names this path had before it was a package, for old pickles
    return moved_name(__name__, name)
