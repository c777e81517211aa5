"""The caller's data stays as it was, and each pass sees the batches as given, for
models whose forward writes to its input (``x.sub_(mean)``, an in-place first
module)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    GreedyPathQuantizer,
    UniformQuantizer,
)
from skquant.torch import (  # noqa: E402
    TorchNetwork,
    capture_inputs,
    loss_gradients,
    measure_sensitivity,
    quantize_model,
    train_baseline,
)


class Shift(nn.Module):
    """``x - 0.5``, written into ``x`` when ``inplace``."""

    def __init__(self, inplace):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return x.sub_(0.5) if self.inplace else x - 0.5


class Traced(nn.Module):
    """Not a sequence: walked on its ``torch.fx`` graph."""

    def __init__(self, inplace):
        super().__init__()
        self.shift, self.fc1, self.fc2 = (
            Shift(inplace),
            nn.Linear(8, 16),
            nn.Linear(16, 3),
        )

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.shift(x))))


class Untraced(Traced):
    """A branch on a value: fx cannot trace it, so the walk stops passes."""

    def forward(self, x):
        h = torch.relu(self.fc1(self.shift(x)))
        if h.sum() > -1e30:
            h = h * 1.0
        return self.fc2(h)


def _sequence(inplace):
    return nn.Sequential(Shift(inplace), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _nested(inplace):  # the shift inside a container the walk runs both copies of
    return nn.Sequential(
        nn.Sequential(Shift(inplace), nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 3)
    )


MODELS = {"sequence": _sequence, "nested": _nested, "traced": Traced}
MODELS["untraced"] = Untraced


def _model(make, inplace):
    torch.manual_seed(0)
    return make(inplace)


def _data(kind, n=300):
    X = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    return torch.from_numpy(X) if kind == "tensor" else X


@pytest.mark.parametrize("kind", ["tensor", "array"])
@pytest.mark.parametrize("make", MODELS.values(), ids=MODELS)
def test_walk_gives_the_codes_of_the_out_of_place_model(make, kind):
    X = _data(kind)
    before = X.clone() if kind == "tensor" else X.copy()
    q = GreedyPathQuantizer(n_bits=3)
    got = quantize_model(_model(make, True), q, X, batch_size=100)
    assert (X == before).all()  # the caller's data is as it was
    want = quantize_model(_model(make, False), q, before, batch_size=100)
    for a, b in zip(got.parameters(), want.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["tensor", "array"])
def test_every_entry_leaves_the_callers_data_alone(kind):
    X = _data(kind, 64)
    y = torch.arange(64) % 3 if kind == "tensor" else np.arange(64) % 3
    before = X.clone() if kind == "tensor" else X.copy()
    model = _model(_sequence, True)
    loss = nn.CrossEntropyLoss()
    runs = {
        "quantize_model": lambda: quantize_model(
            model,
            UniformQuantizer(n_bits=4),
            X,
            activations=ActivationQuantizer(n_bits=8),
        ),
        "capture_inputs": lambda: capture_inputs(model, {"1": model[1]}, X),
        "outputs": lambda: TorchNetwork(model).outputs(X),
        "loss_gradients": lambda: loss_gradients(model, loss, (X, y)),
        "measure_sensitivity": lambda: measure_sensitivity(
            model, X, y, bits=(2, 4), max_samples=64
        ),
        "train_baseline": lambda: train_baseline(model, (X, y), epochs=1),
    }
    for name, run in runs.items():
        run()
        assert (X == before).all(), name


def test_batches_hold_memory_of_their_own():
    from skquant.torch._data import batches

    X = torch.zeros(10, 3)
    for data in (X, X.numpy(), [X[:5], X[5:]], [X[:5].numpy()]):
        for x in batches(data, 4, labelled=False):
            x.add_(1.0)
        assert (X == 0).all()
    for x, _ in batches((X, torch.zeros(10)), 4):
        x.add_(1.0)
    assert (X == 0).all()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


def _same_models(a, b):
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        if isinstance(p, torch.Tensor):
            assert torch.equal(p, q), n


def test_a_generator_is_read_once_for_the_walk_and_the_grids():
    X = torch.randn(64, 8)
    kw = {"activations": ActivationQuantizer(n_bits=8), "batch_size": 16}
    got = quantize_model(
        _mlp(), GreedyPathQuantizer(n_bits=4), (b for b in X.split(16)), **kw
    )
    want = quantize_model(
        _mlp(), GreedyPathQuantizer(n_bits=4), list(X.split(16)), **kw
    )
    _same_models(got, want)


def test_loss_gradients_take_the_models_dtype_and_labelled_batches():
    from skquant import AdaptivePrecisionQuantizer

    X, y = torch.randn(64, 8), torch.arange(64) % 3
    q = AdaptivePrecisionQuantizer(budget=0.05)
    # float32 data into a float64 model: cast as the walk casts it
    got = quantize_model(_mlp().double(), q, X, targets=y)
    want = quantize_model(_mlp().double(), q, X.double(), targets=y)
    _same_models(got, want)
    # (x, y) batches (a DataLoader) carry their own targets
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=16
    )
    got = quantize_model(_mlp(), q, loader, batch_size=16)
    want = quantize_model(_mlp(), q, X, targets=y, batch_size=16)
    _same_models(got, want)
    with pytest.raises(TypeError, match="targets= goes with calibration_data"):
        quantize_model(_mlp(), q, loader, targets=y)
    # batches of inputs alone carry no targets (a (2, n) batch is not a pair)
    for unlabelled in (list(X.split(16)), list(X.split(2))):
        with pytest.raises(TypeError, match=r"batches of \(x, y\) pairs"):
            quantize_model(_mlp(), q, unlabelled)


def test_a_generator_is_read_only_when_the_data_is_needed():
    pulled = []

    def stream():
        for b in torch.randn(64, 8).split(16):
            pulled.append(1)
            yield b

    quantize_model(_mlp(), UniformQuantizer(n_bits=4), stream())  # memoryless
    assert pulled == []
    quantize_model(_mlp(), GreedyPathQuantizer(n_bits=4), stream())
    assert len(pulled) == 4


def test_samples_are_batched_as_rows():
    """A torch Dataset, a list of 1-D float rows and a list of tuples of numbers
    are samples, not batches: the same model as the array of them."""
    from skquant import AdaptivePrecisionQuantizer

    X, y = torch.randn(40, 8), torch.arange(40) % 3
    gpfq, kw = GreedyPathQuantizer(n_bits=4), {"batch_size": 16}
    want = quantize_model(_mlp(), gpfq, X, **kw)
    for data in (
        torch.utils.data.TensorDataset(X),
        torch.utils.data.TensorDataset(X, y),
        list(X),
        list(X.numpy()),
        [tuple(r) for r in X.tolist()],
    ):
        _same_models(quantize_model(_mlp(), gpfq, data, **kw), want)
    # a labelled Dataset carries its targets, as its DataLoader would
    q = AdaptivePrecisionQuantizer(budget=0.05)
    got = quantize_model(_mlp(), q, torch.utils.data.TensorDataset(X, y), **kw)
    _same_models(got, quantize_model(_mlp(), q, X, targets=y, **kw))
    # rows of several lengths: named, not stacked
    with pytest.raises(ValueError, match="list of rows"):
        quantize_model(_mlp(), gpfq, [torch.randn(8), torch.randn(7)])


def test_integer_vectors_stay_batches():
    """A list of 1-D integer tensors is a list of batches (token ids)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3)).eval()
    ids = [torch.randint(0, 10, (16,)) for _ in range(3)]
    got = quantize_model(net, GreedyPathQuantizer(n_bits=4), ids, skip=["0"])
    want = quantize_model(
        net, GreedyPathQuantizer(n_bits=4), torch.cat(ids), skip=["0"]
    )
    _same_models(got, want)
