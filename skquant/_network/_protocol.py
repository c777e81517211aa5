"""The Network protocol: what every whole-network job asks of a model, one layer step
of its walk.
"""

import math

import numpy as np

from .._common._checks import check_rng

__all__ = ["LayerStep", "Network"]


class LayerStep:
    """One layer of a walk: its name, weight matrix and (lazily) its inputs.

    The driver reads :meth:`inputs` if it needs them, then sets ``quantized`` to
    the weights the quantized network should use from now on (``None`` keeps the
    float weights), and ``tensor`` to their QuantizedTensor, before asking the
    walk for the next layer.

    Parameters
    ----------
    name : str
        Layer name.
    weight : ndarray of shape (n_in, n_out)
        The float weights.
    inputs : callable
        ``inputs() -> (Xq, Xf)``, float64 arrays of shape ``(m, n_in * groups)``:
        the layer's inputs in the quantized prefix and in the float network.
    groups : int, default=1
        Input groups (grouped convolutions): group ``g``'s outputs see only the
        ``g``-th block of ``n_in`` input columns.
    calls : int, default=1
        How many times a forward pass runs the layer; ``inputs`` are those of
        its first call.
    """

    def __init__(self, name, weight, inputs, groups=1, calls=1):
        self.name = name
        self.weight = weight
        self._inputs_fn = inputs
        self._inputs = None
        self.groups = groups
        self.calls = calls
        self.quantized = None
        self.tensor = None

    @property
    def has_inputs(self):
        """Whether the inputs were computed (or were free)."""
        return self._inputs is not None

    def inputs(self):
        """``(Xq, Xf)``: the layer's inputs in the quantized and the float network."""
        if self._inputs is None:
            self._inputs = self._inputs_fn()
        return self._inputs


class Network:
    """The protocol every network adapter implements.

    Attributes
    ----------
    layer_names : list of str
        Weight layers in forward order.
    model : object
        The wrapped model.
    """

    layer_names: list
    model: object

    def weight(self, name):
        """The ``(n_in, n_out)`` weight matrix of layer ``name``."""
        raise NotImplementedError

    def n_params(self, name):
        """Number of weights of layer ``name``."""
        return int(np.prod(self.weight(name).shape))

    def groups(self, name):
        """Input groups of layer ``name`` (1 but for grouped convolutions)."""
        return 1

    def walk(self, data, *, max_rows=None, random_state=0):
        """Yield a :class:`LayerStep` per layer, in forward order."""
        raise NotImplementedError

    def parameters(self):
        """All trainable parameters, by name (native shapes, float64 copies)."""
        raise NotImplementedError

    def with_parameters(self, params):
        """A new network whose parameters are ``params`` (a dict by name)."""
        raise NotImplementedError

    def output_axis(self, name):
        """The output-channel axis of parameter ``name`` in :meth:`parameters`."""
        return 0

    def loss_gradients(self, data, params=None):
        """Mean loss on ``data`` and its gradient for every parameter, by name."""
        raise NotImplementedError

    def outputs(self, data, weights=None):
        """The network's raw outputs (logits) on ``data``, some weights replaced."""
        raise NotImplementedError

    def layer_outputs(self, data, name):
        """``outputs(W)``: the raw outputs on ``data`` with layer ``name``'s weight
        set to ``W`` (an ``(n_in, n_out)`` matrix), the same as
        ``self.outputs(data, {name: W})``.

        For many weights of one layer (a sensitivity sweep's choices, a search
        over injected noise): adapters that can run their model from a layer on
        compute the float layers before it once here, and every call runs only
        the rest. This default runs the whole network each call.
        """
        self.check_layer_names([name], "name")
        return lambda W: self.outputs(data, {name: W})

    def hessian_vector(self, data, vector):
        """The loss Hessian times ``vector`` (a dict of parameter arrays by name).

        Central differences of :meth:`loss_gradients` (float64); adapters with
        automatic differentiation override it with the exact product.
        """
        params = self.parameters()
        norm = math.sqrt(sum(float(np.sum(v**2)) for v in vector.values()))
        size = math.sqrt(sum(float(np.sum(params[k] ** 2)) for k in vector))
        eps = 1e-4 * max(size, 1.0) / max(norm, 1e-300)
        plus = {k: params[k] + eps * v for k, v in vector.items()}
        minus = {k: params[k] - eps * v for k, v in vector.items()}
        g_plus = self.loss_gradients(data, {**params, **plus})[1]
        g_minus = self.loss_gradients(data, {**params, **minus})[1]
        return {k: (g_plus[k] - g_minus[k]) / (2 * eps) for k in vector}

    def hessian_traces(self, data, *, n_probes=16, random_state=0):
        """Hutchinson estimate of the trace of each layer's loss Hessian block.

        With Rademacher probes ``v`` over all layers' weights at once,
        ``trace(H_i) = E[v_i . (H v)_i]`` (HAWQ's sensitivity).

        Parameters
        ----------
        data : object
            ``(X, y)`` in the adapter's format.
        n_probes : int, default=16
            Probes averaged.
        random_state : int, default=0
            Seed of the probes.

        Returns
        -------
        traces : ndarray of shape (n_layers,)
        """
        rng = check_rng(random_state)
        params = self.parameters()
        keys = [f"{name}.weight" for name in self.layer_names]
        traces = np.zeros(len(keys))
        for _ in range(n_probes):
            v = {k: rng.choice([-1.0, 1.0], size=params[k].shape) for k in keys}
            hv = self.hessian_vector(data, v)
            traces += [float(np.sum(v[k] * hv[k])) for k in keys]
        return traces / n_probes

    def check_layer_names(self, names, what):
        """Raise a clear error for names that are not layers of this network."""
        unknown = [n for n in names if n not in self.layer_names]
        if unknown:
            raise ValueError(
                f"{what} names layers {unknown} that the network does not have; its "
                f"layers are {self.layer_names}."
            )
