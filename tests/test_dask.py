"""Sweeps through joblib's Dask backend: a LocalCluster with worker processes."""

import warnings

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
from joblib import parallel_config  # noqa: E402
from sklearn.frozen import FrozenEstimator  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402

from skquant import (  # noqa: E402
    GreedyPathQuantizer,
    LayerBitAllocator,
    QuantizedMLP,
    measure_sensitivity,
)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_sweeps_on_dask_workers_make_the_serial_choices(client, digits_mlp):
    mlp, X, y = digits_mlp
    Xtr, ytr, Xte, yte = X[:1200], y[:1200], X[1200:], y[1200:]
    kwargs = dict(bits=(2, 4, 6), additivity=False)
    serial = measure_sensitivity(mlp, Xte, yte, **kwargs)
    alloc = LayerBitAllocator(mlp, bits=(2, 4, 6)).fit(Xte, yte)
    q = QuantizedMLP(FrozenEstimator(mlp), GreedyPathQuantizer(), random_state=0)
    grid = {"quantizer__n_bits": [2, 3, 4]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(q, grid, cv=2).fit(Xtr, ytr)
    before = set(client.run(lambda: 0))  # the workers, each a process
    with parallel_config(backend="dask"):
        on_dask = measure_sensitivity(mlp, Xte, yte, n_jobs=2, **kwargs)
        alloc_dask = LayerBitAllocator(mlp, bits=(2, 4, 6), n_jobs=2).fit(Xte, yte)
        front_dask = alloc_dask.pareto_front(12)  # its solves on the workers too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            search_dask = GridSearchCV(q, grid, cv=2, n_jobs=2).fit(Xtr, ytr)
    assert len(before) == 2
    np.testing.assert_allclose(on_dask.noise, serial.noise, rtol=1e-9)
    np.testing.assert_allclose(on_dask.t_margin, serial.t_margin, rtol=1e-9)
    assert alloc_dask.bits_ == alloc.bits_
    front = alloc.pareto_front(12)
    assert front_dask["bits"] == front["bits"] and len(front["bits"]) > 2
    np.testing.assert_array_equal(front_dask["size"], front["size"])
    assert search_dask.best_params_ == search.best_params_
    np.testing.assert_allclose(
        search_dask.cv_results_["mean_test_score"],
        search.cv_results_["mean_test_score"],
    )
    # the tasks ran on the cluster: its workers hold their results' keys no more,
    # but their task counts grew
    done = client.run(lambda dask_worker: dask_worker.state.transition_counter)
    assert all(count > 0 for count in done.values())
