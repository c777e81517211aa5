"""Per-layer sensitivity (Zhou et al.): output noise, its law, t, additivity."""

import math
import re
import warnings

import numpy as np
import pytest
from sklearn.neural_network import MLPRegressor

from skquant import (
    GreedyPathQuantizer,
    TernaryQuantizer,
    UniformQuantizer,
    measure_sensitivity,
)
from skquant._layerbits._law import fit_law, flip_rate, margin_threshold
from skquant._network._dense import MLPNetwork


@pytest.fixture(scope="module")
def held_out(digits_mlp):
    mlp, X, y = digits_mlp
    return mlp, X[1200:], y[1200:]


@pytest.fixture(scope="module")
def measured(held_out):
    mlp, X, y = held_out
    return measure_sensitivity(
        mlp, X, y, bits=(3, 4, 5, 6, 7, 8), threshold="both", hessian=True
    )


def test_noise_decays_like_zhous_law(measured):
    res = measured
    assert res.layer_names == ["layer_0", "layer_1", "layer_2"]
    for r in res.rows:
        # each extra bit divides the noise power by about 4 (slope near -ln 4)
        assert r["slope"] == pytest.approx(-math.log(4), rel=0.25)
        assert r["r2"] > 0.9
        assert all(a > b for a, b in zip(r["noise"], r["noise"][1:]))
    text = str(res)
    assert "slope" in text and "additivity" in text


def test_noise_is_measured_on_the_logits(held_out, measured):
    mlp, X, _ = held_out
    net = MLPNetwork(mlp)
    W = net.weight("layer_2")
    Q = UniformQuantizer(n_bits=3).fit(W).transform(W)
    diff = net.outputs(X, {"layer_2": Q}) - net.outputs(X)
    assert measured.noise[2, 0] == pytest.approx(np.mean(np.sum(diff**2, axis=1)))
    assert measured.weight_error[2, 0] == pytest.approx(np.sum((W - Q) ** 2))
    # the size is the stored tensor's: 3-bit codes and one float64 scale a column
    assert measured.size[2, 0] == 3 * W.size + 32 * W.shape[1]


def test_noise_adds_up_across_layers(measured):
    # Zhou et al.'s additivity (docs/layer_bits.rst): noise from several layers
    # together is close to the sum
    ratios = [a["ratio"] for a in measured.additivity]
    assert len(ratios) == 6 + 3
    assert all(0.5 < r < 2.0 for r in ratios)
    assert np.median(ratios) == pytest.approx(1.0, abs=0.25)


def test_the_fit_recovers_a_known_law():
    bits = [2, 3, 4, 6]
    p0, slope, r2 = fit_law(bits, [5.0 * math.exp(-1.3 * b) for b in bits])
    assert p0 == pytest.approx(5.0) and slope == pytest.approx(-1.3) and r2 == 1.0


def test_margin_threshold_matches_gaussian_noise_on_the_logits():
    # the estimate's own model, simulated: isotropic Gaussian noise of power t on
    # the logits flips about `tolerance` of the decisions
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((4000, 5)) * 2
    K = Z.shape[1]
    spread = np.full(Z.shape, 1.0 / K)  # unit power spread evenly over K logits
    counted = np.ones(len(Z), dtype=bool)
    t = margin_threshold(Z, spread, 0.05, counted)
    assert flip_rate(Z, spread, t, counted) == pytest.approx(0.05, rel=1e-6)
    flips = []
    for _ in range(20):
        R = rng.standard_normal(Z.shape) * math.sqrt(t / K)
        flips.append(np.mean(np.argmax(Z + R, 1) != np.argmax(Z, 1)))
    # the union bound overestimates slightly: the simulated rate is at most 5%
    assert 0.035 < np.mean(flips) <= 0.052


def test_thresholds_grow_with_the_tolerance(held_out, measured):
    mlp, X, y = held_out
    loose = measure_sensitivity(
        mlp,
        X,
        y,
        bits=(3, 4, 5, 6, 7, 8),
        threshold="both",
        tolerance=0.03,
        additivity=False,
    )
    assert np.all(loose.t_margin > measured.t_margin)
    assert np.all(loose.t_empirical >= measured.t_empirical)
    assert np.all(np.isfinite(measured.t_empirical) & (measured.t_empirical > 0))


def test_empirical_threshold_is_where_accuracy_drops(held_out, measured):
    # quantizing a layer to noise far below its t costs at most about the
    # tolerance; far above it, clearly more
    res = measured
    drop = res.cost("accuracy")
    for i in range(len(res.layer_names)):
        low = res.noise[i] < res.t_empirical[i] / 8
        high = res.noise[i] > res.t_empirical[i] * 8
        assert np.all(drop[i, low] <= 2 * res.tolerance + 1e-12)
        assert np.all(drop[i, high] > res.tolerance)


def test_costs_of_the_criteria(measured):
    res = measured
    assert np.allclose(res.cost("noise", "margin"), res.noise / res.t_margin[:, None])
    assert np.allclose(res.cost("sqnr"), res.weight_error / res.weight_norm[:, None])
    h = res.hessian_trace / res.n_params
    assert np.allclose(res.cost("hessian"), h[:, None] * res.weight_error)
    assert np.all(res.cost("accuracy") >= 0)
    assert np.all(res.hessian_trace > 0)  # a trained classifier's loss is convex-ish
    with pytest.raises(ValueError, match="criterion must be one of"):
        res.cost("bogus")


def test_hessian_vector_by_differences_matches_autograd(held_out):
    torch = pytest.importorskip("torch")
    from skquant.torch import TorchNetwork

    mlp, X, y = held_out
    net = MLPNetwork(mlp)
    tnet = TorchNetwork(_torch_copy(torch, mlp))
    rng = np.random.default_rng(0)
    v = {
        f"layer_{i}.weight": rng.standard_normal(W.shape)
        for i, W in enumerate(mlp.coefs_)
    }
    hv = net.hessian_vector((X[:200], y[:200]), v)
    tv = {f"{2 * i}.weight": a.T for i, a in enumerate(v.values())}
    thv = tnet.hessian_vector(
        (torch.from_numpy(X[:200]), torch.from_numpy(y[:200])), tv
    )
    for i, k in enumerate(v):
        np.testing.assert_allclose(
            hv[k], thv[f"{2 * i}.weight"].T, rtol=1e-4, atol=1e-6 * np.abs(hv[k]).max()
        )


def test_hutchinson_trace_matches_the_exact_trace():
    torch = pytest.importorskip("torch")
    from skquant.torch import TorchNetwork

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()
    X, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
    tnet = TorchNetwork(model)
    est = tnet.hessian_traces((X, y), n_probes=400, random_state=0)
    params = dict(model.named_parameters())
    exact = []
    for name in ("0.weight", "2.weight"):
        p0 = params[name].detach().clone()

        def loss(w, name=name):
            out = torch.func.functional_call(model, {name: w}, (X,))
            return torch.nn.functional.cross_entropy(out, y)

        H = torch.autograd.functional.hessian(loss, p0)
        exact.append(float(H.reshape(p0.numel(), p0.numel()).trace()))
    np.testing.assert_allclose(est, exact, rtol=0.15)


def _torch_copy(torch, mlp):
    layers = []
    for i, (W, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        lin = torch.nn.Linear(*W.shape, dtype=torch.float64)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T))
            lin.bias.copy_(torch.from_numpy(b))
        layers += [lin, torch.nn.ReLU()] if i < len(mlp.coefs_) - 1 else [lin]
    return torch.nn.Sequential(*layers)


def test_torch_adapter_gives_the_same_measurement(held_out):
    torch = pytest.importorskip("torch")
    from skquant.torch import measure_sensitivity as measure_torch

    mlp, X, y = held_out
    a = measure_sensitivity(mlp, X, y, bits=(3, 6), threshold="both")
    b = measure_torch(_torch_copy(torch, mlp), X, y, bits=(3, 6), threshold="both")
    np.testing.assert_allclose(a.noise, b.noise, rtol=1e-9)
    np.testing.assert_allclose(a.t_margin, b.t_margin, rtol=1e-6)
    np.testing.assert_allclose(a.t_empirical, b.t_empirical, rtol=1e-6)
    np.testing.assert_allclose(a.accuracy, b.accuracy)


def test_data_driven_quantizers_and_alphabets(held_out):
    mlp, X, y = held_out
    res = measure_sensitivity(
        mlp,
        X,
        y,
        quantizer=GreedyPathQuantizer(),
        bits=("binary", "ternary", 3, 4),
        threshold=None,
    )
    assert res.choices == ["binary", "ternary", 3, 4]
    assert res.code_bits[0].tolist() == [1, 2, 3, 4]
    rounding = measure_sensitivity(
        mlp, X, y, bits=(3, 4), threshold=None, additivity=False
    )
    # GPFQ uses the layer's inputs: less output noise than rounding, same size
    assert np.all(res.noise[:, 2:] < rounding.noise)
    np.testing.assert_array_equal(res.size[:, 2:], rounding.size)
    assert np.all(res.noise[:, 0] > res.noise[:, 1])  # binary worse than ternary


def test_regressor_outputs_are_the_measured_noise():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 6))
    y = X @ rng.standard_normal(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg = MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0).fit(
            X, y
        )
    res = measure_sensitivity(reg, X, bits=(3, 5, 7))
    assert res.accuracy is None and res.t_margin is None
    np.testing.assert_array_equal(res.cost("noise"), res.noise)
    with pytest.raises(ValueError, match="needs a classifier"):
        res.cost("accuracy")
    with pytest.raises(ValueError, match="needs a classifier and its labels"):
        measure_sensitivity(reg, X, y, hessian=True)


def test_measurement_errors(held_out):
    mlp, X, y = held_out
    with pytest.raises(TypeError, match="n_bits parameter"):
        measure_sensitivity(mlp, X, quantizer=TernaryQuantizer())
    with pytest.raises(ValueError, match=re.escape("at least two different")):
        measure_sensitivity(mlp, X, bits=(4, 4))
    with pytest.raises(ValueError, match="bits must hold bit-widths from 2 to 16"):
        measure_sensitivity(mlp, X, bits=(1, 4))
    with pytest.raises(ValueError, match="at least one row"):
        measure_sensitivity(mlp, X[:0])
    with pytest.raises(ValueError, match=re.escape("one label per row of X (597)")):
        measure_sensitivity(mlp, X, y[:10])
    with pytest.raises(ValueError, match="labels"):
        measure_sensitivity(mlp, X, np.full(len(X), 42))
    with pytest.raises(ValueError, match="tolerance must be an accuracy drop"):
        measure_sensitivity(mlp, X, tolerance=2.0)
    with pytest.raises(ValueError, match="threshold must be"):
        measure_sensitivity(mlp, X, threshold="fast")
    with pytest.raises(ValueError, match="hessian=True needs"):
        measure_sensitivity(mlp, X, hessian=True)
    with pytest.raises(ValueError, match="max_samples must be an int >= 1 or None"):
        measure_sensitivity(mlp, X, max_samples=0)
    with pytest.raises(ValueError, match="features|shape"):
        measure_sensitivity(mlp, X[:, :10])
    with pytest.raises(ValueError, match="NaN"):
        measure_sensitivity(mlp, np.full_like(X, np.nan))
    with pytest.raises(TypeError, match="MLPClassifier or MLPRegressor"):
        measure_sensitivity(UniformQuantizer(), X)
    res = measure_sensitivity(mlp, X, bits=(3, 4), threshold=None, additivity=False)
    with pytest.raises(ValueError, match="was not measured"):
        res.threshold("margin")
    with pytest.raises(ValueError, match="hessian=True"):
        res.cost("hessian")


def _same_tables(a, b, rtol):
    for field in ("noise", "size", "code_bits", "accuracy", "t_margin"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol)
    np.testing.assert_allclose(a.p, b.p, rtol=1e-6)


def test_parallel_sweeps_give_the_serial_tables(held_out):
    from skquant import LayerBitAllocator

    mlp, X, y = held_out
    kwargs = dict(quantizer=GreedyPathQuantizer(), bits=(2, 4, 6), additivity=False)
    serial = measure_sensitivity(mlp, X, y, **kwargs)
    parallel = measure_sensitivity(mlp, X, y, n_jobs=2, **kwargs)
    _same_tables(serial, parallel, rtol=1e-9)
    # the estimator: the same measurement, the same choice of bits
    a = LayerBitAllocator(mlp, bits=(2, 4, 6)).fit(X, y)
    b = LayerBitAllocator(mlp, bits=(2, 4, 6), n_jobs=2).fit(X, y)
    assert a.bits_ == b.bits_ and a.size_bits_ == b.size_bits_
    # the Pareto sweep's solves on the workers: the same front
    fa, fb = a.pareto_front(10), b.pareto_front(10)
    assert fa["bits"] == fb["bits"] and len(fa["bits"]) > 1
    # (to round-off: a worker's BLAS runs on one thread, summing in another order)
    np.testing.assert_allclose(fa["cost"], fb["cost"], rtol=1e-12)
    with pytest.raises(ValueError, match="n_jobs must be None or a non-zero int"):
        measure_sensitivity(mlp, X, y, bits=(2, 4), n_jobs=0)


def test_parallel_sweeps_of_torch_models_give_the_serial_tables(held_out):
    torch = pytest.importorskip("torch")
    from skquant.torch import measure_sensitivity as measure_torch

    mlp, X, y = held_out
    model = _torch_copy(torch, mlp)
    serial = measure_torch(model, X, y, bits=(3, 6), additivity=False)
    parallel = measure_torch(model, X, y, bits=(3, 6), additivity=False, n_jobs=2)
    # a worker's thread count may change float32 summation order, nothing more
    _same_tables(serial, parallel, rtol=1e-5)


def test_torch_sweeps_read_datasets_and_loaders_of_labelled_samples(held_out):
    """A Dataset or DataLoader of (x, y) is gathered: the tables and the
    allocator's bits are those of the tensors (X, y)."""
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader, TensorDataset

    from skquant import LayerBitAllocator
    from skquant.torch import measure_sensitivity as measure_torch

    mlp, X, y = held_out
    model = _torch_copy(torch, mlp)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    want = measure_torch(model, Xt, yt, bits=(3, 6), additivity=False)
    bits = LayerBitAllocator(model, bits=(3, 6)).fit(Xt, yt).bits_
    for data in (TensorDataset(Xt, yt), DataLoader(TensorDataset(Xt, yt), 64)):
        got = measure_torch(model, data, bits=(3, 6), additivity=False)
        _same_tables(want, got, rtol=1e-12)
        assert LayerBitAllocator(model, bits=(3, 6)).fit(data).bits_ == bits
    with pytest.raises(ValueError, match="y must be None when X is a DataLoader"):
        measure_torch(model, DataLoader(TensorDataset(Xt, yt), 64), yt)


def test_tasks_carry_compact_inputs():
    """What the sweep's tasks carry: a tensor sliced from a larger one is cloned
    into storage of its own (a tensor pickles its whole storage); other inputs
    are left as they are."""
    import pickle

    torch = pytest.importorskip("torch")
    from skquant._common._jobs import shippable

    big = torch.randn(1000, 64)
    part = big[:100]
    shipped = shippable(part)
    assert isinstance(shipped, torch.Tensor)
    assert torch.equal(shipped, part) and shipped.data_ptr() != part.data_ptr()
    size = len(pickle.dumps(shipped))
    assert size < 2 * part.numel() * 4 < 5 * part.numel() * 4 < len(pickle.dumps(part))
    A = np.arange(12.0).reshape(3, 4)
    assert shippable(A) is A
    batches = [np.zeros((2, 3)), np.ones((2, 3))]
    assert shippable(batches) is batches


def _held_in_worker():
    import multiprocessing

    from skquant._common import _jobs

    _jobs.hold_freed_memory()
    return bool(_jobs._HELD), multiprocessing.current_process().name


def test_workers_hold_freed_memory_and_the_main_process_does_not():
    """Sweep tasks keep freed memory in worker processes only (glibc's
    thresholds raised once per worker); the main process is left alone."""
    from joblib import Parallel, delayed

    from skquant._common import _jobs

    _jobs.hold_freed_memory()
    assert _jobs._HELD == []
    out = Parallel(n_jobs=2)(delayed(_held_in_worker)() for _ in range(2))
    assert all(held and name != "MainProcess" for held, name in out)


def test_run_tasks_streams_results_in_order_on_every_backend():
    """The sweeps' one runner: results in the tasks' order from any iterable of
    tasks, serially one task per result asked for, and on joblib's backends
    (the ones that cannot stream hand back a list's iterator)."""
    from joblib import delayed, parallel_config

    from skquant._common._jobs import run_tasks

    ran = []

    def tasks():
        for i in range(7):
            ran.append(i)
            yield delayed(pow)(i, 2)

    serial = run_tasks(tasks(), None)
    assert ran == []  # nothing runs before a result is asked for
    assert next(serial) == 0 and ran == [0]
    assert list(serial) == [i * i for i in range(1, 7)]
    for backend in ("loky", "threading", "multiprocessing"):
        with parallel_config(backend=backend):
            out = run_tasks(tasks(), 2)
            assert iter(out) is out
            assert list(out) == [i * i for i in range(7)]


def test_joblibs_multiprocessing_backend_measures_mlps(digits_mlp):
    """The scikit-learn front end's tasks pickle for joblib's multiprocessing
    backend (an identity activation was a lambda), with the serial table."""
    from joblib import parallel_config

    mlp, X, y = digits_mlp
    serial = measure_sensitivity(mlp, X[1200:], y[1200:], bits=(2, 4))
    with parallel_config(backend="multiprocessing"):
        got = measure_sensitivity(mlp, X[1200:], y[1200:], bits=(2, 4), n_jobs=2)
    np.testing.assert_array_equal(got.noise, serial.noise)


def _warns_and_reads_settings(i):
    import sklearn

    from skquant import get_config

    warnings.warn(f"task {i}", UserWarning)
    return get_config()["progress"], sklearn.get_config()["assume_finite"]


@pytest.mark.parametrize("backend", ["loky", "threading"])
def test_tasks_run_under_the_callers_settings_and_warnings(backend):
    """A sweep's tasks on workers see the caller's skquant and scikit-learn
    settings, and their warnings reach the caller as in a serial run: seen
    (and caught by ``pytest.warns``), filtered away, or raised."""
    import sklearn
    from joblib import delayed, parallel_config

    from skquant import config_context
    from skquant._common._jobs import run_tasks

    def tasks():
        return (delayed(_warns_and_reads_settings)(i) for i in range(4))

    with parallel_config(backend=backend):
        with config_context(progress=False), sklearn.config_context(assume_finite=True):
            with pytest.warns(UserWarning) as seen:
                out = list(run_tasks(tasks(), 2))
            assert out == [(False, True)] * 4
            mine = sorted(str(w.message) for w in seen if str(w.message)[:4] == "task")
            assert mine == [f"task {i}" for i in range(4)]
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                warnings.filterwarnings("ignore", message="task")
                assert len(list(run_tasks(tasks(), 2))) == 4
            assert not [w for w in seen if str(w.message)[:4] == "task"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                warnings.filterwarnings("error", message="task 2")
                with pytest.raises(UserWarning, match="task 2"):
                    list(run_tasks(tasks(), 2))


def test_a_parallel_sweep_gives_the_serial_runs_warnings():
    """NullSpaceQuantizer's warning that a layer's data leaves no freedom comes
    from the sweep's workers to the caller, as serially."""
    from sklearn.neural_network import MLPClassifier

    from skquant import NullSpaceQuantizer
    from skquant._quantizers._nullspace import NoFreedomWarning

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 6))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((5,), max_iter=200, random_state=0).fit(X, y)
    quantizer = NullSpaceQuantizer(rank=6)
    messages = []
    for n_jobs in (None, 2):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            measure_sensitivity(
                mlp, X, y, quantizer=quantizer, bits=(2, 3), n_jobs=n_jobs
            )
        found = [w for w in seen if issubclass(w.category, NoFreedomWarning)]
        assert found and all(w.filename == __file__ for w in found)
        messages.append(sorted(str(w.message) for w in found))
    assert messages[0] == messages[1]


def test_each_layer_goes_out_as_enough_tasks():
    """A layer's choices go out as one task in this process (its float prefix runs
    once), and with workers in groups for about two tasks a worker over the
    layers; always all the choices, in order."""
    from skquant._network._sensitivity import _task_choices

    choices = [2, 3, 4, 5, 6, "binary"]
    assert _task_choices(choices, 8, None) == [choices]
    assert _task_choices(choices, 8, 1) == [choices]
    assert _task_choices(choices, 8, 2) == [choices]
    assert _task_choices(choices, 8, 8) == [[2, 3, 4], [5, 6, "binary"]]
    assert _task_choices(choices, 3, 4) == [[2, 3], [4, 5], [6, "binary"]]
    assert _task_choices(choices, 1, 16) == [[c] for c in choices]


def test_multilabel_classifiers_are_refused_clearly():
    import warnings

    from sklearn.neural_network import MLPClassifier

    from skquant import LayerBitAllocator, measure_sensitivity

    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 10))
    Y = (X[:, :3] > 0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier((8,), max_iter=300, random_state=0).fit(X, Y)
    for y in (Y, None):
        with pytest.raises(ValueError, match="multilabel classifier"):
            measure_sensitivity(mlp, X, y, bits=(2, 8))
    with pytest.raises(ValueError, match="multilabel classifier"):
        LayerBitAllocator(mlp, bits=(2, 8)).fit(X, Y)


def test_column_vector_labels_are_raveled_others_refused(held_out):
    from sklearn.exceptions import DataConversionWarning

    mlp, X, y = held_out
    kw = dict(bits=(3, 4), additivity=False, max_samples=200)
    ref = measure_sensitivity(mlp, X, y, **kw)
    with pytest.warns(DataConversionWarning, match="column-vector y"):
        col = measure_sensitivity(mlp, X, y[:, None], **kw)
    for field in ("noise", "accuracy", "t_margin"):
        np.testing.assert_array_equal(getattr(col, field), getattr(ref, field))
    for bad in (np.eye(10)[y], y[:, None, None]):
        with pytest.raises(ValueError, match=re.escape(f"y.shape={bad.shape}")):
            measure_sensitivity(mlp, X, bad, **kw)


@pytest.mark.parametrize("seed", ["x", -1, 1.5])
def test_random_state_is_checked_by_name(held_out, seed):
    mlp, X, y = held_out
    with pytest.raises(ValueError, match=f"got random_state={re.escape(repr(seed))}"):
        measure_sensitivity(mlp, X, y, bits=(3, 4), random_state=seed)


def test_n_jobs_none_takes_a_parallel_configs(digits_mlp, monkeypatch):
    """n_jobs=None means what it means to scikit-learn's estimators: the
    n_jobs of a joblib.parallel_config in force (the sweep ran in the calling
    process), else this process; the table is the serial one either way."""
    from joblib import parallel_config

    from skquant._common import _jobs

    mlp, X, y = digits_mlp
    seen = []
    real = _jobs.run_tasks
    monkeypatch.setattr(
        "skquant._network._sensitivity.run_tasks",
        lambda tasks, n_jobs: seen.append(n_jobs) or real(tasks, n_jobs),
    )
    serial = measure_sensitivity(mlp, X[1200:], y[1200:], bits=(2, 4))
    assert set(seen) == {None}
    seen.clear()
    with parallel_config(backend="threading", n_jobs=2):
        got = measure_sensitivity(mlp, X[1200:], y[1200:], bits=(2, 4))
    assert set(seen) == {2}
    np.testing.assert_array_equal(got.noise, serial.noise)
