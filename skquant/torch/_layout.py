"""The one place where torch weight layouts meet skquant's ``(n_in, n_out)`` matrices.

``nn.Linear.weight`` is ``(out, in)``: its matrix is ``weight.T``. ``nn.Conv2d.weight``
is ``(out, in, kh, kw)``: its matrix is ``weight.reshape(out, -1).T``, whose rows follow
``torch.nn.functional.unfold``'s patch layout (channel, then kernel row, then column),
so a convolution is ``unfold(x)ᵀ @ matrix``.
"""

import numpy as np
import torch
from torch import nn

from .._tensor._bits import packed_size

SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _check_layer(module, name):
    """TypeError unless ``module`` is a Linear, Conv1d or Conv2d layer."""
    if not isinstance(module, SUPPORTED) or getattr(module, "transposed", False):
        raise TypeError(
            f"{name} must be an nn.Linear, nn.Conv1d or nn.Conv2d layer, got "
            f"{type(module).__name__} instead."
        )


def own_forward(module):
    """The class of ``module``, a Linear or convolution, where it computes its
    own way (a ``forward`` or ``_conv_forward`` of its own, its subclass's or
    set on it: weight standardisation, an adapter's extra product, padding of
    its own), which a quantized layer would not; else ``None``. skquant's
    quantized layers (they quantize again) are not such."""
    kind = type(module)
    if hasattr(kind, "quantized_tensor"):
        return None
    for base in SUPPORTED:
        if isinstance(module, base):
            ours = (kind.forward, getattr(kind, "_conv_forward", None))
            own = {"forward", "_conv_forward"} & module.__dict__.keys()
            if own or ours != (base.forward, getattr(base, "_conv_forward", None)):
                return kind  # (or a forward set on the layer itself)
    return None


def _quantizable(module):
    return (
        isinstance(module, SUPPORTED)
        and not getattr(module, "transposed", False)
        and own_forward(module) is None
    )


def _refused(module):
    """Whether ``module`` has weights skquant cannot quantize."""
    if _quantizable(module):
        return False
    return isinstance(
        module,
        nn.Linear
        | nn.modules.conv._ConvNd
        | nn.Embedding
        | nn.EmbeddingBag
        | nn.RNNBase
        | nn.MultiheadAttention
        | nn.Bilinear,
    )


def refused_layers(model):
    """Names of the modules inside ``model`` with weights skquant cannot quantize
    (which :func:`check_supported` refuses unless skipped)."""
    return [
        n for n, m in model.named_modules(remove_duplicate=False) if n and _refused(m)
    ]


def check_supported(name, module):
    """Whether ``module`` is a weight layer skquant quantizes; raise if unsupported.

    Linear, Conv1d and Conv2d (any stride, padding, dilation, groups) are
    supported; layers without a weight matrix pass through (``False``); layers
    with weights that skquant cannot quantize raise a clear error naming them.
    """
    if _quantizable(module):
        return True
    if _refused(module):
        kind = type(module).__name__
        if own_forward(module) is not None:  # (the same class, its forward dropped)
            base = next(b for b in SUPPORTED if isinstance(module, b)).__name__
            raise ValueError(
                f"layer {name!r} ({kind}) computes with a forward of its own (a "
                f"subclass's of nn.{base}, or one set on the layer), which its "
                f"quantized layer would not run (it computes as nn.{base} does): "
                f"leave it float with skip=[{name!r}] (or skip=[{kind}]), or "
                f"quantize a model that holds nn.{base} layers."
            )
        if name == "":  # the model itself: skip=[''] would leave nothing
            raise ValueError(
                f"the model itself ({kind}) is a layer type that skquant cannot "
                "quantize: quantize_model quantizes nn.Linear, nn.Conv1d and "
                "nn.Conv2d layers, alone or inside a model. Pass a model that "
                f"contains such layers (a {kind} layer inside it can stay float "
                "with skip=['<its name>']), or quantize its weight tensors as "
                "arrays with skquant.quantize."
            )
        raise ValueError(
            f"layer {name!r} ({kind}) is not supported by "
            "quantize_model: only nn.Linear, nn.Conv1d and nn.Conv2d are; leave it "
            f"(and its children) float with skip=[{name!r}] (or every {kind} with "
            f"skip=[nn.{kind}]), or replace it."
        )
    return False


def weight_identity(module):
    """What tells a layer's weight apart from other layers': its weight
    parameter's ``id`` (layers sharing one are tied), or, for a weight computed
    when read (a parametrization such as ``weight_norm``, a quantized layer),
    the module's own (tied only to itself under another name). The ``id`` of a
    computed weight is not: the tensor is freed at once and its ``id`` reused
    by the next layer's."""
    weight = module._parameters.get("weight")
    if weight is not None:
        return id(weight)
    return ("module", id(module))


def to_numpy(t):
    """``t.detach().cpu().numpy()``: the boundary conversion.

    bfloat16 and float16 tensors come out as float32 (NumPy has no bfloat16).
    """
    t = t.detach()
    if t.dtype in _LOW_PRECISION:
        t = t.float()
    return t.cpu().numpy()


def weight_to_matrix(module, weight=None, *, copy=True):
    """The ``(n_in, n_out)`` weight matrix of a Linear or Conv2d layer.

    Parameters
    ----------
    module : torch.nn.Linear, torch.nn.Conv1d or torch.nn.Conv2d
        The layer.
    weight : torch.Tensor, default=None
        A weight tensor of the layer's shape to use instead of ``module.weight``
        (a weight read from a checkpoint while the layer's is on the meta device).
    copy : bool, default=True
        ``False`` gives a read-only view of a CPU weight where one is possible
        (Fortran-ordered: the transpose of the weight's rows), not a copy.

    Returns
    -------
    W : ndarray of shape (n_in, n_out)
        ``n_in`` is ``in_features`` or ``in_channels / groups * kernel size``.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import weight_to_matrix
    >>> weight_to_matrix(torch.nn.Conv2d(3, 8, 5)).shape
    (75, 8)
    """
    _check_layer(module, "module")
    if weight is not None and not isinstance(weight, torch.Tensor):
        raise TypeError(
            f"weight must be a torch.Tensor or None, got {type(weight).__name__} "
            "instead."
        )
    if weight is not None and tuple(weight.shape) != tuple(module.weight.shape):
        raise ValueError(
            f"weight must have the layer's weight shape {tuple(module.weight.shape)}, "
            f"got weight of shape {tuple(weight.shape)} instead."
        )
    w = to_numpy(module.weight if weight is None else weight)
    W = w.reshape(w.shape[0], -1).T
    if copy:
        return np.ascontiguousarray(W)
    W = W.view()
    W.flags.writeable = False
    return W


def matrix_to_weight(W, module, device=None):
    """Inverse of :func:`weight_to_matrix`: a tensor shaped like ``module.weight``.

    Parameters
    ----------
    W : ndarray of shape (n_in, n_out)
        The matrix.
    module : torch.nn.Linear or torch.nn.Conv2d
        The layer whose weight shape, dtype and device to use.
    device : torch.device, default=None
        Another device than the weight's (the weight may be on the meta device).

    Returns
    -------
    weight : torch.Tensor
        Of ``module.weight``'s shape, dtype and device.

    Examples
    --------
    >>> import torch
    >>> from skquant.torch import matrix_to_weight, weight_to_matrix
    >>> conv = torch.nn.Conv2d(3, 8, 5)
    >>> w = matrix_to_weight(weight_to_matrix(conv), conv)
    >>> bool(torch.equal(w, conv.weight.detach()))
    True
    """
    _check_layer(module, "module")
    W = np.asarray(W)
    shape = tuple(module.weight.shape)
    expected = (int(np.prod(shape[1:], dtype=np.int64)), shape[0])
    if W.shape != expected:
        raise ValueError(
            f"W must be the layer's (n_in, n_out) matrix, of shape {expected} (its "
            f"weight {shape} is (n_out, ...)), got W of shape {W.shape} instead."
        )
    if W.dtype.kind not in "biuf":  # (complex values lost their imaginary part)
        raise TypeError(f"W must hold real numbers, got W.dtype={W.dtype} instead.")
    Wt = W.T
    # a read-only matrix may be a view of a model's weight: never alias it
    w = torch.from_numpy(
        np.ascontiguousarray(Wt) if Wt.flags.writeable else np.array(Wt, order="C")
    )
    device = module.weight.device if device is None else device
    dtype = module.weight.dtype
    top = float(np.abs(W).max(initial=0))
    if dtype.is_floating_point and not top <= torch.finfo(dtype).max:
        raise ValueError(  # (NaN, or 1e300 made inf in a float32 layer)
            f"W must hold finite values within {dtype}'s range, got values up to "
            f"{top!r} instead."
        )
    return w.reshape(module.weight.shape).to(device, dtype)


def layer_kind(module):
    """``"Linear"``, ``"Conv1d"`` or ``"Conv2d"``: the kind of weight layer a file
    records (a quantized layer is an instance of its float class)."""
    for cls in (nn.Linear, nn.Conv1d, nn.Conv2d):
        if isinstance(module, cls):
            return cls.__name__
    raise TypeError(f"no quantized layer for {type(module).__name__}.")


def conv_args(module):
    """The positional arguments that rebuild a convolution like ``module``."""
    return module.in_channels, module.out_channels, module.kernel_size


def conv_kwargs(module):
    """The keyword arguments (but device and dtype) that rebuild ``module``."""
    return {
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "groups": module.groups,
        "bias": module.bias is not None,
        "padding_mode": module.padding_mode,
    }


def size_mismatches(layer, state_dict, prefix):
    """torch's ``size mismatch for KEY`` messages for the entries of ``state_dict``
    under ``prefix`` that do not fit the quantized ``layer``'s shape (empty: they
    fit), found before anything is loaded."""
    wshape = tuple(layer._weight_shape())
    n_out, n_in = wshape[0], int(np.prod(wshape[1:]))
    n_ch = getattr(layer, "in_features", None) or getattr(layer, "in_channels", 1)
    errors = []

    def mismatch(key, got, want, what="buffer"):
        errors.append(
            f"size mismatch for {prefix}{key}: copying a {what} with shape "
            f"{tuple(got)} from checkpoint, the shape in current model is {want}."
        )

    for key, count in (
        ("weight_scale", n_out),
        ("weight_zero_point", n_out),
        ("input_scale", n_ch),
        ("input_zero_point", n_ch),
    ):
        value = state_dict.get(prefix + key)
        if value is not None and value.numel() not in (1, count):
            mismatch(key, value.shape, f"({count},) or (1,) (the weight's {wshape})")
    bias = state_dict.get(prefix + "bias")
    if bias is not None and layer.bias is not None and bias.shape != layer.bias.shape:
        mismatch("bias", bias.shape, tuple(layer.bias.shape), "param")
    for key in ("weight_codes", "weight_bits"):
        value = state_dict.get(prefix + key)
        if value is not None and value.numel() != n_out * n_in:
            mismatch(key, value.shape, wshape)
    packed = state_dict.get(prefix + "weight_packed")
    meta = state_dict.get(prefix + "_extra_state")
    if packed is not None and isinstance(meta, dict) and "n_bits" in meta:
        want = packed_size(n_out * n_in, int(meta["n_bits"]))
        if packed.numel() != want:
            mismatch(
                "weight_packed",
                packed.shape,
                f"({want},) ({meta['n_bits']}-bit codes of the weight's {wshape})",
            )
    return errors
