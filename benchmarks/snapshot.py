"""A fingerprint of what skquant computes: a refactor must change no number.

Runs every quantizer and every whole-model driver on a small MLP (scikit-learn digits)
and a small CNN (torch, seeded random images), plus the demo table, and hashes what
they return: fitted attributes, quantized weights, codes, stored sizes, reports and the
bytes of the files ``skquant.save`` writes. The fingerprint is a flat JSON mapping
``case/attribute/...`` to a digest of the value (dtype, shape and bytes for arrays).

Usage::

    python benchmarks/snapshot.py --out before.json           # on the old code
    python benchmarks/snapshot.py --check before.json         # on the new code

``--check`` prints every entry that differs, is missing or is new, and exits with
status 1 when any does. One BLAS and one torch thread throughout, so the result does
not depend on the machine's core count. ``--no-demo`` skips the demo table (about a
minute).
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import warnings

import numpy as np

MAX_DEPTH = 6


def _digest_bytes(data):
    return hashlib.sha256(data).hexdigest()[:20]


def _array_digest(a):
    a = np.ascontiguousarray(a)
    head = f"{a.dtype.str}{a.shape}".encode()
    return f"{a.dtype.str}{list(a.shape)}:{_digest_bytes(head + a.tobytes())}"


def flatten(obj, prefix, out, depth=0, seen=None):
    """Write a digest of every leaf of ``obj`` into ``out`` under ``prefix``."""
    import torch

    seen = set() if seen is None else seen
    if prefix.rsplit("[", 1)[-1].rstrip("]") in TIMES or prefix.endswith(TIMES):
        return  # wall-clock times differ run to run
    if obj is None or isinstance(obj, (bool, int, str)):
        out[prefix] = repr(obj)
        return
    if isinstance(obj, (float, np.floating, np.integer, np.bool_)):
        out[prefix] = repr(np.asarray(obj).item()) + ":" + np.asarray(obj).dtype.str
        return
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            for i, item in enumerate(obj.ravel()):
                flatten(item, f"{prefix}[{i}]", out, depth + 1, seen)
        else:
            out[prefix] = _array_digest(obj)
        return
    if isinstance(obj, torch.Tensor):
        out[prefix] = "torch:" + _array_digest(obj.detach().cpu().numpy())
        return
    if type(obj).__name__ == "CodeMatrix":  # a weight held as codes: its floats
        out[prefix] = _array_digest(np.asarray(obj))
        return
    if isinstance(obj, (bytes, bytearray)):
        out[prefix] = "bytes:" + _digest_bytes(bytes(obj))
        return
    if depth >= MAX_DEPTH or id(obj) in seen:
        out[prefix] = type(obj).__name__
        return
    seen = seen | {id(obj)}
    if isinstance(obj, torch.nn.Module):
        for k, v in obj.state_dict().items():
            flatten(v, f"{prefix}.{k}", out, depth + 1, seen)
        out[prefix + ".__class__"] = type(obj).__name__
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(v, f"{prefix}[{k!s}]", out, depth + 1, seen)
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            flatten(v, f"{prefix}[{i}]", out, depth + 1, seen)
        return
    if callable(obj) and not hasattr(obj, "__dict__"):
        out[prefix] = type(obj).__name__
        return
    state = getattr(obj, "__dict__", None)
    if state is None and hasattr(obj, "__slots__"):
        state = {k: getattr(obj, k) for k in obj.__slots__ if hasattr(obj, k)}
    if state is None:
        out[prefix] = repr(obj)
        return
    out[prefix + ".__class__"] = type(obj).__name__
    for k, v in sorted(state.items()):
        if k.startswith("__") or callable(v) and not hasattr(v, "__dict__"):
            continue
        if k.startswith("_") and not k.endswith("_"):
            continue  # private working state, not a result
        flatten(v, f"{prefix}.{k}", out, depth + 1, seen)


TIMES = ("seconds", "time")


def _untimed(obj):
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if k not in TIMES}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _file_bytes_digest(data):
    """Digest of a skquant file's bytes, without timings and the digest over them."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    meta.pop("skquant_digest", None)
    meta = {
        k: _untimed(json.loads(v)) if k == "skquant" else v for k, v in meta.items()
    }
    header["__metadata__"] = meta
    text = json.dumps(header, sort_keys=True).encode()
    return "file:" + _digest_bytes(text + data[8 + n :])


def file_digest(obj, save=None):
    """Digest of the bytes ``skquant.save`` (or ``save``) writes for ``obj``."""
    import skquant

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.skq")
        (save or skquant.save)(obj, path)
        with open(path, "rb") as f:
            return _file_bytes_digest(f.read())


def quantizers():
    import skquant

    return {
        "uniform4": skquant.UniformQuantizer(n_bits=4),
        "uniform3_tensor": skquant.UniformQuantizer(n_bits=3, granularity="per_tensor"),
        "binary": skquant.BinaryQuantizer(),
        "ternary": skquant.TernaryQuantizer(),
        "gpfq3": skquant.GreedyPathQuantizer(n_bits=3),
        "gptq3": skquant.GPTQQuantizer(n_bits=3),
        "nullspace3": skquant.NullSpaceQuantizer(n_bits=3),
        "nullspace3_lp": skquant.NullSpaceQuantizer(n_bits=3, variant="lp"),
    }


def mlp_cases(out):
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    import skquant

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPClassifier((32, 16), max_iter=150, random_state=0).fit(Xtr, ytr)
    flatten(mlp.coefs_, "mlp/float_coefs", out)
    W = mlp.coefs_[0]
    for name, q in quantizers().items():
        # one layer, on its own (data-driven ones on the layer's inputs)
        q1 = _clone(q)
        q1.fit(W, activations=Xtr[:256]) if _needs_data(q1) else q1.fit(W)
        flatten(q1, f"layer/{name}", out)
        flatten(q1.transform(W), f"layer/{name}/transform", out)
        if name.endswith("_lp"):
            continue  # for single layers only
        # the whole MLP
        qmlp = skquant.QuantizedMLP(mlp, q, n_calibration=256, random_state=0).fit(Xtr)
        flatten(qmlp, f"mlp/{name}", out)
        flatten(qmlp.predict_proba(Xte), f"mlp/{name}/proba", out)
        out[f"mlp/{name}/file"] = file_digest(qmlp)
    act = skquant.ActivationQuantizer(n_bits=8).fit(Xtr)
    flatten(act, "mlp/activation8", out)
    flatten(act.transform(Xte), "mlp/activation8/transform", out)
    ap = skquant.AdaptivePrecisionQuantizer().fit(W, gradient=np.sign(W) * 1e-3 + W)
    flatten(ap, "layer/adaptive", out)
    flatten(ap.transform(W), "layer/adaptive/transform", out)
    res = skquant.adaptive_quantize_mlp(mlp, Xte, yte, loss_bound=0.1, max_iter=3)
    flatten(res, "mlp/adaptive_loop", out)
    sens = skquant.measure_sensitivity(mlp, Xte, yte, bits=(2, 4, 8), max_samples=300)
    flatten(sens, "mlp/sensitivity", out)
    alloc = skquant.LayerBitAllocator(mlp, bits=(2, 4, 8), max_samples=300)
    alloc.fit(Xte, yte)
    flatten(alloc, "mlp/layerbits", out)
    q = skquant.QuantizedMLP(mlp, alloc.quantizers(), n_calibration=256, random_state=0)
    flatten(q.fit(Xtr), "mlp/layerbits_model", out)


def _clone(q):
    from sklearn.base import clone

    return clone(q)


def _needs_data(q):
    return q._fit_requires == "data"


def cnn_cases(out):
    import torch
    from torch import nn

    import skquant
    import skquant.torch as sqt

    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(6 * 5 * 5, 10),
        )

    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 1, 14, 14, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    model = net()
    flatten(model, "cnn/float", out)
    for name, q in quantizers().items():
        if name.endswith("_lp"):
            continue  # for single layers only
        qmodel, report = sqt.quantize_model(net(), q, x, return_report=True)
        flatten(qmodel, f"cnn/{name}", out)
        flatten(report.rows, f"cnn/{name}/report", out)
        with torch.no_grad():
            flatten(qmodel(x[:16]), f"cnn/{name}/output", out)
        out[f"cnn/{name}/file"] = file_digest(qmodel, save=sqt.save_model)
    loss = nn.CrossEntropyLoss()
    flatten(sqt.loss_gradients(net(), loss, (x, y)), "cnn/loss_gradients", out)
    res = sqt.adaptive_quantize_model(net(), loss, (x, y), loss_bound=0.1, max_iter=3)
    flatten(res, "cnn/adaptive_loop", out)
    sens = sqt.measure_sensitivity(net(), x, y, bits=(2, 4, 8), max_samples=96)
    flatten(sens, "cnn/sensitivity", out)
    sens_h = sqt.measure_sensitivity(
        net(), x, y, bits=(2, 4, 8), max_samples=96, hessian=True, n_probes=2
    )
    flatten(sens_h, "cnn/sensitivity_hessian", out)
    alloc = skquant.LayerBitAllocator(net(), bits=(2, 4, 8), max_samples=96).fit(x, y)
    flatten(alloc, "cnn/layerbits", out)
    for freeze in (False, True):
        result = sqt.train_sq(
            net(),
            (x, y),
            epochs=2,
            finetune_epochs=1,
            batch_size=32,
            freeze_beta=freeze,
            verbose=False,
        )
        flatten(result, f"cnn/sq_freeze{freeze}", out)
    base = sqt.train_baseline(net(), (x, y), epochs=1, batch_size=32, verbose=False)
    flatten(base, "cnn/baseline", out)
    act = skquant.ActivationQuantizer(n_bits=4).fit(x.reshape(len(x), -1).numpy())
    fq = sqt.FakeQuantize.from_estimator(act)
    flatten(fq(x.reshape(len(x), -1)[:4]), "cnn/fake_quantize", out)


def demo_case(out):
    from skquant._demo import run_demo

    rows = run_demo(verbose=False)
    flatten(rows, "demo", out)


def snapshot(demo=True):
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    out = {}
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp_cases(out)
        cnn_cases(out)
        if demo:
            demo_case(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the fingerprint to this JSON file")
    parser.add_argument("--check", help="compare with this JSON fingerprint")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo table")
    args = parser.parse_args(argv)
    os.environ.setdefault("SKQUANT_PROGRESS", "0")
    snap = snapshot(demo=not args.no_demo)
    print(f"{len(snap)} entries")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(snap, f, indent=0, sort_keys=True)
    if args.check:
        with open(args.check) as f:
            old = json.load(f)
        if args.no_demo:
            old = {k: v for k, v in old.items() if not k.startswith("demo")}
        bad = 0
        for key in sorted(set(old) | set(snap)):
            if old.get(key) != snap.get(key):
                bad += 1
                print(f"DIFF {key}: {old.get(key)} -> {snap.get(key)}")
        print("identical" if not bad else f"{bad} entries differ")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
