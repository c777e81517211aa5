"""The network layer: the Network protocol, its NumPy adapters, and every whole-model
driver.
"""

from .._compat import moved_name


def __getattr__(name):
    # names this path had before it was a package, for old pickles
    return moved_name(__name__, name)
