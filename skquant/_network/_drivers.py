"""The network layer: one protocol for whole networks, and the drivers over it.

A :class:`Network` exposes what every network-level job needs: its weight layers
in forward order, each weight as an ``(n_in, n_out)`` matrix, copies with weights
or parameters replaced, a walk over the layers that yields each layer's inputs on
calibration data (as the float network computes them and as the already quantized
prefix does), the loss and its gradients, and predictions. Two adapters implement
it: :class:`DenseNetwork` / :class:`MLPNetwork` here (NumPy only) and
``skquant.torch.TorchNetwork``. The drivers (:func:`quantize_layers`,
:func:`layer_errors`, the adaptive-precision loop) are written once against it.
"""

import copy
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit
from sklearn.base import clone

from .._common._progress import progress
from .._quantizers._base import BaseWeightQuantizer
from .._quantizers._datadriven import BaseDataQuantizer
from .._tensor._packing import QuantizedTensor

__all__ = [
    "DenseNetwork",
    "LayerStep",
    "MLPNetwork",
    "Network",
    "QuantizationReport",
    "layer_errors",
    "quantize_layers",
    "quantize_network",
    "resolve_quantizers",
]

#: the key of a per-layer quantizer mapping that names the default quantizer
DEFAULT_KEY = "*"


def _relu(Z):
    return np.maximum(Z, 0)


#: the hidden activations of dense networks (scikit-learn's definitions)
ACTIVATIONS = {
    "identity": lambda Z: Z,
    "relu": _relu,
    "tanh": np.tanh,
    "logistic": expit,
    None: lambda Z: Z,
}


def _activation(act, index):
    if callable(act):
        return act
    if act in ACTIVATIONS:
        return ACTIVATIONS[act]
    raise ValueError(
        f"layers[{index}] has activation={act!r}; expected a callable or one of "
        f"{sorted(k for k in ACTIVATIONS if k)} instead."
    )


def _act_grad(name, A):
    """Derivative of a hidden activation, from its output ``A``."""
    if name == "relu":
        return (A > 0).astype(A.dtype)
    if name == "tanh":
        return 1.0 - A**2
    if name == "logistic":
        return A * (1.0 - A)
    return np.ones_like(A)


class LayerStep:
    """One layer of a walk: its name, weight matrix and (lazily) its inputs.

    The driver reads :meth:`inputs` if it needs them, then sets ``quantized`` to
    the weights the quantized network should use from now on (``None`` keeps the
    float weights) before asking the walk for the next layer.

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
    """

    def __init__(self, name, weight, inputs, groups=1):
        self.name = name
        self.weight = weight
        self._inputs_fn = inputs
        self._inputs = None
        self.groups = groups
        self.quantized = None

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
        rng = np.random.default_rng(random_state)
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


def _check_quantizer(est, where):
    from .._precision._adaptive import AdaptivePrecisionQuantizer

    if not isinstance(est, BaseWeightQuantizer | AdaptivePrecisionQuantizer):
        raise TypeError(
            f"{where} must be a skquant weight quantizer (UniformQuantizer, "
            "TernaryQuantizer, BinaryQuantizer, GreedyPathQuantizer, "
            "NullSpaceQuantizer or AdaptivePrecisionQuantizer), got "
            f"{est!r:.80} instead."
        )
    return est


def resolve_quantizers(layer_names, quantizer):
    """One unfitted quantizer (or ``None`` for float) per layer name.

    Parameters
    ----------
    layer_names : list of str
        The network's layers.
    quantizer : estimator, mapping or sequence
        One quantizer (cloned per layer); a mapping from layer name to quantizer
        (layers not named stay float, unless the key ``"*"`` gives a default;
        ``None`` as a value leaves a layer float); or one quantizer per layer.

    Returns
    -------
    plan : dict of {str: estimator or None}
        Clones, in ``layer_names`` order.
    """
    if isinstance(quantizer, Mapping):
        if not quantizer:
            raise ValueError(
                "quantizer is an empty mapping: name at least one layer (or give "
                f"a default under {DEFAULT_KEY!r}); the layers are {layer_names}."
            )
        unknown = [k for k in quantizer if k != DEFAULT_KEY and k not in layer_names]
        if unknown:
            raise ValueError(
                f"quantizer names layers {unknown} that the network does not have; "
                f"its layers are {layer_names}."
            )
        default = quantizer.get(DEFAULT_KEY)
        plan = {}
        for name in layer_names:
            est = quantizer.get(name, default)
            plan[name] = (
                None
                if est is None
                else clone(_check_quantizer(est, f"quantizer[{name!r}]"))
            )
        return plan
    if isinstance(quantizer, list | tuple):
        if len(quantizer) != len(layer_names):
            raise ValueError(
                f"quantizer must be one estimator or one per layer "
                f"({len(layer_names)}), got {len(quantizer)} instead."
            )
        return {
            name: None if q is None else clone(_check_quantizer(q, f"quantizer[{i}]"))
            for i, (name, q) in enumerate(zip(layer_names, quantizer))
        }
    _check_quantizer(quantizer, "quantizer")
    return {name: clone(quantizer) for name in layer_names}


def _method_name(est):
    if est is None:
        return "float"
    return type(est).__name__.replace("Quantizer", "")


@dataclass
class QuantizationReport:
    """Per-layer rows of a whole-network quantization; prints as a table.

    Attributes
    ----------
    rows : list of dict
        One per layer: ``name``, ``shape``, ``method``, ``bits`` (stored bits per
        weight, scales included), ``size_bits``, ``calibration_error`` (relative
        error of the layer's output on the calibration data, its input from the
        quantized prefix; ``nan`` when no calibration pass was needed) and
        ``seconds``.
    """

    rows: list = field(default_factory=list)

    @property
    def size_bits(self):
        """Bits of every layer's weights (float layers at 32 bits per weight)."""
        return int(sum(r["size_bits"] for r in self.rows))

    @property
    def seconds(self):
        """Time spent in the quantizers, summed over the layers."""
        return float(sum(r["seconds"] for r in self.rows))

    def __str__(self):
        head = f"{'layer':<24}{'shape':>14}  {'method':<14}{'bits':>7}{'size (B)':>12}"
        head += f"{'calib err':>11}{'s':>8}"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            shape = "x".join(str(s) for s in r["shape"])
            err = r["calibration_error"]
            lines.append(
                f"{r['name']:<24.24}{shape:>14}  {r['method']:<14.14}"
                f"{r['bits']:>7.3f}{r['size_bits'] / 8:>12.0f}"
                + (f"{err:>11.4f}" if np.isfinite(err) else f"{'-':>11}")
                + f"{r['seconds']:>8.3f}"
            )
        lines.append(
            f"{'total':<24}{'':>14}  {'':<14}{'':>7}{self.size_bits / 8:>12.0f}"
            f"{'':>11}{self.seconds:>8.3f}"
        )
        return "\n".join(lines)

    def __repr__(self):
        return f"QuantizationReport({len(self.rows)} layers)\n{self}"


@dataclass
class LayerQuantization:
    """What :func:`quantize_layers` returns (by layer name, forward order)."""

    quantizers: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    report: QuantizationReport = field(default_factory=QuantizationReport)


def _output_error(Xq, Q, Xf, W):
    """``||Xq Q - Xf W|| / ||Xf W||`` (0 when the reference is 0)."""
    ref = Xf @ W
    den = np.linalg.norm(ref)
    return float(np.linalg.norm(Xq @ Q - ref) / den) if den > 0 else 0.0


def _concat_tensors(tensors):
    """One tensor of several column blocks quantized on the same alphabet."""
    first = tensors[0]
    return QuantizedTensor(
        codes=np.hstack([t.codes for t in tensors]),
        scale=np.concatenate(
            [np.broadcast_to(t.scale, (t.shape[1],)) for t in tensors]
        ),
        n_bits=first.n_bits,
        qmin=first.qmin,
        qmax=first.qmax,
        alphabet=first.alphabet,
        float_dtype=first.float_dtype,
    )


def _fit_data_driven(est, W, Xq, Xf, groups):
    """Fit a data-driven quantizer (per input group) and return its tensor."""
    if groups == 1:
        est.fit(W, activations=Xq, target_activations=Xf)
        return est, est.compress(W)
    n_in, n_out = W.shape[0], W.shape[1] // groups
    fitted, tensors = [], []
    for g in range(groups):
        cols = slice(g * n_out, (g + 1) * n_out)
        rows = slice(g * n_in, (g + 1) * n_in)
        e = clone(est).fit(
            W[:, cols], activations=Xq[:, rows], target_activations=Xf[:, rows]
        )
        fitted.append(e)
        tensors.append(e.compress(W[:, cols]))
    return fitted, _concat_tensors(tensors)


def _plain_steps(network, names):
    """Steps without a calibration pass (memoryless quantizers need none)."""
    for name in names:
        yield LayerStep(name, network.weight(name), None, network.groups(name))


def quantize_layers(
    network,
    quantizer,
    data=None,
    *,
    max_rows=None,
    random_state=0,
    gradients=None,
    calibrate=None,
    verbose=False,
):
    """Quantize a network layer by layer: the one driver every front end calls.

    Layer ``l`` is quantized by its quantizer; data-driven quantizers see the
    layer's inputs computed by the already quantized prefix (``activations``) and
    aim at the float network's (``target_activations``). Memoryless quantizers
    need no calibration pass, and none is run unless one is asked for.

    Parameters
    ----------
    network : Network
        The network adapter.
    quantizer : estimator, mapping or sequence
        See :func:`resolve_quantizers`.
    data : object, default=None
        Calibration data in the adapter's format (needed by data-driven
        quantizers and by ``calibrate=True``).
    max_rows : int, default=None
        Largest number of calibration rows per layer (sampled at capture time).
    random_state : int, default=0
        Seed of the row sampling.
    gradients : callable, default=None
        ``gradients() -> {layer name: (n_in, n_out) gradient}``, called once when
        a layer's quantizer is an :class:`~skquant.AdaptivePrecisionQuantizer`.
    calibrate : bool, default=None
        Walk the calibration data (and report each layer's calibration error)
        even when no quantizer needs it; ``None`` walks only when one does.
    verbose : bool, default=False
        Progress bar over the layers.

    Returns
    -------
    result : LayerQuantization
        ``quantizers``, ``tensors`` and ``weights`` (dequantized, ``(n_in,
        n_out)``) by layer name, for the quantized layers, and the ``report``.
    """
    from .._precision._adaptive import AdaptivePrecisionQuantizer
    from .._quantizers._nullspace import NoFreedomWarning, NullSpaceQuantizer

    names = network.layer_names
    plan = resolve_quantizers(names, quantizer)
    for name, est in plan.items():
        if isinstance(est, NullSpaceQuantizer) and est.variant == "lp":
            raise ValueError(
                f"NullSpaceQuantizer(variant='lp') is for single layers, not networks "
                f"(layer {name!r}): its vertex keeps the calibration output but moves "
                "the weights in the calibration data's null space, which other inputs "
                "do not share, unbounded by any grid cell (the weights grow far past "
                "the float ones), and a layer with as many calibration rows as "
                "inputs leaves it no freedom. Use variant='grid' (the weights stay in "
                "their grid cells) or GreedyPathQuantizer."
            )
    needs_data = any(isinstance(e, BaseDataQuantizer) for e in plan.values())
    walk = needs_data if calibrate is None else (bool(calibrate) or needs_data)
    if walk and data is None:
        raise ValueError(
            "data-driven quantizers need calibration data; got data=None instead."
        )
    grads = None
    if any(isinstance(e, AdaptivePrecisionQuantizer) for e in plan.values()):
        if gradients is None:
            raise ValueError(
                "AdaptivePrecisionQuantizer needs loss gradients, which this driver "
                "cannot compute here: pass the labels (and loss) it asks for."
            )
        grads = gradients()
    steps = (
        network.walk(data, max_rows=max_rows, random_state=random_state)
        if walk
        else _plain_steps(network, names)
    )
    result = LayerQuantization()
    no_freedom = []
    for step in progress(
        steps, desc="quantize layers", total=len(names), enabled=verbose
    ):
        est = plan[step.name]
        W = step.weight
        row = {
            "name": step.name,
            "shape": tuple(W.shape),
            "method": _method_name(est),
            "bits": 32.0,
            "size_bits": 32 * W.size,
            "calibration_error": float("nan"),
            "seconds": 0.0,
        }
        if est is not None:
            start = time.perf_counter()
            if isinstance(est, BaseDataQuantizer):
                Xq, Xf = step.inputs()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", NoFreedomWarning)
                    est, tensor = _fit_data_driven(est, W, Xq, Xf, step.groups)
                for w in caught:  # gathered below; others pass on as they came
                    if issubclass(w.category, NoFreedomWarning):
                        no_freedom.append(f"{step.name} ({W.shape[0]} inputs)")
                    else:
                        warnings.warn_explicit(
                            w.message, w.category, w.filename, w.lineno
                        )
            elif isinstance(est, AdaptivePrecisionQuantizer):
                tensor = est.fit(W, gradient=grads[step.name]).compress(W)
            else:
                tensor = est.fit(W).compress(W)
            Q = tensor.dequantize()
            row["seconds"] = time.perf_counter() - start
            row.update(
                bits=tensor.bits_per_param,
                size_bits=tensor.size_bits,
                n_bits=tensor.n_bits,
            )
            result.quantizers[step.name] = est
            result.tensors[step.name] = tensor
            result.weights[step.name] = Q
            step.quantized = Q
        if step.has_inputs and step.groups == 1:
            Xq, Xf = step.inputs()
            Q = W if step.quantized is None else step.quantized
            row["calibration_error"] = _output_error(Xq, Q, Xf, W)
        result.report.rows.append(row)
    if no_freedom:
        warnings.warn(
            f"NullSpaceQuantizer: the calibration data leaves no freedom in "
            f"{len(no_freedom)} of {len(names)} layers ({', '.join(no_freedom)}): "
            "their rank reaches the number of inputs, so every coordinate was "
            "rounded (greedy path following, or MSQ with rounding='nearest'). Pass "
            "a rank cap below n_in to keep only the main directions.",
            NoFreedomWarning,
            stacklevel=2,
        )
    return result


def layer_errors(network, weights, data, *, max_rows=None, random_state=0):
    """Relative error of each layer's output, both networks fed their own prefix.

    Parameters
    ----------
    network : Network
        The float network.
    weights : dict of {str: ndarray}
        Quantized ``(n_in, n_out)`` weights by layer name (layers not named stay
        float).
    data : object
        Data in the adapter's format.
    max_rows : int, default=None
        Largest number of rows per layer.
    random_state : int, default=0
        Seed of the row sampling.

    Returns
    -------
    errors : dict of {str: float}
        ``||Xq Q - Xf W|| / ||Xf W||`` per layer.
    """
    network.check_layer_names(list(weights), "weights")
    errors = {}
    for step in network.walk(data, max_rows=max_rows, random_state=random_state):
        Q = weights.get(step.name, step.weight)
        Xq, Xf = step.inputs()
        errors[step.name] = _output_error(Xq, Q, Xf, step.weight)
        step.quantized = Q
    return errors


class DenseNetwork(Network):
    """A framework-free sequence of dense layers ``(W, b, activation)``.

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, bias of shape ``(n_out,)`` (or ``None``)
        and the activation after the layer: a callable or one of ``"identity"``,
        ``"relu"``, ``"tanh"``, ``"logistic"``.
    """

    def __init__(self, layers):
        self._layers = _check_layers(layers)
        self.layer_names = [f"layer_{i}" for i in range(len(self._layers))]
        self._index = {n: i for i, n in enumerate(self.layer_names)}

    @property
    def model(self):
        """The layers ``(W, b, activation)``."""
        return self._layers

    def weight(self, name):
        """The ``(n_in, n_out)`` weight matrix of layer ``name``."""
        return self._layers[self._index[name]][0]

    def _check_X(self, X):
        n_in = self._layers[0][0].shape[0]
        Xf = np.asarray(X, dtype=np.float64)
        if Xf.ndim != 2 or Xf.shape[1] != n_in:
            raise ValueError(
                f"X must have shape (m, {n_in}) for the first layer, got "
                f"X.shape={Xf.shape} instead."
            )
        if Xf.shape[0] == 0:
            raise ValueError("X must hold at least one row, got X.shape[0]=0 instead.")
        if not np.all(np.isfinite(Xf)):
            raise ValueError("X contains NaN or infinity.")
        return Xf

    def walk(self, data, *, max_rows=None, random_state=0):
        """Yield each layer with its inputs (the quantized prefix's and the float's).

        Parameters
        ----------
        data : array-like of shape (m, n_in)
            Calibration inputs of the first layer.
        max_rows : int, default=None
            Largest number of rows (sampled once; each row is one input).
        random_state : int, default=0
            Seed of the sampling.

        Yields
        ------
        step : LayerStep
            Set ``step.quantized`` before advancing.
        """
        Xf = self._check_X(data)
        if max_rows is not None and Xf.shape[0] > max_rows:
            rng = np.random.default_rng(random_state)
            Xf = Xf[np.sort(rng.choice(Xf.shape[0], max_rows, replace=False))]
        Xq = Xf
        for name, (W, b, act) in zip(self.layer_names, self._layers):
            pair = (Xq, Xf)
            step = LayerStep(name, W, lambda pair=pair: pair)
            step.inputs()  # free: already computed
            yield step
            Q = W if step.quantized is None else step.quantized
            shared = Xq is Xf and Q is W  # nothing quantized so far
            Xf = act(Xf @ W + b)
            Xq = Xf if shared else act(Xq @ Q + b)

    def outputs(self, data, weights=None):
        """The last layer's output (logits) on ``data``, some weights replaced."""
        if weights:
            self.check_layer_names(list(weights), "weights")
        return self.forward(self._check_X(data), weights)[-1]

    def forward(self, X, weights=None):
        """Activations of every layer (the input first, the output last)."""
        acts = [np.asarray(X, dtype=np.float64)]
        for name, (W, b, act) in zip(self.layer_names, self._layers):
            W = W if weights is None else weights.get(name, W)
            acts.append(act(acts[-1] @ W + b))
        return acts


def _check_layers(layers):
    if len(layers) == 0:
        raise ValueError("layers must hold at least one (W, b, activation) triple.")
    checked = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, tuple | list) or len(layer) != 3:
            raise TypeError(
                f"layers[{i}] must be a (W, b, activation) triple, got {layer!r:.80} "
                "instead."
            )
        W, b, act = layer
        W = np.asarray(W)
        if W.ndim != 2:
            raise ValueError(
                f"layers[{i}] must have a 2-D weight matrix (n_in, n_out), got "
                f"W.shape={W.shape} instead."
            )
        b = np.zeros(W.shape[1], W.dtype) if b is None else np.asarray(b)
        if b.shape != (W.shape[1],):
            raise ValueError(
                f"layers[{i}] has a bias of shape {b.shape}; expected ({W.shape[1]},) "
                "instead."
            )
        if i and checked[-1][0].shape[1] != W.shape[0]:
            raise ValueError(
                f"layers[{i}] takes {W.shape[0]} inputs but layers[{i - 1}] gives "
                f"{checked[-1][0].shape[1]} outputs."
            )
        checked.append((W, b, _activation(act, i)))
    return checked


def _check_mlp(mlp, name="estimator"):
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    if not isinstance(mlp, MLPClassifier | MLPRegressor):
        raise TypeError(
            f"{name} must be an MLPClassifier or MLPRegressor (fitted or not, or "
            f"wrapped in sklearn.frozen.FrozenEstimator), got {mlp!r:.80} instead."
        )
    return mlp


class MLPNetwork(DenseNetwork):
    """The network adapter of a fitted scikit-learn ``MLPClassifier``/``MLPRegressor``.

    Layers are named ``layer_0``, ``layer_1``, ... (``coefs_[i]``); parameters
    ``layer_i.weight`` then ``layer_i.bias``. NumPy only.

    Parameters
    ----------
    mlp : MLPClassifier or MLPRegressor
        A fitted network (not modified: copies are made).

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.neural_network import MLPClassifier
    >>> from skquant._network import MLPNetwork
    >>> X, y = load_digits(return_X_y=True)
    >>> mlp = MLPClassifier((16,), max_iter=300, random_state=0).fit(X / 16, y)
    >>> net = MLPNetwork(mlp)
    >>> net.layer_names, net.weight("layer_0").shape
    (['layer_0', 'layer_1'], (64, 16))
    >>> loss, grads = net.loss_gradients((X / 16, y))
    >>> list(grads)
    ['layer_0.weight', 'layer_1.weight', 'layer_0.bias', 'layer_1.bias']
    """

    def __init__(self, mlp):
        from sklearn.utils.validation import check_is_fitted

        _check_mlp(mlp)
        check_is_fitted(mlp, "coefs_")
        self.mlp = mlp
        n = len(mlp.coefs_)
        super().__init__(
            [
                (W, b, mlp.activation if i < n - 1 else "identity")
                for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_))
            ]
        )

    @property
    def model(self):
        """The scikit-learn estimator."""
        return self.mlp

    def with_weights(self, weights):
        """A copy of the MLP (as a network) with some ``coefs_`` replaced."""
        self.check_layer_names(list(weights), "weights")
        mlp = copy.deepcopy(self.mlp)
        mlp.coefs_ = [
            np.asarray(weights.get(n, W)).astype(W.dtype)
            for n, W in zip(self.layer_names, self.mlp.coefs_)
        ]
        return MLPNetwork(mlp)

    def parameters(self):
        """``layer_i.weight`` for every layer, then ``layer_i.bias``."""
        params = {f"{n}.weight": W for n, W in zip(self.layer_names, self.mlp.coefs_)}
        params.update(
            {f"{n}.bias": b for n, b in zip(self.layer_names, self.mlp.intercepts_)}
        )
        return {k: np.asarray(v, dtype=np.float64).copy() for k, v in params.items()}

    def output_axis(self, name):
        """1 for a weight (``(n_in, n_out)``), 0 for a bias."""
        return 1 if name.endswith(".weight") else 0

    def with_parameters(self, params):
        """A copy of the MLP with its weights and biases replaced."""
        mlp = copy.deepcopy(self.mlp)
        mlp.coefs_ = [
            np.asarray(params.get(f"{n}.weight", W)).astype(W.dtype)
            for n, W in zip(self.layer_names, self.mlp.coefs_)
        ]
        mlp.intercepts_ = [
            np.asarray(params.get(f"{n}.bias", b)).astype(b.dtype)
            for n, b in zip(self.layer_names, self.mlp.intercepts_)
        ]
        return MLPNetwork(mlp)

    def predict(self, X):
        """The MLP's predictions."""
        return self.mlp.predict(X)

    def check_targets(self, X, y):
        """Validate ``(X, y)`` for the loss: same length, labels the MLP knows."""
        from sklearn.neural_network import MLPClassifier
        from sklearn.utils import check_consistent_length

        X = self._check_X(X)
        y = np.asarray(y)
        try:
            check_consistent_length(X, y)
        except ValueError as exc:
            raise ValueError(
                f"y must have one label per row of X ({X.shape[0]}), got "
                f"len(y)={y.shape[0] if y.ndim else 0} instead."
            ) from exc
        if isinstance(self.mlp, MLPClassifier):
            unseen = np.setdiff1d(np.unique(y), self.mlp.classes_)
            if unseen.size:
                raise ValueError(
                    f"y holds labels {unseen.tolist()[:10]} that the MLP was not "
                    f"trained on (its classes_ are {self.mlp.classes_.tolist()[:10]}"
                    f"{'...' if self.mlp.classes_.size > 10 else ''}) instead."
                )
        return X, y

    def loss_gradients(self, data, params=None):
        """Mean log-loss of an ``MLPClassifier`` and its gradient (NumPy).

        The loss is the mean cross-entropy of the output (softmax for several
        classes, logistic for two), without scikit-learn's L2 penalty ``alpha``.

        Parameters
        ----------
        data : tuple of (X, y)
            Inputs and labels.
        params : dict of {str: ndarray}, default=None
            Parameters to evaluate at (by name); ``None`` takes the MLP's own.

        Returns
        -------
        loss : float
            The mean log-loss.
        grads : dict of {str: ndarray}
            Gradient of every parameter, by name (as :meth:`parameters`).
        """
        net = self if params is None else self.with_parameters(params)
        X, y = data
        mlp = net.mlp
        Y = mlp._label_binarizer.transform(y).astype(np.float64)
        acts = net.forward(X)
        n_layers = len(mlp.coefs_)
        Z = acts[-1]
        n = Z.shape[0]
        eps = np.finfo(np.float64).eps
        if mlp.out_activation_ == "softmax":
            Z = Z - Z.max(axis=1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(axis=1, keepdims=True)
            loss = float(-np.sum(Y * np.log(np.clip(P, eps, 1))) / n)
        else:
            P = 1.0 / (1.0 + np.exp(-Z))
            Pc = np.clip(P, eps, 1 - eps)
            loss = float(-np.sum(Y * np.log(Pc) + (1 - Y) * np.log(1 - Pc)) / n)
        delta = (P - Y) / n
        grads = {}
        for i in range(n_layers - 1, -1, -1):
            name = self.layer_names[i]
            grads[f"{name}.weight"] = acts[i].T @ delta
            grads[f"{name}.bias"] = delta.sum(axis=0)
            if i:
                delta = (delta @ mlp.coefs_[i].T) * _act_grad(mlp.activation, acts[i])
        order = list(self.parameters())
        return loss, {k: grads[k] for k in order}


def quantize_network(layers, quantizer, X, *, verbose=False):
    """Quantize dense layers in order, each on the quantized prefix's activations.

    The framework-free entry of the network layer (:class:`DenseNetwork` and
    :func:`quantize_layers`).

    Parameters
    ----------
    layers : list of (W, b, activation)
        ``W`` of shape ``(n_in, n_out)``, bias ``b`` of shape ``(n_out,)`` (or
        ``None``), and the activation applied after the layer: a callable or one of
        ``"identity"``, ``"relu"``, ``"tanh"``, ``"logistic"``.
    quantizer : estimator, mapping or list
        An unfitted weight quantizer, cloned for every layer; a mapping from layer
        name (``"layer_0"``, ...) to quantizer; or one per layer.
    X : array-like of shape (m, n_in)
        Calibration inputs of the first layer.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    result : LayerQuantization
        Fitted quantizers, quantized tensors and dequantized weights by layer
        name, and the per-layer report.

    See Also
    --------
    QuantizedMLP : The same for scikit-learn's MLPs, as an estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from skquant import GreedyPathQuantizer
    >>> from skquant._network import quantize_network
    >>> rng = np.random.default_rng(0)
    >>> layers = [(rng.standard_normal((20, 30)) / 5, np.zeros(30), "relu"),
    ...           (rng.standard_normal((30, 3)) / 5, np.zeros(3), "identity")]
    >>> res = quantize_network(layers, GreedyPathQuantizer(n_bits=4),
    ...                        rng.standard_normal((64, 20)))
    >>> [w.shape for w in res.weights.values()]
    [(20, 30), (30, 3)]
    """
    return quantize_layers(
        DenseNetwork(layers), quantizer, X, calibrate=True, verbose=verbose
    )
