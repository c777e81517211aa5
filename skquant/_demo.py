"""The main job: train a small MLP, quantize it with every method, print a table."""

import os
import sys
import tempfile
import time

import numpy as np

from ._common._checks import check_rng
from ._common._progress import progress
from ._kernels._threads import one_blas_thread
from ._network._dense import MLPNetwork
from ._network._layers import layer_errors, quantize_layers
from ._quantizers._gpfq import GreedyPathQuantizer
from ._quantizers._nullspace import NullSpaceQuantizer
from ._quantizers._uniform import BinaryQuantizer, TernaryQuantizer, UniformQuantizer
from ._sklearn._adaptive import adaptive_quantize_mlp
from ._sklearn._layerbits import LayerBitAllocator
from ._tensor._io import save
from ._tensor._qtensor import QuantizedTensor
from .datasets import load_mnist
from .metrics import compression_ratio, model_size_bits


def demo_settings():
    """The rows of the demo table: ``(label, series, unfitted quantizer)``.

    ``series`` groups rows into one line of the plot.
    """
    rows = []
    for b in (8, 4, 3, 2):
        rows.append((f"MSQ {b}-bit", "MSQ max-abs", UniformQuantizer(n_bits=b)))
    for b in (4, 3, 2):
        rows.append(
            (
                f"MSQ {b}-bit mse",
                "MSQ mse clip",
                UniformQuantizer(n_bits=b, scale="mse"),
            )
        )
    rows.append(("MSQ ternary", "MSQ ternary/binary", TernaryQuantizer()))
    rows.append(("MSQ binary", "MSQ ternary/binary", BinaryQuantizer()))
    for b in (4, 3, 2, "ternary"):
        name = f"{b}-bit" if isinstance(b, int) else b
        rows.append((f"GPFQ {name}", "GPFQ", GreedyPathQuantizer(n_bits=b)))
    for b in (4, 3, 2, "ternary"):
        name = f"{b}-bit" if isinstance(b, int) else b
        rows.append(
            (
                f"null-space {name}",
                "null-space",
                NullSpaceQuantizer(n_bits=b),
            )
        )
    return rows


def load_demo_data(dataset, random_state=0):
    """Train/test split of the demo's data set, features scaled to [0, 1]."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32)
        return train_test_split(
            X, y, test_size=0.3, stratify=y, random_state=random_state
        )

    Xtr, ytr = load_mnist("train", dataset=dataset, return_X_y=True)
    Xte, yte = load_mnist("test", dataset=dataset, return_X_y=True)
    return Xtr, Xte, ytr, yte


def quantize_mlp(mlp, quantizer, X_calib, X_eval=None):
    """Quantize every weight matrix of a fitted MLP, layer by layer.

    Data-driven quantizers are calibrated on ``X_calib`` passed through the already
    quantized layers. Returns the quantized copy, the list of
    :class:`QuantizedTensor` and float biases (for size accounting), and the mean
    relative output error of the layers on ``X_eval`` (``nan`` without it).
    """
    network = MLPNetwork(mlp)
    res = quantize_layers(network, quantizer, X_calib)
    qmlp = network.with_weights(res.weights).model
    tensors = [t for pair in zip(res.tensors.values(), mlp.intercepts_) for t in pair]
    if X_eval is None:
        return qmlp, tensors, float("nan")
    errors = _layer_errors(mlp, qmlp, X_eval)
    return qmlp, tensors, float(np.mean(errors))


def file_bytes(tensors):
    """Bytes of the skquant file holding ``tensors`` (weights and biases, in order)."""

    named = {
        f"layer_{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": t
        for i, t in enumerate(tensors)
    }
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.skq")
        save(named, path)
        return os.path.getsize(path)


def adaptive_rows(mlp, Xtr, ytr, Xte, yte, X_eval, loss_bound=3.0):
    """Rows of Khoram & Li's per-parameter precision: stored, and its payload alone.

    Every parameter (weights and biases) gets its own precision, the training loss
    allowed to grow by ``loss_bound`` (relative). Bits are per parameter: the
    stored tensors (coded payload, coded precision map, exponents), as
    ``result.save`` writes them, then the coded payload alone (a part of that file).
    """

    res = adaptive_quantize_mlp(mlp, Xtr, ytr, loss_bound=loss_bound)
    h = res.history[-1]
    acc = res.model.score(Xte, yte)
    err = float(np.mean(_layer_errors(mlp, res.model, X_eval)))
    n = res.n_params
    size = None
    if res.tensors is not None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "adaptive.skq")
            res.save(path)
            size = os.path.getsize(path)
    rows = []
    for label, bits, stored in (
        ("adaptive", h["total_bits"], size),
        ("adaptive, payload", h["payload_bits"], None),
    ):
        rows.append(
            {
                "series": "adaptive (Khoram & Li)",
                "label": label,
                "bits_per_weight": bits / n,
                "compression": 32 * n / bits,
                "model_bits": bits,
                "accuracy": acc,
                "rel_error": err,
                "file_bytes": stored,
            }
        )
    return rows


def layer_bits_rows(mlp, X_calib, y_calib, Xte, yte, X_eval):
    """The row of per-layer bit-widths (Zhou et al.) chosen by LayerBitAllocator.

    The sensitivity is measured on the calibration rows (with their labels); the
    allocation is the smallest whose normalised noise ``sum_i p_i(b_i) / t_i`` is
    at most 1 (an expected accuracy drop of about half a point), over MSQ at
    ternary and 2 to 8 bits.
    """

    alloc = LayerBitAllocator(mlp, bits=("ternary", 2, 3, 4, 5, 6, 8))
    alloc.fit(X_calib, y_calib)
    qmlp, tensors, err = quantize_mlp(mlp, alloc.quantizers(), X_calib, X_eval)
    n_weights = sum(W.size for W in mlp.coefs_)
    weight_bits = sum(t.size_bits for t in tensors if isinstance(t, QuantizedTensor))
    return [
        {
            "series": "per-layer bits (Zhou)",
            "label": "MSQ per-layer "
            + "/".join(
                str(b)[0] if isinstance(b, str) else str(b)
                for b in alloc.bits_.values()
            ),
            "bits_per_weight": weight_bits / n_weights,
            "compression": compression_ratio(tensors),
            "model_bits": model_size_bits(tensors),
            "accuracy": qmlp.score(Xte, yte),
            "rel_error": err,
            "file_bytes": file_bytes(tensors),
            "bits": alloc.bits_,
        }
    ]


def sq_rows(Xtr, ytr, Xte, yte, hidden, random_state=0):
    """The row of Smart Quantization (Razani et al.): an MLP of the same shape
    trained once in torch with the SQ penalty (:class:`skquant.torch.SQClassifier`,
    its defaults), each layer ending binary or ternary. A separately trained
    network: it has no float reference, so no layer error. Empty without torch."""
    try:
        from .torch._io import save_model
        from .torch._sqestimator import SQClassifier
    except ImportError:  # pragma: no cover - depends on the environment
        return []
    clf = SQClassifier(module__hidden=tuple(hidden), random_state=random_state)
    clf.fit(Xtr, ytr)
    n_weights = sum(m.weight.numel() for m in clf.model_ if hasattr(m, "weight"))
    n_bias = sum(m.bias.numel() for m in clf.model_ if hasattr(m, "bias"))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "sq.skq")
        save_model(clf.model_, path)
        size = os.path.getsize(path)
    return [
        {
            "series": "SQ training (Razani)",
            "label": "SQ trained "
            + "/".join(a[0] for a in clf.layer_alphabets_.values()),
            "bits_per_weight": clf.size_bits_ / n_weights,
            "compression": 32 * (n_weights + n_bias) / (clf.size_bits_ + 32 * n_bias),
            "model_bits": clf.size_bits_ + 32 * n_bias,
            "accuracy": clf.score(Xte, yte),
            "rel_error": float("nan"),
            "file_bytes": size,
            "alphabets": clf.layer_alphabets_,
        }
    ]


def _layer_errors(mlp, qmlp, X):
    """Relative error of each layer's output, both networks fed their own prefix."""
    network = MLPNetwork(mlp)
    quantized = dict(zip(network.layer_names, qmlp.coefs_))
    return list(layer_errors(network, quantized, X).values())


def run_demo(
    dataset="digits", hidden=None, plot=None, random_state=0, verbose=True, stream=None
):
    """Train, quantize with every setting, and return (and print) the result table.

    The whole run uses one BLAS thread, so the table is the same on machines
    with any number of cores (the MLP's training sums in BLAS).

    Parameters
    ----------
    dataset : {"digits", "mnist", "fashion-mnist"}, default="digits"
        The digits ship with scikit-learn; MNIST files come from
        ``bash benchmarks/get_data.sh``.
    hidden : tuple of int, default=None
        Hidden layer sizes; ``(64,)`` on digits, ``(256,)`` on MNIST.
    plot : str, default=None
        Path of a PNG of accuracy against bits per weight.
    random_state : int, default=0
        Seed of the split and the training.
    verbose : bool, default=True
        Print the table and progress bars.
    stream : file, default=None
        Where to print; ``sys.stdout`` when ``None``.

    Returns
    -------
    rows : list of dict
        One dict per setting: label, series, bits_per_weight, compression,
        accuracy, rel_error.
    """
    with one_blas_thread():
        return _run_demo(dataset, hidden, plot, random_state, verbose, stream)


def _run_demo(dataset, hidden, plot, random_state, verbose, stream):
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    out = stream if stream is not None else sys.stdout
    Xtr, Xte, ytr, yte = load_demo_data(dataset, random_state)
    if hidden is None:
        hidden = (64,) if dataset == "digits" else (256,)
    max_iter = 300 if dataset == "digits" else 15
    mlp = MLPClassifier(
        hidden_layer_sizes=hidden, max_iter=max_iter, random_state=random_state
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(Xtr, ytr)
    # store the trained network in float32, the baseline the compression refers to
    mlp.coefs_ = [W.astype(np.float32) for W in mlp.coefs_]
    mlp.intercepts_ = [b.astype(np.float32) for b in mlp.intercepts_]
    if verbose:
        print(
            f"{dataset}: {len(Xtr)} train / {len(Xte)} test samples, MLP "
            f"{Xtr.shape[1]}-{'-'.join(map(str, hidden))}-{len(mlp.classes_)} "
            "trained in "
            f"{time.perf_counter() - t0:.1f}s",
            file=out,
        )
    n_weights = sum(W.size for W in mlp.coefs_)
    float_tensors = list(mlp.coefs_) + list(mlp.intercepts_)
    rows = [
        {
            "series": "float",
            "label": "float32",
            "bits_per_weight": 32.0,
            "compression": compression_ratio(float_tensors),
            "accuracy": mlp.score(Xte, yte),
            "rel_error": 0.0,
            "file_bytes": file_bytes(
                [t for pair in zip(mlp.coefs_, mlp.intercepts_) for t in pair]
            ),
        }
    ]
    X_eval = Xte[:2000]
    rng = check_rng(random_state)
    calib = np.sort(rng.choice(len(Xtr), min(1024, len(Xtr)), replace=False))
    X_calib = Xtr[calib]
    for label, series, quantizer in progress(
        demo_settings(), desc="quantizing", enabled=verbose
    ):
        qmlp, tensors, err = quantize_mlp(mlp, quantizer, X_calib, X_eval)
        weight_bits = sum(
            t.size_bits for t in tensors if isinstance(t, QuantizedTensor)
        )
        rows.append(
            {
                "series": series,
                "label": label,
                "bits_per_weight": weight_bits / n_weights,
                "compression": compression_ratio(tensors),
                "model_bits": model_size_bits(tensors),
                "accuracy": qmlp.score(Xte, yte),
                "rel_error": err,
                "file_bytes": file_bytes(tensors),
            }
        )
    rows += layer_bits_rows(mlp, X_calib, ytr[calib], Xte, yte, X_eval)
    rows += adaptive_rows(mlp, Xtr, ytr, Xte, yte, X_eval)
    rows += sq_rows(Xtr, ytr, Xte, yte, hidden, random_state)
    if verbose:
        print(format_table(rows), file=out)
        print(
            "bits/weight: packed codes + scales over the weights; compression: the "
            "whole model (biases in float32) against float32; rel. error: mean over "
            "layers of ||Xq Q - X W|| / ||X W|| on test inputs (Xq: the quantized "
            "network's input to the layer). Data-driven methods calibrate on 1024 "
            "training rows. Adaptive (Khoram & Li): per-parameter precision of "
            "weights and biases, training loss allowed 4x the float one; its bits "
            "are per parameter: the stored tensors (range-coded payload and "
            "precision map), then the coded payload alone. "
            "MSQ per-layer: one bit-width per layer from the measured sensitivity "
            "(Zhou et al.; LayerBitAllocator on the calibration rows, expected "
            "accuracy drop about 0.5 point). SQ trained: an MLP of the same "
            "shape trained once with the Smart Quantization penalty (Razani et "
            "al.; SQClassifier's defaults), its layers binary (b) or ternary (t); "
            "no float reference, so no layer error. "
            "file: bytes of the model written by skquant.save (codes, scales, "
            "float32 biases and a header; adaptive: every parameter's tensor and "
            "a header; '-': a part of a file, not a file).",
            file=out,
        )
    if plot:
        plot_rows(rows, plot, title=f"{dataset}: accuracy vs bits per weight")
        if verbose:
            print(f"plot written to {plot}", file=out)
    return rows


def format_table(rows):
    """The demo's rows as a fixed-width text table."""
    head = (
        f"{'setting':<18}{'bits/weight':>12}{'compression':>13}{'accuracy':>10}"
        f"{'rel. error':>12}{'file (B)':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['label']:<18}{r['bits_per_weight']:>12.3f}{r['compression']:>12.1f}x"
            f"{r['accuracy']:>10.4f}"
            + (
                f"{r['rel_error']:>12.4f}"
                if np.isfinite(r["rel_error"])
                else f"{'-':>12}"
            )
            + (f"{r['file_bytes']:>10d}" if r.get("file_bytes") else f"{'-':>10}")
        )
    return "\n".join(lines)


def plot_rows(rows, path, title=""):
    """Accuracy against bits per weight, one line per series of settings."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "--plot requires matplotlib; install it with `pip install matplotlib`."
        ) from exc
    fig, ax = plt.subplots(figsize=(7, 4.5))
    float_acc = rows[0]["accuracy"]
    ax.axhline(float_acc, color="gray", ls="--", label=f"float32 ({float_acc:.3f})")
    markers = iter("osD^vP*X")
    for series in dict.fromkeys(r["series"] for r in rows[1:]):
        sub = sorted(
            (r for r in rows[1:] if r["series"] == series),
            key=lambda r: r["bits_per_weight"],
        )
        ax.plot(
            [r["bits_per_weight"] for r in sub],
            [r["accuracy"] for r in sub],
            marker=next(markers, "o"),
            label=series,
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bits per weight (codes + scales)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
