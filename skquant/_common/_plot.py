"""The axes a plot draws on: the caller's, checked, or a new figure's."""

__all__ = ["axes"]


def axes(ax, figsize):
    """``ax`` (a matplotlib ``Axes``), or when ``None`` the axes of a new figure
    of ``figsize``; a ``TypeError`` naming ``ax`` for anything else (an
    ``AttributeError`` came from the first drawing call)."""
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    if ax is None:
        return plt.subplots(figsize=figsize)[1]
    if not isinstance(ax, Axes):
        raise TypeError(
            f"ax must be a matplotlib Axes or None, got {type(ax).__name__} instead."
        )
    return ax
