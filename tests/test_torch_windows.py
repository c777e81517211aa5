"""A walk through a module that is not a sequence holds a bounded amount of
sampled inputs: windows of layers, each captured in stopped float passes
(``skquant.torch._capture.sampled_inputs``)."""

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from torch import nn  # noqa: E402

from skquant import GPTQQuantizer, GreedyPathQuantizer  # noqa: E402
from skquant.torch import TorchNetwork, _capture, _network, quantize_model  # noqa: E402
from skquant.torch._rows import RowSampler  # noqa: E402

D = 8


class Looped(nn.Module):
    """Blocks in an nn.ModuleList that the forward loops over, as language
    models do; ``fx_proof`` adds a mask torch.fx cannot trace."""

    def __init__(self, n=6, d=D, fx_proof=False):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(d, 2 * d), "down": nn.Linear(2 * d, d)})
            for _ in range(n)
        )
        self.head = nn.Linear(d, 3)
        self.fx_proof = fx_proof

    def forward(self, x):
        for block in self.blocks:
            h = block["down"](torch.relu(block["up"](x)))
            if self.fx_proof:
                h = h * torch.ones(x.shape[0], x.shape[-1], dtype=x.dtype)
            x = x + h
        return self.head(x)


def codes(qmodel):
    return {
        n: (m.weight_codes.clone(), m.weight_scale.clone())
        for n, m in qmodel.named_modules()
        if hasattr(m, "weight_codes")
    }


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name][0], b[name][0]), name
        assert torch.equal(a[name][1], b[name][1]), name


def layer_bytes(rows, n_in):
    return rows * n_in * 4  # float32


def same_codes_under_budgets(monkeypatch, make, X, budgets=(1,), **kwargs):
    """Codes of GPFQ (which reads the float inputs) and of GPTQ aiming at the
    float outputs, at each budget, against one float pass (no bound); torch's
    generator seeded the same before each run."""
    for q in (
        GreedyPathQuantizer(n_bits=3),
        GPTQQuantizer(n_bits=3, target="float_output"),
    ):
        runs = []
        for budget in (float("inf"), *budgets):
            monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", budget)
            torch.manual_seed(123)
            runs.append(codes(quantize_model(make(), q, X, **kwargs)))
        for got in runs[1:]:
            assert_same(runs[0], got)


@pytest.mark.parametrize("fx_proof", [False, True])
def test_windows_give_the_codes_of_one_pass(monkeypatch, fx_proof):
    """A budget that fits one or two layers at a time (several windows, the
    later ones in stopped passes) gives every layer the codes that one float
    pass over all of them gives, with the quantized copy walked on its graph or
    in stopped passes (a module fx cannot trace)."""

    def make():
        torch.manual_seed(0)
        return Looped(fx_proof=fx_proof).eval()

    X = torch.randn(64, D)
    budgets = (1, layer_bytes(64, 2 * D) + 1)
    same_codes_under_budgets(monkeypatch, make, X, budgets, batch_size=16)


class Streaming(nn.Module):
    """Blocks each reading the last sample of the previous batch from a buffer
    (streaming state), a depth counter reset at the end of the forward only,
    and a noise drawn from torch's generator in eval mode: what a stopped pass
    or an extra pass would change."""

    def __init__(self, n=4, d=D):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        for i in range(n):
            self.register_buffer(f"prev{i}", torch.zeros(d))
        self.depth = 0

    def forward(self, x):
        for i, block in enumerate(self.blocks):
            self.depth += 1
            prev = getattr(self, f"prev{i}")
            h = block(x + prev) / self.depth
            prev.copy_(x[-1].detach())
            x = torch.tanh(h + 0.1 * torch.randn_like(h))
        self.depth = 0
        return x


def test_a_forward_that_keeps_state_gets_the_codes_of_one_pass(monkeypatch):
    """Each batch of a window's pass starts from the state (buffers, attributes,
    torch's generator) the first pass started it in: the codes of one pass,
    where stopped passes over the state the last pass left gave others (34% to
    91% of a layer's codes)."""
    torch.manual_seed(1)
    X = torch.randn(128, D)
    same_codes_under_budgets(
        monkeypatch, lambda: Streaming().eval(), X, (1, 3000), batch_size=32
    )


class Holding(nn.Module):
    """Blocks a forward loops over, whose state a snapshot must leave as it is
    or put back in place: a buffer made under inference mode, an expanded
    buffer (overlapping memory), a sparse buffer, a dict shared by two
    modules, a list a forward appends to, a plain tensor attribute updated in
    place, and a generator of its own."""

    def __init__(self, n=4, d=D):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(n))
        with torch.inference_mode():
            frozen = torch.ones(d)
        self.register_buffer("frozen", frozen)
        self.register_buffer("wide", torch.arange(float(d)).expand(2, -1))
        self.register_buffer("sparse", torch.eye(d).to_sparse())
        self.registry = {"calls": 0}
        self.blocks[0].registry = self.registry
        self.seen = []
        self.acc = torch.zeros(d)
        self.gen = torch.Generator().manual_seed(7)

    def forward(self, x):
        self.registry["calls"] += 1
        self.seen.append(x.shape[0])
        x = torch.sparse.mm(self.sparse, x.T).T + self.wide[0] * 0 + self.frozen * 0
        for block in self.blocks:
            x = torch.tanh(block(x + 0.1 * self.acc))
            self.acc.add_(x.mean(0).detach())
            x = x + 0.01 * torch.randn(x.shape, generator=self.gen)
        return x


def test_snapshots_leave_or_put_back_what_they_cannot_copy(monkeypatch):
    """Under windows, a model with buffers that cannot be copied into (made
    under inference mode, expanded, sparse), shared containers, a tensor
    attribute updated in place and a generator of its own gets the codes of
    one pass, and keeps its objects: the shared dict is the same object in
    both modules (each raised, or came back as copies, in a first version)."""
    torch.manual_seed(1)
    X = torch.randn(64, D)
    same_codes_under_budgets(
        monkeypatch, lambda: Holding().eval(), X, (1,), batch_size=16
    )
    model = Holding().eval()
    registry, seen = model.registry, model.seen
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    quantize_model(model, GreedyPathQuantizer(n_bits=3), X, batch_size=16)
    assert model.registry is registry and model.blocks[0].registry is registry
    assert model.seen is seen


def test_no_snapshot_where_no_window_can_come(monkeypatch):
    """Where every layer's rows fit in the budget at ``max_rows``, no state is
    saved (a copy of every buffer, and a version check a batch, saved for
    nothing)."""
    saves = []

    class Counted(_capture.ForwardState):
        def save(self):
            saves.append(1)
            return super().save()

    monkeypatch.setattr(_capture, "ForwardState", Counted)  # (the walk's, not fx's)
    torch.manual_seed(0)
    quantize_model(
        Looped().eval(),
        GreedyPathQuantizer(n_bits=3),
        torch.randn(64, D),
        batch_size=16,
    )
    assert saves == []
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    quantize_model(
        Looped().eval(),
        GreedyPathQuantizer(n_bits=3),
        torch.randn(64, D),
        batch_size=16,
    )
    assert len(saves) == 5  # one a batch, and the state the first pass leaves


def test_sequences_of_several_lengths_get_the_codes_of_one_pass(monkeypatch):
    """Batches of sequences of several lengths, rows sampled: their draws are
    made after the first pass whatever the windows, so the codes are those of
    one pass."""
    torch.manual_seed(2)
    X = [torch.randn(2, t, D) for t in (3, 7, 2, 5)]

    def make():
        torch.manual_seed(0)
        return Looped(n=5).eval()

    same_codes_under_budgets(monkeypatch, make, X, (1, 3000), max_rows=20)


def test_windows_give_the_codes_of_one_pass_from_a_checkpoint(monkeypatch, tmp_path):
    """From a checkpoint, on a meta-built model, under a budget of one layer:
    the in-memory codes (the float layers read again for each window)."""
    torch.manual_seed(1)
    model = Looped(fx_proof=True).eval()
    path = tmp_path / "looped.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)
    X = torch.randn(48, D)
    q = GreedyPathQuantizer(n_bits=3)
    whole = codes(quantize_model(model, q, X, batch_size=16))
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    with torch.device("meta"):
        skeleton = Looped(fx_proof=True).eval()
    got = quantize_model(skeleton, q, X, checkpoint=path, batch_size=16)
    assert_same(whole, codes(got))


def held_rows(monkeypatch):
    """Record, at each step of a walk, the bytes of sampled float rows gathered
    for layers whose step has not come yet (what the walk holds for later)."""
    gathered = {}
    real = _capture.gather_rows

    def spy(module, x, rows):
        out = real(module, x, rows)
        gathered[id(module)] = gathered.get(id(module), 0) + out.nbytes
        return out

    for mod in (_capture, _network):  # wherever the walk gathers its rows
        if hasattr(mod, "gather_rows"):
            monkeypatch.setattr(mod, "gather_rows", spy)
    return gathered


def test_a_walk_holds_the_rows_of_one_window(monkeypatch):
    """With a budget of one layer, when a layer's step comes, no later layer's
    float rows have been gathered yet (one pass held every layer's)."""
    torch.manual_seed(0)
    model = Looped(n=4).eval()
    X = torch.randn(64, D)
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    gathered = held_rows(monkeypatch)
    net = TorchNetwork(model)
    ids = {name: id(net.module(name)) for name in net.layer_names}
    ahead = []
    for step in net.walk(X, max_rows=None):
        later = net.layer_names[net.layer_names.index(step.name) + 1 :]
        ahead.append(sum(gathered.get(ids[n], 0) for n in later))
        step.quantized = step.weight
    assert net.layer_names[0] == "blocks.0.up" and len(net.layer_names) == 9
    assert ahead == [0] * 9


def test_one_pass_when_the_rows_fit(monkeypatch):
    """Under the default budget a small model's float layers run once a batch
    (no window passes)."""
    torch.manual_seed(0)
    model = Looped(n=3).eval()
    runs = []
    model.blocks[0]["up"].register_forward_pre_hook(lambda m, a: runs.append(1))
    quantize_model(model, GPTQQuantizer(n_bits=3), torch.randn(64, D), batch_size=16)
    # 4 batches in float, 4 in the quantized copy's graph, one each for fx's
    # check of the graph
    assert len(runs) == 10


def sampler_for(n_samples, max_rows=None):
    return RowSampler(n_samples, max_rows, 0)


class Ragged(nn.Module):
    """Token sequences of several lengths in one walk (batches of different
    length), through blocks a forward loops over."""

    def __init__(self, n=3, d=D):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(d, d) for _ in range(n))

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return x


def test_sequences_of_several_lengths_keep_their_rows(monkeypatch):
    """Batches of sequences of several lengths, under a budget of one layer:
    each layer keeps ``max_rows`` of its rows, each a row of its input."""
    torch.manual_seed(0)
    model = Ragged().eval()
    batches = [torch.randn(4, t, D) for t in (5, 9, 3)]  # 68 rows a layer
    expect = {}
    x = [b.clone() for b in batches]
    with torch.no_grad():
        for i, block in enumerate(model.blocks):
            expect[f"blocks.{i}"] = torch.cat([b.reshape(-1, D) for b in x]).numpy()
            x = [torch.tanh(block(b)) for b in x]
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    got = list(
        _capture.sampled_inputs(model, modules, batches, sampler_for(12, 40), None)
    )
    assert [name for name, _, _ in got] == ["blocks.0", "blocks.1", "blocks.2"]
    for name, rows, calls in got:
        assert rows.shape == (40, D) and calls == 1
        full = expect[name].astype(np.float64)
        # every kept row is one of the layer's input rows, none twice
        match = [np.flatnonzero((full == r).all(axis=1)) for r in rows]
        assert all(len(m) == 1 for m in match)
        assert len({int(m[0]) for m in match}) == 40


class Branchy(nn.Module):
    """A layer the forward calls only for some batches (those of a positive
    sum), one it calls twice, and one it never calls."""

    def __init__(self, d=D):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.twice = nn.Linear(d, d)
        self.rare = nn.Linear(d, d)
        self.never = nn.Linear(d, d)

    def forward(self, x):
        y = self.twice(self.twice(self.a(x)))
        if bool(x.sum() > 0):
            y = self.rare(y)
        return y


def test_layers_run_on_later_batches_only_and_twice(monkeypatch):
    """Under a budget of one layer: a layer that runs on a later batch only is
    captured (not missing), a layer called twice reports its calls, and a
    layer that never runs is named in the error."""
    torch.manual_seed(0)
    model = Branchy().eval()
    low, high = -torch.ones(4, D), torch.ones(4, D)  # 'rare' runs on the second
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    mods = {n: getattr(model, n) for n in ("a", "twice", "rare")}
    got = list(_capture.sampled_inputs(model, mods, [low, high], sampler_for(8)))
    assert [(n, r.shape, c) for n, r, c in got] == [
        ("a", (8, D), 1),
        ("twice", (8, D), 2),
        ("rare", (4, D), 1),
    ]
    mods["never"] = model.never
    with pytest.raises(ValueError, match=r"\['never'\] did not run"):
        list(_capture.sampled_inputs(model, mods, [low, high], sampler_for(8)))


def test_the_reuse_warning_stays_under_windows(monkeypatch):
    """quantize_model still warns of a layer called twice when its window's
    passes stop early."""
    torch.manual_seed(0)
    model = Branchy().eval()
    monkeypatch.setattr(_capture, "HELD_ROWS_BYTES", 1)
    X = torch.randn(16, D)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quantize_model(model, GPTQQuantizer(n_bits=3), X, skip=["never", "rare"])
    assert any(
        "twice" in str(w.message) and "more than once" in str(w.message) for w in seen
    )
