"""Checkpoints larger than memory: quantize_model(checkpoint=..., output=...)."""

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from torch import nn  # noqa: E402

from skquant import (  # noqa: E402
    ActivationQuantizer,
    AdaptivePrecisionQuantizer,
    GPTQQuantizer,
    GreedyPathQuantizer,
    NullSpaceQuantizer,
    UniformQuantizer,
)
from skquant._tensor._io import FileFormatError, SpooledWriter  # noqa: E402
from skquant.torch import (  # noqa: E402
    Checkpoint,
    QuantLinear,
    TorchNetwork,
    load_into,
    quantize_model,
    save_model,
)
from skquant.torch._checkpoint import is_meta  # noqa: E402


def mlp():
    return nn.Sequential(
        nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
    )


class Residual(nn.Module):
    """A forward that is not a Sequential: the walk's generic path."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(10, 10)
        self.b = nn.Linear(10, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.head(h + torch.relu(self.b(h)))


MODELS = {"mlp": (mlp, (12,)), "cnn": (cnn, (1, 8, 8)), "residual": (Residual, (10,))}


def trained(kind, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[kind]
    model = make()
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    X = torch.randn(96, *shape, generator=torch.Generator().manual_seed(seed + 1))
    return model.eval(), X


def meta(kind):
    with torch.device("meta"):
        return MODELS[kind][0]().eval()


def codes_of(qmodel):
    return {
        n: (m.weight_codes, m.weight_scale)
        for n, m in qmodel.named_modules()
        if hasattr(m, "weight_codes")
    }


def assert_same_codes(a, b):
    ca, cb = codes_of(a), codes_of(b)
    assert ca.keys() == cb.keys() and ca
    for name in ca:
        assert torch.equal(ca[name][0], cb[name][0]), name
        assert torch.equal(ca[name][1], cb[name][1]), name


@pytest.fixture
def saved(tmp_path):
    def save(kind, sharded=False):
        model, X = trained(kind)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if not sharded:
            path = tmp_path / f"{kind}.safetensors"
            safetensors_torch.save_file(state, path)
            return model, X, path
        folder = tmp_path / f"{kind}-shards"
        folder.mkdir()
        keys = sorted(state)
        weight_map = {}
        for i, part in enumerate((keys[::2], keys[1::2])):
            name = f"model-{i + 1:05d}-of-00002.safetensors"
            safetensors_torch.save_file({k: state[k] for k in part}, folder / name)
            weight_map.update(dict.fromkeys(part, name))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )
        return model, X, folder

    return save


QUANTIZERS = [
    UniformQuantizer(n_bits=4),
    GreedyPathQuantizer(n_bits=3),
    GPTQQuantizer(n_bits=3),
    NullSpaceQuantizer(n_bits=3, rank=6),
]


# ------------------------------------------------------------------ the reader
def test_checkpoint_reads_files_shards_and_dtypes(tmp_path, saved):
    state = {
        "f32": torch.randn(3, 4),
        "bf16": torch.randn(5).to(torch.bfloat16),
        "f16": torch.randn(2, 2).half(),
        "i8": torch.arange(-4, 4, dtype=torch.int8),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "one.safetensors"
    safetensors_torch.save_file(state, path)
    ckpt = Checkpoint(path)
    assert sorted(ckpt.keys()) == sorted(state)
    for key, value in state.items():
        got = ckpt.read(key)
        assert got.dtype == value.dtype and torch.equal(got, value)
    assert ckpt.read("bf16", torch.float32).dtype == torch.float32
    assert ckpt.shape("f32") == (3, 4)
    model, _, folder = saved("mlp", sharded=True)
    shards = Checkpoint(folder)
    for key, value in model.state_dict().items():
        assert torch.equal(shards.read(key), value)
    # a folder of shards without an index: their tensors together
    (folder / "model.safetensors.index.json").unlink()
    assert sorted(Checkpoint(folder).keys()) == sorted(model.state_dict())


def test_checkpoint_with_a_dtype_skquant_does_not_read(tmp_path):
    """A float8 tensor: the others read, that one refused by name."""
    path = tmp_path / "f8.safetensors"
    state = {"w": torch.randn(4, 3), "w8": torch.randn(5).to(torch.float8_e4m3fn)}
    safetensors_torch.save_file(state, path)
    ckpt = Checkpoint(path)
    assert torch.equal(ckpt.read("w"), state["w"])
    with pytest.raises(ValueError, match="'w8' has dtype F8_E4M3"):
        ckpt.read("w8")
    # a header whose entries leave a gap in the data: refused on opening
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8 : 8 + n])
    head["w8"]["data_offsets"] = [o + 1 for o in head["w8"]["data_offsets"]]
    text = json.dumps(head).encode()
    gap = tmp_path / "gap.safetensors"
    gap.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :] + b"\0")
    with pytest.raises(ValueError, match="corrupted: entry .* starts at"):
        Checkpoint(gap)


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        Checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x01" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        Checkpoint(bad)
    good = tmp_path / "good.safetensors"
    safetensors_torch.save_file({"w": torch.randn(100)}, good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        Checkpoint(cut)
    with pytest.raises(KeyError, match="no tensor 'x'"):
        Checkpoint(good).read("x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no \\*.safetensors file"):
        Checkpoint(empty)
    (empty / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "missing.safetensors"}})
    )
    with pytest.raises(ValueError, match="missing"):
        Checkpoint(empty)
    (empty / "model.safetensors.index.json").write_text(  # (a file outside it)
        json.dumps({"weight_map": {"w": "../good.safetensors"}})
    )
    with pytest.raises(ValueError, match="not a file of its folder"):
        Checkpoint(empty)
    dup = tmp_path / "dup"
    dup.mkdir()
    for name in ("a", "b"):
        safetensors_torch.save_file({"w": torch.ones(2)}, dup / f"{name}.safetensors")
    with pytest.raises(ValueError, match="in both"):
        Checkpoint(dup)


# ----------------------------------------------------- quantizing from a checkpoint
@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("quantizer", QUANTIZERS, ids=lambda q: type(q).__name__)
def test_checkpoint_gives_the_in_memory_codes(saved, kind, quantizer):
    model, X, path = saved(kind)
    ref = quantize_model(model, quantizer, X)
    skeleton = meta(kind)
    got = quantize_model(skeleton, quantizer, X, checkpoint=path)
    assert_same_codes(ref, got)
    assert torch.equal(ref(X[:5]), got(X[:5]))
    # the meta model is left as it was: nothing materialised in it
    assert all(p.device.type == "meta" for p in skeleton.parameters())


@pytest.mark.parametrize("kind", ["mlp", "cnn", "residual"])
def test_output_file_loads_into_a_meta_model(saved, tmp_path, kind):
    model, X, path = saved(kind, sharded=kind == "cnn")
    q = GreedyPathQuantizer(n_bits=3)
    ref = quantize_model(model, q, X)
    out = tmp_path / "q.skq"
    result = quantize_model(meta(kind), q, X, checkpoint=path, output=out)
    assert result is None
    loaded = load_into(meta(kind), out)
    assert_same_codes(ref, loaded)
    state = loaded.state_dict().values()
    assert all(p.device.type != "meta" for p in state if torch.is_tensor(p))
    assert torch.equal(ref(X[:5]), loaded(X[:5]))
    # the file holds what save_model writes for the in-memory result
    save_model(ref, tmp_path / "ref.skq")
    other = load_into(MODELS[kind][0]().eval(), tmp_path / "ref.skq")
    assert torch.equal(other(X[:5]), loaded(X[:5]))


def test_output_from_a_model_in_memory_leaves_it_unchanged(saved, tmp_path):
    model, X, _ = saved("cnn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = UniformQuantizer(n_bits=4)
    out = tmp_path / "q.skq"
    qm, report = quantize_model(model, q, X, output=out, return_report=True)
    assert qm is None and [r["name"] for r in report.rows] == ["0", "3", "6"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.device.type == "cpu" for p in model.parameters())
    loaded = load_into(cnn().eval(), out)
    assert_same_codes(quantize_model(model, q), loaded)


def test_layers_left_float_come_from_the_checkpoint(saved, tmp_path):
    model, X, path = saved("mlp")
    plan = {"0": GreedyPathQuantizer(n_bits=3)}  # "2" and "4" stay float
    got = quantize_model(meta("mlp"), plan, X, checkpoint=path, skip=["4"])
    ref = quantize_model(model, plan, X, skip=["4"])
    assert type(got[2]) is nn.Linear and torch.equal(got[2].weight, model[2].weight)
    assert torch.equal(got[4].weight, model[4].weight)
    assert torch.equal(ref(X[:4]), got(X[:4]))
    out = tmp_path / "q.skq"
    quantize_model(meta("mlp"), plan, X, checkpoint=path, skip=["4"], output=out)
    assert torch.equal(load_into(meta("mlp"), out)(X[:4]), ref(X[:4]))


def test_the_walk_holds_one_quantized_layer_at_a_time(saved, monkeypatch):
    model, X, path = saved("mlp")
    held = []
    apply = TorchNetwork._apply

    def spy(self, qmods, step):
        apply(self, qmods, step)
        held.append(len(self._held))
        # the quantized copy keeps no float weight of its weight layers
        assert all(qmods[n].weight.device.type == "meta" for n in self._modules)

    monkeypatch.setattr(TorchNetwork, "_apply", spy)
    quantize_model(meta("mlp"), GreedyPathQuantizer(n_bits=3), X, checkpoint=path)
    assert held == [1, 1, 1]


class Residual(nn.Module):
    """Layers inside a forward of its own (the walk's stopped passes)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.a(x)) + x
        return self.c(torch.relu(self.b(h)) + h)


def test_a_pass_stopped_at_a_layer_reads_not_its_weight(tmp_path, monkeypatch):
    """The quantized copy's pass that stops at a layer to take its inputs does
    not read the layer's float weight first (and leave it there)."""
    torch.manual_seed(0)
    path = tmp_path / "res.safetensors"
    safetensors_torch.save_file(Residual().eval().state_dict(), path)
    loaded = []
    apply = TorchNetwork._apply

    def spy(self, qmods, step):
        loaded.append([n for n in self._modules if not is_meta(qmods[n].weight)])
        apply(self, qmods, step)

    monkeypatch.setattr(TorchNetwork, "_apply", spy)
    with torch.device("meta"):
        skeleton = Residual().eval()
    X = torch.randn(64, 8)
    quantize_model(skeleton, GreedyPathQuantizer(n_bits=3), X, checkpoint=path)
    assert loaded == [[], [], []]


class Looped(nn.Module):
    """Blocks in an nn.ModuleList that the forward loops over (as language
    models do), with a mask torch.fx cannot trace (torch.ones of a size)."""

    def __init__(self, n=4, d=8):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(d, 2 * d), "down": nn.Linear(2 * d, d)})
            for _ in range(n)
        )
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        for block in self.blocks:
            keep = torch.ones(x.shape[0], x.shape[1], dtype=x.dtype)
            x = x + block["down"](torch.relu(block["up"](x))) * keep
        return self.head(x)


def test_a_forward_looping_over_blocks_gives_the_in_memory_codes(tmp_path):
    """A module that is not a sequence (and that fx cannot trace), read from a
    checkpoint, gets the codes it gets in memory."""
    torch.manual_seed(0)
    model = Looped().eval()
    path = tmp_path / "looped.safetensors"
    safetensors_torch.save_file(model.state_dict(), path)
    X = torch.randn(64, 8)
    with torch.device("meta"):
        skeleton = Looped().eval()
    q = GPTQQuantizer(n_bits=3)
    got = quantize_model(skeleton, q, X, checkpoint=path, batch_size=16)
    assert_same_codes(quantize_model(model, q, X, batch_size=16), got)


def test_a_parametrized_weight_layer_is_refused_by_name(tmp_path):
    """A weight layer whose weight a parametrization computes (weight_norm) has
    no weight entry of its own: checkpoint= and output= refuse it by name and
    say what they support; left float (skip), it is read from its originals."""
    from torch.nn.utils.parametrizations import weight_norm

    def make():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
        weight_norm(net[0])
        return net

    model, X = make(), torch.randn(64, 8)
    path = tmp_path / "wn.safetensors"
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, path
    )
    q = GPTQQuantizer(n_bits=3)
    with torch.device("meta"):
        skeleton = make()
    refused = r"layers \['0'\] compute their weight .*original0.*plain weight"
    with pytest.raises(ValueError, match=refused):
        quantize_model(skeleton, q, X, checkpoint=path)
    with pytest.raises(ValueError, match=refused):
        quantize_model(model, q, X, output=tmp_path / "q.skq")
    ref = quantize_model(model, q, X, skip=["0"])
    got = quantize_model(skeleton, q, X, checkpoint=path, skip=["0"])
    assert_same_codes(ref, got)
    assert torch.equal(ref(X), got(X))


def test_checkpoint_refusals(saved, tmp_path):
    model, X, path = saved("mlp")
    with pytest.raises(ValueError, match="ActivationQuantizer.* cannot be combined"):
        quantize_model(
            meta("mlp"),
            UniformQuantizer(),
            X,
            checkpoint=path,
            activations=ActivationQuantizer(),
        )
    with pytest.raises(ValueError, match="loss gradients of the whole model"):
        quantize_model(
            meta("mlp"),
            AdaptivePrecisionQuantizer(),
            X,
            targets=torch.zeros(len(X), dtype=torch.long),
            checkpoint=path,
        )
    with torch.device("meta"):
        deeper = nn.Sequential(*mlp(), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"lacks 2 .*\['6.bias', '6.weight'\]"):
        quantize_model(deeper, UniformQuantizer(), checkpoint=path)
    with torch.device("meta"):
        other = nn.Sequential(
            nn.Linear(12, 20), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 4)
        )
    with pytest.raises(
        ValueError, match=r"'0.bias' has shape \(24,\), the model's \(20,\)"
    ):
        quantize_model(other, UniformQuantizer(), checkpoint=path)
    with pytest.raises(ValueError, match="checkpoint=.* does not exist"):
        quantize_model(meta("mlp"), UniformQuantizer(), checkpoint=tmp_path / "x")


def test_load_into_a_meta_model_refuses_a_file_missing_its_entries(saved, tmp_path):
    model, X, _ = saved("mlp")
    out = tmp_path / "q.skq"
    save_model(quantize_model(model, UniformQuantizer()), out)
    with torch.device("meta"):
        bigger = mlp()
        bigger.register_buffer("extra", torch.zeros(3))
    with pytest.raises(ValueError, match="no value for them"):
        load_into(bigger, out)


# ------------------------------------------------------------ the spooled writer
def test_spooled_file_is_checked_like_any_other(tmp_path):
    from skquant import load, quantize

    qt = quantize(np.random.default_rng(0).standard_normal((40, 6)), n_bits=3)
    path = tmp_path / "s.skq"
    with SpooledWriter(path) as w:
        w.tensor("t", qt)
        w.array("b", np.arange(4.0))
        w.array("zero_d", np.float32(2.5))
        w.array("fortran", np.asfortranarray(np.arange(6.0).reshape(2, 3)))
        with pytest.raises(ValueError, match="written twice"):
            w.array("b", np.zeros(1))
        w.write("dict")
    assert [p.name for p in tmp_path.iterdir()] == ["s.skq"]  # no spool left
    back = load(path)
    assert np.array_equal(back["t"].dequantize(), qt.dequantize())
    assert back["zero_d"].shape == () and back["zero_d"] == np.float32(2.5)
    assert np.array_equal(back["fortran"], np.arange(6.0).reshape(2, 3))
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(FileFormatError, match="corrupted"):
        load(path)
    # a writer left without write() leaves nothing behind
    with SpooledWriter(tmp_path / "never.skq") as w:
        w.array("a", np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["s.skq"]


class Tied(nn.Module):
    """Two layers sharing one weight (a checkpoint may store it once)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.b.weight = self.a.weight
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.filterwarnings("ignore:layers .* share their weight")
@pytest.mark.parametrize("dropped", ["b.weight", "a.weight"])
def test_tied_weights_stored_once(tmp_path, dropped):
    torch.manual_seed(0)
    model = Tied().eval()
    X = torch.randn(64, 8)
    state = {k: v for k, v in model.state_dict().items() if k != dropped}
    path = tmp_path / "tied.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
    q = GreedyPathQuantizer(n_bits=3)
    ref = quantize_model(model, q, X)
    with torch.device("meta"):
        skeleton = Tied().eval()
    got = quantize_model(skeleton, q, X, checkpoint=path)
    assert_same_codes(ref, got)
    assert torch.equal(ref(X[:4]), got(X[:4]))
    out = tmp_path / "q.skq"
    with torch.device("meta"):
        skeleton = Tied().eval()
    quantize_model(skeleton, q, X, checkpoint=path, output=out)
    with torch.device("meta"):
        skeleton = Tied().eval()
        with pytest.raises(RuntimeError, match="inside `with torch.device"):
            load_into(skeleton, out)
        with pytest.raises(RuntimeError, match="call quantize_model after"):
            quantize_model(skeleton, q, X, checkpoint=path)
    loaded = load_into(skeleton, out)
    assert torch.equal(ref(X[:4]), loaded(X[:4]))


class TiedEmbedding(nn.Module):
    """A language model's embedding tied to its decoder."""

    def __init__(self):
        super().__init__()
        self.emb, self.mid = nn.Embedding(20, 8), nn.Linear(8, 8)
        self.dec = nn.Linear(8, 20, bias=False)
        self.dec.weight = self.emb.weight

    def forward(self, t):
        return self.dec(torch.tanh(self.mid(self.emb(t))))


@pytest.mark.parametrize("stored", ["both", "emb.weight", "dec.weight"])
@pytest.mark.filterwarnings("ignore:.*are the weights of layers:UserWarning")
def test_a_weight_tied_to_a_float_embedding(tmp_path, stored):
    """Left float in the embedding, quantized in the decoder: from a checkpoint
    that stores it under either name (or both), and to a file, as in memory."""
    torch.manual_seed(0)
    model = TiedEmbedding().eval()
    X = torch.randint(0, 20, (64, 5))
    q = GreedyPathQuantizer(n_bits=3)
    ref = quantize_model(model, q, X, skip=["emb"])
    assert type(ref.dec) is QuantLinear
    state = {  # (clones: safetensors refuses two names of one tensor)
        k: v.clone()
        for k, v in model.state_dict().items()
        if stored in ("both", k) or k.startswith("mid.")
    }
    path = tmp_path / "tied.safetensors"
    safetensors_torch.save_file(state, path)

    def skeleton():
        with torch.device("meta"):
            return TiedEmbedding().eval()

    got = quantize_model(skeleton(), q, X, checkpoint=path, skip=["emb"])
    assert_same_codes(ref, got)
    assert torch.equal(got.emb.weight, model.emb.weight)
    assert torch.equal(ref(X), got(X))
    for source, ckpt in [(model, None), (skeleton(), path)]:
        out = tmp_path / "q.skq"
        quantize_model(source, q, X, checkpoint=ckpt, skip=["emb"], output=out)
        loaded = load_into(skeleton(), out)
        assert_same_codes(ref, loaded)
        assert torch.equal(loaded.emb.weight, model.emb.weight)
        assert torch.equal(ref(X), loaded(X))
    if stored == "both":
        del state["emb.weight"], state["dec.weight"]
        safetensors_torch.save_file(state, path)
        with pytest.raises(ValueError, match=r"lacks 1 .*\['dec.weight'\]"):
            quantize_model(skeleton(), q, X, checkpoint=path, skip=["emb"])


class SharedModule(nn.Module):
    """A module registered under two names (a layer used twice)."""

    def __init__(self):
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.a = self.b = nn.Linear(16, 16)

    def forward(self, x):
        h = torch.relu(self.a(torch.relu(self.inp(x))))
        return self.out(torch.relu(self.b(h)))


@pytest.mark.filterwarnings("ignore:layers .* share their weight")
@pytest.mark.parametrize(
    "make,skip,dropped",
    [
        (TiedEmbedding, ["emb", "dec"], "dec.weight"),  # both float
        (TiedEmbedding, ["emb", "dec"], "emb.weight"),
        (SharedModule, [], "b.bias"),  # safetensors' save_model keeps 'a.'
        (SharedModule, [], "a.bias"),
    ],
)
def test_every_tied_tensor_is_read_from_the_name_stored(tmp_path, make, skip, dropped):
    """Any parameter or buffer under several names (not only a quantized
    layer's weight) is read from whichever name the checkpoint stores, once,
    and stays one tensor, giving the in-memory codes."""
    torch.manual_seed(0)
    model = make().eval()
    X = torch.randint(0, 20, (64, 5)) if make is TiedEmbedding else torch.randn(64, 8)
    state = {k: v.clone() for k, v in model.state_dict().items() if k != dropped}
    path = tmp_path / "m.safetensors"
    safetensors_torch.save_file(state, path)
    q = GreedyPathQuantizer(n_bits=3)
    ref = quantize_model(model, q, X, skip=skip)
    with torch.device("meta"):
        skeleton = make().eval()
    got = quantize_model(skeleton, q, X, checkpoint=path, skip=skip)
    assert_same_codes(ref, got)
    assert torch.equal(ref(X), got(X))
    if make is TiedEmbedding:
        assert got.dec.weight is got.emb.weight
    else:
        assert got.a is got.b


def test_load_into_a_meta_model_keeps_its_ties(tmp_path):
    """A float weight under two names (an embedding tied to its decoder) is one
    tensor after load_into on a meta-built model, as on a model built with its
    weights."""
    torch.manual_seed(0)
    model = TiedEmbedding().eval()
    X = torch.randint(0, 20, (16, 5))
    qmodel = quantize_model(model, UniformQuantizer(n_bits=4), skip=["emb", "dec"])
    path = tmp_path / "q.skq"
    save_model(qmodel, path)
    with torch.device("meta"):
        skeleton = TiedEmbedding().eval()
    for target in (TiedEmbedding().eval(), skeleton):
        loaded = load_into(target, path)
        assert loaded.dec.weight is loaded.emb.weight
        assert type(loaded.mid) is QuantLinear
        assert torch.equal(loaded(X), qmodel(X))


@pytest.mark.filterwarnings("ignore:.*are the weights of layers:UserWarning")
def test_the_walk_holds_the_float_state_once(tmp_path, monkeypatch):
    """The lean walk's quantized copy shares the float side's parameters (an
    embedding left float is held once), and nothing writes to them."""
    torch.manual_seed(0)
    model = TiedEmbedding().eval()
    X = torch.randint(0, 20, (64, 5))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shared = []
    apply = TorchNetwork._apply

    def spy(self, qmods, step):
        apply(self, qmods, step)
        shared.append(
            qmods["emb"].weight is self.model.emb.weight
            and qmods["mid"].bias is self.model.mid.bias
        )

    monkeypatch.setattr(TorchNetwork, "_apply", spy)
    out = tmp_path / "q.skq"
    quantize_model(model, GreedyPathQuantizer(n_bits=3), X, skip=["emb"], output=out)
    assert shared == [True, True]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bfloat16_checkpoint_into_a_float32_model(tmp_path):
    model, X = trained("mlp")
    state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    path = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file(state, path)
    rounded = mlp().eval()
    rounded.load_state_dict({k: v.float() for k, v in state.items()})
    q = GPTQQuantizer(n_bits=4)
    got = quantize_model(meta("mlp"), q, X, checkpoint=path)
    assert_same_codes(quantize_model(rounded, q, X), got)
    assert got[0].bias.dtype == torch.float32


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_dynamic_activations_from_a_checkpoint(saved, tmp_path, kind):
    """8-bit inputs with a grid per call need nothing fitted: they combine with
    checkpoint= and output=, and run as the in-memory model does."""
    model, X, path = saved(kind)
    q = UniformQuantizer(n_bits=8)
    ref = quantize_model(model, q, X, activations="dynamic")
    got = quantize_model(meta(kind), q, X, checkpoint=path, activations="dynamic")
    assert_same_codes(ref, got)
    assert {m.activation_bits for m in codes_layers(got)} == {8}
    assert torch.equal(ref(X[:6]), got(X[:6]))
    out = tmp_path / "q.skq"
    quantize_model(meta(kind), q, X, checkpoint=path, activations="dynamic", output=out)
    loaded = load_into(meta(kind), out)
    assert torch.equal(ref(X[:6]), loaded(X[:6]))
    save_model(ref, tmp_path / "ref.skq")  # the file save_model writes, read the same
    assert torch.equal(load_into(meta(kind), tmp_path / "ref.skq")(X[:6]), ref(X[:6]))


def codes_layers(qmodel):
    return [m for m in qmodel.modules() if hasattr(m, "weight_codes")]


def test_checkpoint_names_with_a_prefix(saved, tmp_path):
    """A checkpoint saved from a wrapper: its names start with "model."."""
    model, X, _ = saved("mlp")
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    state["lm_extra.weight"] = torch.ones(2)  # not the model's: not seen
    path = tmp_path / "wrapped.safetensors"
    safetensors_torch.save_file(state, path)
    ckpt = Checkpoint(path, prefix="model.")
    assert sorted(ckpt.keys()) == sorted(model.state_dict())
    q = GreedyPathQuantizer(n_bits=3)
    got = quantize_model(meta("mlp"), q, X, checkpoint=ckpt)
    assert_same_codes(quantize_model(model, q, X), got)
    with pytest.raises(ValueError, match="lacks 6 of the model's state entries"):
        quantize_model(meta("mlp"), q, X, checkpoint=path)
    with pytest.raises(TypeError, match="prefix must be a str"):
        Checkpoint(path, prefix=1)


class ReadsAWeight(nn.Module):
    """A forward that reads ``fc1``'s weight outside ``fc1``'s call."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(12, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)) * self.fc1.weight.abs().mean())


def test_a_weight_read_outside_its_layer_is_named(tmp_path):
    torch.manual_seed(0)
    model, X = ReadsAWeight(), torch.randn(40, 12)
    out = tmp_path / "q.skq"
    with pytest.raises(ValueError, match=r"reads one outside it.*F\.linear") as err:
        quantize_model(model, GreedyPathQuantizer(n_bits=4), X, output=out)
    assert "meta" in str(err.value.__cause__)
    assert not out.exists()
    # in memory, the same model quantizes
    q = quantize_model(model, GreedyPathQuantizer(n_bits=4), X)
    assert torch.isfinite(q(X)).all()


# ------------------------------------------- what an LM user meets (a review)
def test_a_checkpoint_of_a_larger_model_is_named(saved, tmp_path):
    """Tensors the model has no place for (a checkpoint of another configuration)
    are named in a warning, not taken silently."""
    model, X, path = saved("mlp")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["6.weight"] = torch.zeros(2, 4)
    bigger = tmp_path / "bigger.safetensors"
    safetensors_torch.save_file(state, bigger)
    with pytest.warns(UserWarning, match=r"holds 1 tensors .*\['6.weight'\]"):
        quantize_model(meta("mlp"), UniformQuantizer(n_bits=4), X, checkpoint=bigger)


def test_names_under_a_prefix_are_pointed_at(saved, tmp_path):
    model, X, path = saved("mlp")
    state = {f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}
    wrapped = tmp_path / "wrapped.safetensors"
    safetensors_torch.save_file(state, wrapped)
    q = UniformQuantizer(n_bits=4)
    hint = re.escape("Checkpoint(path, prefix='model.')")
    for ckpt in (wrapped, Checkpoint(wrapped, prefix="transformer.")):
        with pytest.raises(ValueError, match=hint):
            quantize_model(meta("mlp"), q, X, checkpoint=ckpt)
    # no hint where the missing entry is under another layer's name only
    other = dict(state)
    other["model.x.4.bias"] = other.pop("model.4.bias")
    safetensors_torch.save_file(other, wrapped)
    with pytest.raises(ValueError, match=r"lacks 1 .*\['4.bias'\]") as info:
        quantize_model(
            meta("mlp"), q, X, checkpoint=Checkpoint(wrapped, prefix="model.")
        )
    assert "looks like" not in str(info.value)
    state["4.weight"] = state.pop("model.4.weight")  # one name outside the prefix
    safetensors_torch.save_file(state, wrapped)
    with pytest.raises(ValueError, match="'4.weight' is in the checkpoint without"):
        quantize_model(
            meta("mlp"), q, X, checkpoint=Checkpoint(wrapped, prefix="model.")
        )


@pytest.mark.filterwarnings("ignore:.*are the weights of layers:UserWarning")
@pytest.mark.parametrize("dropped", ["dec.weight", "emb.weight"])
def test_a_prefix_is_pointed_at_with_a_tied_name_dropped(tmp_path, dropped):
    """Published checkpoints store a tied weight under one name: the other,
    missing under the prefix, does not hide the prefix hint."""
    model = TiedEmbedding().eval()
    state = {
        f"model.{k}": v.clone() for k, v in model.state_dict().items() if k != dropped
    }
    path = tmp_path / "wrapped.safetensors"
    safetensors_torch.save_file(state, path)
    with torch.device("meta"):
        skeleton = TiedEmbedding().eval()
    X = torch.randint(0, 20, (16, 5))
    q = UniformQuantizer(n_bits=4)
    with pytest.raises(ValueError, match=re.escape("prefix='model.')")):
        quantize_model(skeleton, q, X, checkpoint=path, skip=["emb"])
    got = quantize_model(
        skeleton, q, X, checkpoint=Checkpoint(path, prefix="model."), skip=["emb"]
    )
    assert type(got.dec) is QuantLinear


def test_output_is_checked_before_the_walk(saved, tmp_path, monkeypatch):
    model, X, path = saved("mlp")

    def no_walk(*args, **kwargs):
        raise AssertionError("the walk ran")

    monkeypatch.setattr(TorchNetwork, "walk", no_walk)
    q = GreedyPathQuantizer(n_bits=3)
    for folder in (tmp_path, "", f"{tmp_path / 'new'}/"):
        with pytest.raises(ValueError, match=r"output='.*' is a folder \(or empty\)"):
            quantize_model(model, q, X, output=folder)
    (tmp_path / "afile").write_text("")
    with pytest.raises(ValueError, match=r"its folder '.*afile' is not a folder"):
        quantize_model(model, q, X, output=tmp_path / "afile" / "q.skq")
    with pytest.raises(ValueError, match=r"output='.*': its folder .* does not exist"):
        quantize_model(model, q, X, output=tmp_path / "no" / "q.skq")
    with pytest.raises(ValueError, match=r"runtime='float' sets how the returned"):
        quantize_model(model, q, X, output=tmp_path / "q.skq", runtime="float")
    with pytest.raises(ValueError, match=r"path='.*' is a folder"):
        save_model(model, tmp_path)


def test_load_into_refuses_meta_buffers_no_file_holds(saved, tmp_path):
    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 4)
            self.register_buffer("inv_freq", torch.ones(3), persistent=False)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    out = tmp_path / "q.skq"
    save_model(quantize_model(Rotary(), UniformQuantizer(n_bits=4)), out)
    with torch.device("meta"):
        skeleton = Rotary()
    with pytest.raises(ValueError, match=r"\['inv_freq'\] are on the meta device"):
        load_into(skeleton, out)
    assert is_meta(skeleton.fc.weight)  # left as it was
    skeleton.inv_freq = torch.ones(3)  # computed by the user: then it loads
    assert type(load_into(skeleton, out).fc) is QuantLinear


def test_a_module_writing_its_buffer_gives_the_in_memory_codes(tmp_path):
    """The lean walk's quantized copy does not share the float side's buffers: a
    streaming module's state, written by every forward, stays its own."""

    class Stream(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.register_buffer("prev", torch.zeros(d))

        def forward(self, x):
            out = x + self.prev
            self.prev.copy_(x[-1].detach())
            return out

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Linear(8, 16), nn.ReLU(), Stream(16), nn.Linear(16, 4)
        ).eval()

    X = torch.randn(128, 8)
    q = GreedyPathQuantizer(n_bits=3)
    ref = quantize_model(make(), q, X, batch_size=32)
    out = tmp_path / "q.skq"
    quantize_model(make(), q, X, batch_size=32, output=out)
    assert_same_codes(ref, load_into(make(), out))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_a_layers_batches_read_its_weight_once(saved, monkeypatch, kind):
    """Each weight is read from the checkpoint once however many calibration
    batches the walk runs (each batch read it again: 58 times the
    checkpoint's bytes over 64 batches), with the codes of the model in memory."""
    model, X, path = saved(kind)
    reads = []
    read = Checkpoint.read

    def spy(self, key, dtype=None):
        reads.append(key)
        return read(self, key, dtype)

    monkeypatch.setattr(Checkpoint, "read", spy)
    q = GreedyPathQuantizer(n_bits=3)
    got = quantize_model(meta(kind), q, X, batch_size=8, checkpoint=path)
    assert reads and len(reads) == len(set(reads))
    assert_same_codes(got, quantize_model(model, q, X, batch_size=8))


def test_checkpoint_problems_are_said_before_the_walk(saved, tmp_path, monkeypatch):
    """An output that is a file of the checkpoint (it would replace the float
    weights being read), and a weight of a dtype skquant does not read in
    the last layer, are refused before any weight is read or file written."""
    model, X, path = saved("mlp")
    _, _, shards = saved("mlp", sharded=True)
    before = path.read_bytes()
    for ckpt, out in (
        (path, path),
        (shards, shards / "model-00002-of-00002.safetensors"),
        (shards, shards / "model.safetensors.index.json"),
    ):
        with pytest.raises(ValueError, match=r"output=.* is a file of checkpoint="):
            quantize_model(meta("mlp"), UniformQuantizer(), checkpoint=ckpt, output=out)
    assert path.read_bytes() == before
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["4.weight"] = state["4.weight"].to(torch.float8_e4m3fn)
    f8 = tmp_path / "f8.safetensors"
    safetensors_torch.save_file(state, f8)
    reads = []
    monkeypatch.setattr(
        Checkpoint, "read", lambda self, key, dtype=None: reads.append(key)
    )
    with pytest.raises(ValueError, match=r"'4.weight' has dtype F8_E4M3"):
        quantize_model(
            meta("mlp"), UniformQuantizer(), X, checkpoint=f8, output=tmp_path / "o.skq"
        )
    assert reads == [] and not (tmp_path / "o.skq").exists()
    with pytest.raises(TypeError, match="checkpoint must be a str or path-like, got 5"):
        quantize_model(meta("mlp"), UniformQuantizer(), checkpoint=5)


@pytest.mark.parametrize("data", [False, True])
@pytest.mark.parametrize("output", [False, True])
def test_no_float_weight_is_kept_after_the_layers(
    saved, tmp_path, monkeypatch, data, output
):
    """The walk keeps the last float weight it read (a layer's batches read it
    once) only while it runs: the model's state is put together, or the file's
    rest written, without it (the memoryless path, which runs no walk, kept
    the last layer's: a language model's head)."""
    import skquant.torch._model as model_module

    model, X, path = saved("mlp")
    seen = []
    for name, at in (("_write_rest", 1), ("_materialize", 0)):
        real = getattr(model_module, name)

        def spy(*args, _real=real, _at=at):
            seen.append(args[_at]._last_read)
            return _real(*args)

        monkeypatch.setattr(model_module, name, spy)
    quantize_model(
        meta("mlp"),
        GreedyPathQuantizer(n_bits=3) if data else UniformQuantizer(n_bits=3),
        X if data else None,
        checkpoint=path,
        output=tmp_path / "o.skq" if output else None,
    )
    assert seen == [None]


def test_integer_values_for_a_float_entry_are_refused(saved, tmp_path):
    """A checkpoint holding integers under a float weight's name (another
    tool's packed codes) was cast to floats silently; refused before the walk."""
    model, X, path = saved("mlp")
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["2.weight"] = (state["2.weight"] * 100).to(torch.int32)
    ints = tmp_path / "ints.safetensors"
    safetensors_torch.save_file(state, ints)
    with pytest.raises(ValueError, match=r"'2.weight' holds torch.int32 values"):
        quantize_model(meta("mlp"), UniformQuantizer(), X, checkpoint=ints)
