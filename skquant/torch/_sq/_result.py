"""SQResult: what the Smart Quantization trainers return."""

import math

from ..._tensor._alphabets import BINARY, alphabet_from


class SQResult:
    """What :func:`train_sq` and :func:`train_baseline` return.

    Parameters
    ----------
    model : torch.nn.Module
        The quantized model: ``QuantLinear``/``QuantConv2d`` layers holding 1- or
        2-bit codes and one scale each (the float model for a float baseline).
    trained : torch.nn.Module
        The trained float model (latent weights).
    regularizer : SQRegularizer or None
        The trained regulariser (``beta``, ``a``); ``None`` for a baseline.
    alphabets : dict of {str: str}
        ``"binary"``, ``"ternary"`` (or ``"float"``) by layer.
    history : list of dict
        One row per epoch (fine-tune epochs included, ``phase="finetune"``):
        ``loss``, ``penalty``, ``accuracy`` (training batches), ``val_accuracy``
        (with validation data; of the projected weights in the fine-tune),
        ``lr``, ``seconds``; for SQ also ``val_accuracy_projected`` (the
        weights projected on the alphabets of that epoch), ``lam`` and by layer
        ``beta``, ``a`` and ``zero_fraction``; for a baseline by layer ``a``.
    report : QuantizationReport or None
        Per-layer rows of the final quantization (bits, sizes); ``None`` for a
        float baseline.

    Attributes
    ----------
    size_bits : int
        Bits of the covered layers' weights: codes + scales, or 32 per weight for
        a float layer.
    n_weights : int
        Number of weights in the covered layers.
    """

    def __init__(self, model, trained, regularizer, alphabets, history, report):
        self.model = model
        self.trained = trained
        self.regularizer = regularizer
        self.alphabets = alphabets
        self.history = history
        self.report = report
        modules = dict(trained.named_modules())
        self.n_weights = int(sum(modules[n].weight.numel() for n in alphabets))
        if report is None:
            self.size_bits = 32 * self.n_weights
        else:
            self.size_bits = int(
                sum(r["size_bits"] for r in report.rows if r["name"] in alphabets)
            )

    @property
    def binary_fraction(self):
        """Fraction of the covered layers that ended binary."""
        binary = [
            alphabet_from(a, allow_float=True) is BINARY
            for a in self.alphabets.values()
        ]
        return sum(binary) / len(self.alphabets)

    @property
    def bits_per_weight(self):
        """Stored bits per weight of the covered layers, scales included."""
        return self.size_bits / self.n_weights

    def plot_beta(self, ax=None):
        """Each layer's ``beta`` over the training epochs.

        Parameters
        ----------
        ax : matplotlib.axes.Axes, default=None
            Where to draw; a new figure when ``None``.

        Returns
        -------
        ax : matplotlib.axes.Axes
            The axes drawn on.
        """
        import matplotlib.pyplot as plt

        if self.regularizer is None:
            raise ValueError(
                "plot_beta needs a result of train_sq (a baseline has no beta)."
            )
        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        rows = [h for h in self.history if h["phase"] == "train"]
        for name in self.alphabets:
            ax.plot(
                [h["epoch"] for h in rows], [h["beta"][name] for h in rows], label=name
            )
        ax.axhline(3 * math.pi / 8, color="gray", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("beta (pi/4 ternary, pi/2 binary)")
        ax.legend(fontsize="small")
        return ax
