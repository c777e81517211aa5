"""Layer bit-widths (Zhou et al.): sensitivity, exact allocation, the estimator."""


def __getattr__(name):
    # names this path had before it was a package, for old pickles
    from .._compat import moved_name

    return moved_name(__name__, name)
