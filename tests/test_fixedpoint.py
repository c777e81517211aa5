"""The stored form of adaptive precision: bytes, coded maps, groups, retraining."""

import struct
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skquant
from skquant import AdaptivePrecisionQuantizer, adaptive_quantize_mlp
from skquant._kernels import _packing
from skquant._tensor import _fixedpoint as fp

CODERS = ["auto", "range", "fixed", "lzma", "zlib"]


def _data_bytes(path):
    """Bytes of a safetensors file after its 8-byte length and JSON header."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return len(blob) - 8 - n


def _round_trip(tmp_path, q, W, name="w.skq"):
    path = tmp_path / name
    skquant.save(q.compress(W), path)
    back = skquant.load(path)
    return path, back


@st.composite
def layers(draw):
    n_in = draw(st.integers(1, 40))
    n_out = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["normal", "zero", "single", "wide", "float32"]))
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_in, n_out))
    if kind == "zero":
        W[:] = 0.0
    elif kind == "single":
        W[:] = 0.37
    elif kind == "wide":
        W *= np.exp(3 * rng.standard_normal((n_in, n_out)))
    elif kind == "float32":
        W = W.astype(np.float32)
    G = rng.standard_normal((n_in, n_out)) * 10.0 ** draw(st.integers(-4, 1))
    group = draw(st.sampled_from([None, "channel", 1, 3, 7, 64]))
    coder = draw(st.sampled_from(CODERS))
    payload = draw(st.sampled_from(["range", "raw"]))
    budget = 10.0 ** draw(st.integers(-4, 0))
    return W, G, group, (coder, payload), budget


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(layers())
def test_bytes_decode_to_transform_bit_for_bit(tmp_path, case):
    W, G, group, (coder, payload), budget = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # max_bits caps
        q = AdaptivePrecisionQuantizer(
            budget=budget, group_size=group, map_coder=coder, payload_coder=payload
        ).fit(W, gradient=G)
    path, back = _round_trip(tmp_path, q, W)
    Q = q.transform(W)
    out = back.dequantize()
    assert out.dtype == Q.dtype
    assert np.array_equal(out, Q)
    # the file is the counted size plus its header
    assert 8 * _data_bytes(path) == q.size_bits_ == back.size_bits
    # every weight within its margin (where max_bits does not cap it)
    capped = q.margins_ < q.range_ * 2.0 ** -(q.max_bits + 1)
    assert np.all((np.abs(W.astype(np.float64) - Q) <= q.margins_) | capped)
    # groups share one precision
    if group is not None:
        starts = fp.group_starts(*W.shape, group)
        flat = np.ascontiguousarray(q.bits_.T).ravel()
        lengths = np.diff(np.append(starts, flat.size))
        assert np.array_equal(np.repeat(flat[starts], lengths), flat)
        assert np.array_equal(back.precision_bits, q.bits_)


def test_huge_tensor_round_trip_and_size(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((1024, 1024)).astype(np.float32)
    G = rng.standard_normal((1024, 1024)).astype(np.float32) * 1e-3
    q = AdaptivePrecisionQuantizer(budget=1.0).fit(W, gradient=G)
    path, back = _round_trip(tmp_path, q, W)
    assert np.array_equal(back.dequantize(), q.transform(W))
    assert 8 * _data_bytes(path) == q.size_bits_
    # the range-coded map is near the empirical entropy of the precisions
    maps = q.precision_map_bits_
    assert maps["stored"] <= 1.01 * maps["entropy"] + 1024
    assert maps["stored"] < maps["fixed"]


def test_widths_from_codes_by_hand():
    codes = np.array([0, 1, -1, 2, 4, 8, -8, 6, 3])
    # n_max = 3: 8 = s (no fractional bit), 4 = 0.5 (one), 2 and 6 (two), odd (three)
    assert fp.widths_from_codes(codes, 3).tolist() == [0, 4, 4, 3, 2, 1, 1, 3, 4]
    with pytest.raises(ValueError, match=r"= \[-8, 8\]"):
        fp.widths_from_codes(np.array([9]), 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 48), min_size=0, max_size=60), st.integers(0, 2**31))
def test_pack_fields_round_trip(lengths, seed):
    rng = np.random.default_rng(seed)
    lengths = np.array(lengths, dtype=np.int64)
    fields = np.array(
        [int(rng.integers(0, 2**n)) if n else 0 for n in lengths], dtype=np.int64
    )
    out = np.zeros((int(lengths.sum()) + 7) // 8, dtype=np.uint8)
    _packing.pack_fields(fields, lengths, out)
    back = np.empty_like(fields)
    _packing.unpack_fields(out, lengths, back)
    assert np.array_equal(back, fields)


def test_per_parameter_payload_drops_the_implied_bit():
    # q = 3/4 has 2 fractional bits (3 stored bits): sign + j = 1 in one bit
    codes = np.array([[3], [-1], [4], [0]])  # n_max = 2: 0.75, -0.25, 1 (= s), 0
    widths = fp.widths_from_codes(codes, 2)
    assert widths.ravel().tolist() == [3, 3, 1, 0]
    meta, arrays = fp.encode(codes, widths, 2, 0.25, None, "fixed")
    assert meta["payload_bits"] == 8  # 2 + 2 + 1 bits, one byte
    assert sorted(arrays) == ["exponent", "map", "map_levels", "payload"]
    back, w, step = fp.decode(meta, arrays, (4, 1), 2, None)
    assert np.array_equal(back, codes) and np.array_equal(w, widths)
    assert step == 0.25
    with pytest.raises(ValueError, match="not the fewest"):
        fp.encode(codes, np.array([[3], [3], [3], [0]]), 2, 0.25, None, "fixed")


def test_payload_range_coding_of_skewed_fields():
    """Many short fields with a skewed distribution are range-coded, and decode."""
    rng = np.random.default_rng(7)
    n_max = 5
    # per-group precision 4 bits (N = 3): k in [-8, 7], mostly near 0
    k = np.clip(np.rint(rng.laplace(0, 1.0, size=(4000, 3))), -8, 7).astype(np.int64)
    codes = k * 2 ** (n_max - 3)
    widths = np.full(codes.shape, 4)
    meta, arrays = fp.encode(codes, widths, n_max, 2.0**-5, "channel", "fixed")
    assert "payload_words" in arrays and arrays["payload_classes"].tolist() == [4]
    raw = fp.encode(codes, widths, n_max, 2.0**-5, "channel", "fixed", "raw")[0]
    assert raw["payload_bits"] == 4 * codes.size
    assert meta["payload_bits"] < 0.75 * raw["payload_bits"]
    back, w, _ = fp.decode(meta, arrays, codes.shape, n_max, "channel")
    assert np.array_equal(back, codes) and np.array_equal(w, widths)
    # (a truncated or flipped stream is caught by the file's digest, see above)
    bad = dict(arrays, payload_counts=arrays["payload_counts"][:-1])
    with pytest.raises(ValueError, match="count tables"):
        fp.decode(meta, bad, codes.shape, n_max, "channel")
    bad = dict(arrays, payload_classes=np.array([4, 4], np.uint8))
    with pytest.raises(ValueError, match="classes"):
        fp.decode(meta, bad, codes.shape, n_max, "channel")


def test_group_size_not_dividing_the_layer():
    rng = np.random.default_rng(3)
    W, G = rng.standard_normal((10, 2)), rng.standard_normal((10, 2))
    q = AdaptivePrecisionQuantizer(budget=0.1, group_size=4).fit(W, gradient=G)
    # groups of rows 0-3, 4-7 and a short one 8-9 in every column
    assert fp.group_starts(10, 2, 4).tolist() == [0, 4, 8, 10, 14, 18]
    for c in range(2):
        for rows in (slice(0, 4), slice(4, 8), slice(8, 10)):
            assert np.unique(q.bits_[rows, c]).size == 1
    # a group larger than the column is the column
    assert (
        fp.group_starts(10, 2, 99).tolist()
        == fp.group_starts(10, 2, "channel").tolist()
    )


def test_channel_groups_make_the_map_nearly_free():
    rng = np.random.default_rng(4)
    W = rng.standard_normal((500, 8))
    G = rng.standard_normal((500, 8)) * 1e-2
    per = AdaptivePrecisionQuantizer(budget=0.1).fit(W, gradient=G)
    chan = AdaptivePrecisionQuantizer(budget=0.1, group_size="channel").fit(
        W, gradient=G
    )
    assert chan.precision_map_bits_["stored"] <= 8 * 8 + 64  # 8 symbols + table
    assert per.precision_map_bits_["stored"] > 1000
    # but every weight of a channel pays its smallest margin's precision
    assert chan.payload_bits_ > per.payload_bits_


@pytest.mark.parametrize("group", ["channel", 5])
def test_pooled_group_margins_solve_the_budget_per_group(group):
    rng = np.random.default_rng(8)
    W = rng.standard_normal((40, 6))
    G = rng.standard_normal((40, 6)) * np.exp(rng.standard_normal((40, 6)))
    q = AdaptivePrecisionQuantizer(
        budget=0.2, trust_region=0.25, group_size=group, group_margin="pooled"
    ).fit(W, gradient=G)
    Q = q.transform(W)
    assert np.all(np.abs(W - Q) <= q.margins_)
    # one margin per group, and the summed gradients spend the budget
    starts = fp.group_starts(40, 6, group)
    flat = np.ascontiguousarray(q.margins_.T).ravel()
    lengths = np.diff(np.append(starts, flat.size))
    assert np.allclose(np.repeat(flat[starts], lengths), flat)
    assert np.sum(np.abs(G) * q.margins_) <= 0.2 * (1 + 1e-9)
    assert q.predicted_loss_increase_ == pytest.approx(
        np.sum(np.abs(G) * np.abs(W - Q))
    )
    assert q.predicted_loss_increase_ <= 0.2 * (1 + 1e-9)
    smallest = AdaptivePrecisionQuantizer(
        budget=0.2, trust_region=0.25, group_size=group
    ).fit(W, gradient=G)
    assert q.payload_bits_ <= smallest.payload_bits_
    with pytest.raises(ValueError, match="group_margin"):
        AdaptivePrecisionQuantizer(group_margin="mean").fit(W, gradient=G)


def test_top_code_clipping_costs_one_more_bit():
    # 0.999 s rounds to s at 2 fractional bits, which groups cannot store
    W = np.array([[0.999, 0.26]])
    W = W.T  # one column, two rows
    G = np.array([[1e-9], [1.0]])  # the first has a large margin, the second not
    q = AdaptivePrecisionQuantizer(budget=0.05, trust_region=0.1, group_size=2)
    q.fit(W, gradient=G)
    Q = q.transform(W)
    assert np.all(np.abs(W - Q) <= q.margins_)
    assert Q[0, 0] < q.range_


@pytest.mark.parametrize(
    "params, match",
    [
        ({"group_size": 0}, "group_size"),
        ({"group_size": "row"}, "group_size"),
        ({"group_size": 2.5}, "group_size"),
        ({"map_coder": "huffman"}, "map_coder"),
        ({"payload_coder": "lzma"}, "payload_coder"),
        ({"max_bits": 47}, "max_bits"),
    ],
)
def test_bad_parameters(params, match):
    W = np.ones((4, 2))
    with pytest.raises(ValueError, match=match):
        AdaptivePrecisionQuantizer(**params).fit(W, gradient=W)


@pytest.fixture(scope="module")
def saved_blob(tmp_path_factory):
    rng = np.random.default_rng(5)
    W = rng.standard_normal((200, 6))
    G = rng.standard_normal((200, 6)) * 1e-2
    q = AdaptivePrecisionQuantizer(budget=0.05, map_coder="range").fit(W, gradient=G)
    path = tmp_path_factory.mktemp("fp") / "w.skq"
    skquant.save(q.compress(W), path)
    return path.read_bytes()


@pytest.mark.parametrize("where", [0.5, 0.8, 0.95, 0.999])
def test_flipped_bytes_are_refused(tmp_path, saved_blob, where):
    blob = bytearray(saved_blob)
    i = int(where * (len(blob) - 1))
    blob[i] ^= 0x5A
    path = tmp_path / "bad.skq"
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="corrupted|truncated|not a skquant"):
        skquant.load(path)


def test_truncated_file_is_refused(tmp_path, saved_blob):
    path = tmp_path / "short.skq"
    path.write_bytes(saved_blob[:-7])
    with pytest.raises(ValueError, match="truncated|corrupted"):
        skquant.load(path)


def test_inconsistent_arrays_are_refused():
    """Arrays that pass the digest but do not decode (a writer's bug) raise."""
    codes = np.array([[3, 1], [-1, 0], [2, 4]])
    widths = fp.widths_from_codes(codes, 2)
    for coder in ("range", "fixed", "lzma", "zlib"):
        meta, arrays = fp.encode(codes, widths, 2, 0.25, None, coder)
        short = dict(arrays, payload=arrays["payload"][:-1])
        with pytest.raises(ValueError, match="payload holds"):
            fp.decode(meta, short, (3, 2), 2, None)
        bad_map = dict(arrays, map=arrays["map"][:1] * 0 + 7)
        with pytest.raises(ValueError):
            fp.decode(meta, bad_map, (3, 2), 2, None)


def test_network_loop_file_and_retraining(tmp_path, digits_mlp):
    mlp, X, y = digits_mlp
    res = adaptive_quantize_mlp(mlp, X, y, loss_bound=0.5, max_iter=3)
    path = tmp_path / "net.skq"
    res.save(path)
    assert 8 * _data_bytes(path) == res.history[-1]["total_bits"]
    back = skquant.load(path)
    for name, W in zip(res.names, res.model.coefs_ + res.model.intercepts_):
        Q = back[name].dequantize()
        assert np.array_equal(Q.reshape(-1) if W.ndim == 1 else Q, W)

    options = dict(
        loss_bound=0.5,
        max_iter=3,
        retrain="ste",
        retrain_steps=20,
        retrain_batch_size=128,
        random_state=0,
    )
    ste = adaptive_quantize_mlp(mlp, X, y, **options)
    again = adaptive_quantize_mlp(mlp, X, y, **options)
    assert [h["total_bits"] for h in ste.history] == [
        h["total_bits"] for h in again.history
    ]
    for a, b in zip(ste.model.coefs_, again.model.coefs_):
        assert np.array_equal(a, b)
    # retraining lowers the loss between steps, so the loop compresses further
    assert ste.history[-1]["total_bits"] < res.history[-1]["total_bits"]
    # every parameter the STE fine-tune returns lies on its grid: the stored
    # tensors decode to the model's parameters
    for t, W in zip(ste.tensors, ste.model.coefs_):
        assert np.array_equal(t.dequantize(), W)
    path2 = tmp_path / "ste.skq"
    ste.save(path2, ste.names)
    assert 8 * _data_bytes(path2) == ste.history[-1]["total_bits"]


def test_retraining_keeps_the_grids_and_the_pruned_zeros():
    """The fine-tune between steps, on a quadratic loss with a known minimum."""
    from skquant._network._adaptive import _retrain

    target = np.array([0.3, -0.7, 0.05, 0.9])
    start = [np.array([0.25, -0.5, 0.0, 0.75])]
    bits = [np.array([3, 2, 0, 3], dtype=np.int8)]  # 2, 1, pruned, 2 fractional bits

    def gradient(params, t):
        d = params[0] - target
        return 0.5 * float(d @ d), [d]

    ste = _retrain(start, bits, [1.0], gradient, "ste", 300, 0.01, False)[0]
    steps = np.array([0.25, 0.5, 1.0, 0.25])
    assert ste[2] == 0.0  # pruned stays pruned
    assert np.array_equal(ste / steps, np.rint(ste / steps))  # on the grids
    kept = [0, 1, 3]
    assert np.all(np.abs(ste - target)[kept] <= steps[kept])  # near the minimum
    pruned = _retrain(start, bits, [1.0], gradient, "pruned", 500, 0.01, False)[0]
    assert pruned[2] == 0.0
    np.testing.assert_allclose(pruned[kept], target[kept], atol=0.02)  # float
    assert start[0].tolist() == [0.25, -0.5, 0.0, 0.75]  # input left alone


def test_network_loop_groups_per_neuron(digits_mlp):
    mlp, X, y = digits_mlp
    res = adaptive_quantize_mlp(
        mlp, X, y, loss_bound=0.5, max_iter=2, group_size="channel"
    )
    for bits in res.bits[: len(mlp.coefs_)]:  # (n_in, n_out): one precision a column
        assert all(np.unique(bits[:, j]).size == 1 for j in range(bits.shape[1]))
    with pytest.raises(ValueError, match="retrain must be"):
        adaptive_quantize_mlp(mlp, X, y, retrain="yes")
    with pytest.raises(ValueError, match="retrain_batch_size"):
        adaptive_quantize_mlp(mlp, X, y, retrain="ste", retrain_batch_size=0)
    with pytest.raises(ValueError, match="retrain_lr"):
        adaptive_quantize_mlp(mlp, X, y, retrain="ste", retrain_lr=-1.0)
    with pytest.raises(ValueError, match="retrain_steps=0"):
        adaptive_quantize_mlp(mlp, X, y, retrain="ste", retrain_steps=0)
    for n_jobs in (0, 1.5, True, "x"):  # (taken, or a bare TypeError for "x")
        with pytest.raises(ValueError, match="n_jobs must be None or a non-zero int"):
            adaptive_quantize_mlp(mlp, X, y, n_jobs=n_jobs)


def test_torch_driver_retrains_on_minibatches(tmp_path):
    torch = pytest.importorskip("torch")
    from skquant.torch import adaptive_quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    X, y = torch.randn(300, 6), torch.randint(0, 3, (300,))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    runs = [
        adaptive_quantize_model(
            net,
            torch.nn.CrossEntropyLoss(),
            (X, y),
            loss_bound=0.3,
            max_iter=3,
            group_size=4,
            retrain="ste",
            retrain_steps=10,
            retrain_batch_size=64,
            random_state=1,
        )
        for _ in range(2)
    ]
    assert runs[0].history == runs[1].history
    path = tmp_path / "torch.skq"
    runs[0].save(path, runs[0].names)
    assert 8 * _data_bytes(path) == runs[0].history[-1]["total_bits"]
    back = skquant.load(path)
    # torch layout (out, in): channels along axis 0, stored as (in, out) views
    W = dict(runs[0].model.named_parameters())["0.weight"].detach().numpy()
    assert np.array_equal(back["0.weight"].dequantize().T, W.astype(np.float64))


def test_precision_bits_of_another_shape_are_refused():
    """The one-pass encoder read past the end of a precision map of another
    shape (a review's reproducer); the tensor now refuses it when made."""
    from skquant import QuantizedTensor

    codes = np.zeros((64, 8), dtype=np.int16)
    with pytest.raises(ValueError, match=r"precision_bits must have the codes' shape"):
        QuantizedTensor(
            codes=codes,
            scale=np.array([2.0**-4]),
            n_bits=5,
            qmin=-16,
            qmax=16,
            alphabet="fixed_point",
            precision_bits=np.zeros((2, 8), dtype=np.int8),
        )
