"""Gradients of frozen and inference-mode torch models (issue 19).

Every entry point that needs gradients works on a model loaded for inference
(``eval()``, every parameter ``requires_grad=False``), also under
``torch.no_grad()``, gives what the unfrozen model gives, and leaves the model as
it was: flags, values (the non-training paths), ``.grad`` and every module's
``training``. Inside ``torch.inference_mode()`` each raises a clear error.
"""

import contextlib
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from skquant import LayerBitAllocator  # noqa: E402
from skquant.torch import (  # noqa: E402
    adaptive_quantize_model,
    loss_gradients,
    measure_sensitivity,
    train_baseline,
    train_sq,
)
from skquant.torch._gradients import gradients_enabled  # noqa: E402

LOSS = nn.CrossEntropyLoss()
INFERENCE = r"needs gradients, which torch\.inference_mode\(\) disables.*outside"
MODES = ["frozen", "no_grad", "frozen_no_grad"]


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.25), nn.ReLU(), nn.Linear(8, 3))


def _data(n=48, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


_REFERENCES = {}


def _reference(key, run):
    """``run`` on the unfrozen model, in grad mode: computed once per process."""
    if key not in _REFERENCES:
        _REFERENCES[key] = run(_net())
    return _REFERENCES[key]


def _prepare(mode, seed=0):
    """The model as the caller holds it, and the context of the call."""
    model = _net(seed)
    # mixed modes and a stale .grad, to see that both come back exactly
    model.train()
    model[1].eval()
    model[0].bias.grad = torch.full_like(model[0].bias, 7.0)
    if mode.startswith("frozen"):
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    ctx = torch.no_grad() if mode.endswith("no_grad") else contextlib.nullcontext()
    return model, ctx


def _state(model):
    params = list(model.parameters())
    return {
        "flags": [p.requires_grad for p in params],
        "values": [p.detach().clone() for p in params],
        "grads": [None if p.grad is None else p.grad.clone() for p in params],
        "training": [m.training for m in model.modules()],
    }


def _assert_state(model, before, values=True, training=True):
    after = _state(model)
    assert after["flags"] == before["flags"]
    if training:
        assert after["training"] == before["training"]
    for a, b in zip(after["grads"], before["grads"]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    if values:
        for a, b in zip(after["values"], before["values"]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def _assert_same_parameters(m1, m2):
    for (n1, a), (n2, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        else:  # extra state (a quantized layer's alphabet)
            assert a == b


# ---------------------------------------------------------------- loss_gradients
@pytest.mark.parametrize("mode", MODES)
def test_loss_gradients(mode):
    data = _data()
    ref_loss, ref = _reference("loss", lambda m: loss_gradients(m, LOSS, data))
    model, ctx = _prepare(mode)
    before = _state(model)
    with ctx:
        loss, grads = loss_gradients(model, LOSS, data)
    assert loss == ref_loss
    assert sorted(grads) == sorted(ref)
    for k in ref:
        assert np.any(grads[k] != 0)
        np.testing.assert_array_equal(grads[k], ref[k])
    _assert_state(model, before)


def test_loss_gradients_inference_mode():
    model, _ = _prepare("frozen")
    before = _state(model)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=INFERENCE):
        loss_gradients(model, LOSS, _data())
    with pytest.raises(RuntimeError, match="skquant.torch.loss_gradients needs"):
        with torch.inference_mode():
            loss_gradients(model, LOSS, _data())
    _assert_state(model, before)


def test_model_built_in_inference_mode():
    with torch.inference_mode():
        model = _net()
    with pytest.raises(RuntimeError, match=r"inference tensors.*copy\.deepcopy"):
        loss_gradients(model, LOSS, _data())
    # the way out the message gives
    _, grads = loss_gradients(copy.deepcopy(model), LOSS, _data())
    np.testing.assert_array_equal(
        grads["0.weight"], loss_gradients(_net(), LOSS, _data())[1]["0.weight"]
    )


def test_data_made_in_inference_mode():
    with torch.inference_mode():
        X, y = _data()
    assert X.is_inference()
    model, _ = _prepare("frozen")
    loss, grads = loss_gradients(model, LOSS, (X, y), batch_size=16)
    ref_loss, ref = loss_gradients(_net(), LOSS, _data(), batch_size=16)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(grads["3.weight"], ref["3.weight"], rtol=1e-5)


# ------------------------------------------------------- adaptive_quantize_model
def _adaptive(model):
    return adaptive_quantize_model(model, LOSS, _data(), max_iter=2, loss_bound=0.2)


@pytest.mark.parametrize("mode", MODES)
def test_adaptive_quantize_model(mode):
    ref = _reference("adaptive", _adaptive)
    model, ctx = _prepare(mode)
    before = _state(model)
    with ctx:
        res = _adaptive(model)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert len(res.history) > 1
    for a, b in zip(res.bits, ref.bits):
        np.testing.assert_array_equal(a, b)
    _assert_same_parameters(res.model, ref.model)
    _assert_state(model, before)


def test_adaptive_quantize_model_inference_mode():
    model, _ = _prepare("frozen")
    before = _state(model)
    with pytest.raises(
        RuntimeError, match="skquant.torch.adaptive_quantize_model " + INFERENCE
    ):
        with torch.inference_mode():
            _adaptive(model)
    _assert_state(model, before)


# ------------------------------------------------------------ measure_sensitivity
def _sensitivity(model, hessian=True):
    X, y = _data(64)
    return measure_sensitivity(
        model, X, y, bits=(3, 5), hessian=hessian, n_probes=2, additivity=False
    )


@pytest.mark.parametrize("mode", MODES)
def test_measure_sensitivity_hessian(mode):
    ref = _reference("sensitivity", _sensitivity)
    model, ctx = _prepare(mode)
    before = _state(model)
    with ctx:
        res = _sensitivity(model)
    assert np.all(ref.hessian_trace != 0)
    np.testing.assert_array_equal(res.hessian_trace, ref.hessian_trace)
    np.testing.assert_array_equal(res.noise, ref.noise)
    _assert_state(model, before)


def test_measure_sensitivity_inference_mode():
    model, _ = _prepare("unfrozen")  # mixed modes: they come back too
    before = _state(model)
    with torch.inference_mode():
        # without the Hessian no gradient is needed: it works there
        res = _sensitivity(model, hessian=False)
        with pytest.raises(
            RuntimeError,
            match=r"measure_sensitivity\(hessian=True\) " + INFERENCE,
        ):
            _sensitivity(model)
    np.testing.assert_array_equal(res.noise, _sensitivity(_net(), False).noise)
    _assert_state(model, before)


# ------------------------------------------------------------- LayerBitAllocator
def _allocator(model):
    X, y = _data(64)
    return LayerBitAllocator(model, bits=(3, 5), criterion="hessian", budget=580).fit(
        X, y
    )


@pytest.mark.parametrize("mode", MODES)
def test_layer_bit_allocator_hessian(mode):
    ref = _reference("allocator", _allocator)
    model, ctx = _prepare(mode)
    before = _state(model)
    with ctx:
        alloc = _allocator(model)
    np.testing.assert_array_equal(alloc.cost_, ref.cost_)
    assert alloc.bits_ == ref.bits_
    _assert_state(model, before)


def test_layer_bit_allocator_inference_mode():
    model, _ = _prepare("frozen")
    with pytest.raises(
        RuntimeError, match=r"LayerBitAllocator\(criterion='hessian'\) " + INFERENCE
    ):
        with torch.inference_mode():
            _allocator(model)


# ------------------------------------------------------ train_sq, train_baseline
def _train(fn, model, **kw):
    kw = {"epochs": 2, "verbose": False, "batch_size": 16, "lr": 1e-2, **kw}
    if fn is train_sq:
        kw.setdefault("finetune_epochs", 1)
    return fn(model, _data(), **kw)


TRAINERS = [
    pytest.param(train_sq, {}, id="train_sq"),
    pytest.param(train_baseline, {"alphabet": "float"}, id="baseline_float"),
    pytest.param(train_baseline, {"alphabet": "ternary"}, id="baseline_ternary"),
]


@pytest.mark.parametrize("fn, kw", TRAINERS)
@pytest.mark.parametrize("mode", MODES)
def test_train_frozen(fn, kw, mode):
    ref = _reference((fn, *kw.items()), lambda m: _train(fn, m, **kw))
    model, ctx = _prepare(mode)
    before = _state(model)
    with ctx:
        res = _train(fn, model, **kw)
    # the quantized layers (here every parameter) are trained as if unfrozen
    assert res.trained is model
    _assert_same_parameters(res.trained, ref.trained)
    _assert_same_parameters(res.model, ref.model)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    assert not torch.equal(model[0].weight, before["values"][0])
    # flags and .grad are the caller's again; the trained model is in eval mode
    _assert_state(model, before, values=False, training=False)
    assert not any(m.training for m in model.modules())


def test_train_frozen_leaves_other_layers_alone():
    # layer "3" is left out: frozen, it stays as it was; layer "0" is trained
    model, _ = _prepare("frozen")
    before = _state(model)
    _train(train_baseline, model, alphabet="binary", skip=["3"])
    assert not torch.equal(model[0].weight, before["values"][0])
    assert not torch.equal(model[0].bias, before["values"][1])
    torch.testing.assert_close(model[3].weight, before["values"][2], rtol=0, atol=0)
    torch.testing.assert_close(model[3].bias, before["values"][3], rtol=0, atol=0)
    _assert_state(model, before, values=False, training=False)


@pytest.mark.parametrize("fn, kw", TRAINERS)
def test_train_inference_mode(fn, kw):
    model, _ = _prepare("frozen")
    before = _state(model)
    with pytest.raises(RuntimeError, match=f"skquant.torch.{fn.__name__} " + INFERENCE):
        with torch.inference_mode():
            _train(fn, model, **kw)
    _assert_state(model, before)


# ---------------------------------------------------------- errors on the way
class _Boom(Exception):
    pass


def _failing_loss(after):
    calls = {"n": 0}

    def loss(out, y):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Boom("mid-way")
        return LOSS(out, y)

    return loss


@pytest.mark.parametrize("mode", ["frozen", "unfrozen"])
def test_state_restored_when_loss_gradients_fails(mode):
    model, _ = _prepare(mode)
    before = _state(model)
    with pytest.raises(_Boom):
        loss_gradients(model, _failing_loss(1), _data(), batch_size=16)
    _assert_state(model, before)


@pytest.mark.parametrize("fn, kw", TRAINERS)
def test_state_restored_when_training_fails(fn, kw):
    model, _ = _prepare("frozen")
    before = _state(model)
    with pytest.raises(_Boom):
        _train(fn, model, loss_fn=_failing_loss(4), **kw)
    _assert_state(model, before, values=False)


def test_state_restored_when_nan_stops_training():
    model, _ = _prepare("frozen")
    before = _state(model)
    with pytest.raises(ValueError, match="the loss became"):
        _train(train_sq, model, lr=1e30, epochs=3)
    _assert_state(model, before, values=False)


def test_gradients_enabled_restores_on_error():
    model, _ = _prepare("frozen")
    before = _state(model)
    with torch.no_grad(), pytest.raises(_Boom):
        with gradients_enabled(model, "here", [model[0].weight]):
            assert torch.is_grad_enabled()
            assert model[0].weight.requires_grad
            assert not model[3].weight.requires_grad
            model.train()
            model(torch.randn(2, 4)).sum().backward()
            assert model[0].weight.grad is not None
            raise _Boom
    _assert_state(model, before)


def test_paths_without_gradients_keep_mixed_modes():
    """quantize_model's walk and TorchNetwork.predict leave every module's mode
    as it was (``model.train(was)`` would flatten a mixed model)."""
    from skquant import UniformQuantizer
    from skquant.torch import quantize_model
    from skquant.torch._network import TorchNetwork

    model, _ = _prepare("no_grad")
    before = _state(model)
    X, _ = _data()
    quantize_model(model, UniformQuantizer(n_bits=4), X)
    TorchNetwork(model).predict(X)
    _assert_state(model, before)
    assert [m.training for m in model.modules()] == [True, True, False, True, True]


def test_quantize_model_under_inference_mode_gives_a_plain_model(tmp_path):
    """quantize_model called under torch.inference_mode (a natural wrapper for
    a call that needs no autograd) gives the model a plain call gives, whose
    tensors are no inference tensors: it gives input gradients and updates a
    BatchNorm's statistics in train mode (both raised)."""
    from skquant import GreedyPathQuantizer, UniformQuantizer
    from skquant.torch import quantize_model

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 10),
    ).eval()  # fmt: skip
    X = torch.randn(32, 3, 8, 8)
    plain = quantize_model(net, UniformQuantizer(4), X, activations="dynamic")
    with torch.inference_mode():
        q = quantize_model(net, UniformQuantizer(4), X, activations="dynamic")
    assert not any(t.is_inference() for t in (*q.parameters(), *q.buffers()))
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    with torch.no_grad():
        torch.testing.assert_close(q(x), plain(x), rtol=0, atol=0)
    q(x).sum().backward()
    assert x.grad is not None
    q.train()
    before = q[1].running_mean.clone()
    q(x.detach())
    assert not torch.equal(q[1].running_mean, before)
    from skquant.torch import load_into, save_model

    save_model(plain, tmp_path / "m.skq")
    fresh = copy.deepcopy(net)
    with torch.inference_mode():  # (the file's tensors, not inference ones)
        loaded = load_into(fresh, tmp_path / "m.skq")
    assert not any(t.is_inference() for t in (*loaded.parameters(), *loaded.buffers()))
    # a model built under inference mode, quantized there, as before: its own
    # tensors are inference tensors, which torch refuses to touch outside it
    with torch.inference_mode():
        inner = copy.deepcopy(net).to(torch.float64).float()
        assert next(inner.parameters()).is_inference()
        for quantizer in (UniformQuantizer(4), GreedyPathQuantizer(n_bits=4)):
            got = quantize_model(inner, quantizer, X, activations="dynamic")
            assert got(X).shape == (32, 10)
