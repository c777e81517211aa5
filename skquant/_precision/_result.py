from .._common._plot import axes
from .._tensor._io import save

"""The record of an adaptive-precision run: history, bits, tensors; saving and
plotting.
"""

__all__ = ["AdaptiveQuantizationResult"]


class AdaptiveQuantizationResult:
    """What the iterative adaptive-precision drivers return.

    Attributes
    ----------
    model : object
        A copy of the network with its parameters quantized.
    history : list of dict
        One entry per accepted iteration (the first is the float network):
        ``loss``, ``accuracy`` (when evaluation data was given), ``payload_bits``
        and ``map_bits`` (as stored), ``map_bits_fixed`` and ``map_bits_entropy``
        (the map by formula, for comparison), ``total_bits`` (the stored bytes of
        every tensor, times 8), ``bits_per_param``, ``predicted_increase`` and
        ``measured_increase`` of the step.
    bits : list of ndarray
        Stored bits of every parameter (0 = pruned), tensor by tensor.
    n_params : int
        Number of parameters.
    stop_reason : str
        Why the loop stopped.
    tensors : list of QuantizedTensor or None
        The stored form of every parameter (``(n_rows, n_channels)`` views),
        ``None`` when no step was accepted; :meth:`save` writes them.
    names : list of str or None
        The parameters' names (set by the network drivers), in the order of
        ``bits`` and ``tensors``; :meth:`save` uses them by default.
    """

    def __init__(
        self, model, history, bits, n_params, stop_reason, tensors=None, names=None
    ):
        self.model = model
        self.history = history
        self.bits = bits
        self.n_params = n_params
        self.stop_reason = stop_reason
        self.tensors = tensors
        self.names = names

    def save(self, path, names=None):
        """Write the stored tensors of the quantized parameters to a skquant file.

        The file's length is ``history[-1]["total_bits"] / 8`` plus a header:
        :func:`skquant.load` reads back the tensors, in their ``(n_rows,
        n_channels)`` views, whose ``dequantize()`` gives the model's parameters.

        Parameters
        ----------
        path : str or path-like
            The file.
        names : list of str, default=None
            A name per parameter; ``None`` takes :attr:`names`, or ``"p0"``,
            ``"p1"``, ... when the result has none.
        """

        if self.tensors is None:
            raise ValueError(
                "no step was accepted: the result holds the float parameters, "
                "which have no fixed-point stored form."
            )
        names = names or self.names or [f"p{i}" for i in range(len(self.tensors))]
        save(dict(zip(names, self.tensors)), path)

    def plot_history(self, ax=None):
        """Loss and total bits per parameter against the iteration.

        Parameters
        ----------
        ax : matplotlib Axes, default=None
            Where to draw the loss; the bits go on a twin axis.

        Returns
        -------
        ax : matplotlib Axes
            The loss axes.
        """
        ax = axes(ax, (6, 4))
        it = range(len(self.history))
        ax.plot(it, [h["loss"] for h in self.history], "o-", color="C0")
        ax.set_xlabel("iteration")
        ax.set_ylabel("loss", color="C0")
        ax2 = ax.twinx()
        ax2.plot(it, [h["bits_per_param"] for h in self.history], "s--", color="C1")
        ax2.set_ylabel("bits per parameter (payload + map)", color="C1")
        return ax

    def __repr__(self):
        last = self.history[-1]
        return (
            f"AdaptiveQuantizationResult(iterations={len(self.history) - 1}, "
            f"loss={last['loss']:.4g}, bits_per_param={last['bits_per_param']:.3f}, "
            f"stop_reason={self.stop_reason!r})"
        )
