"""8-bit inputs times 8-bit weights on the int8 kernels where this CPU sums them
exactly (VNNI), simulated where pairs of products saturate in int16."""

import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from skquant import ActivationQuantizer, UniformQuantizer

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from skquant.torch import RuntimeFallbackWarning, _int8, quantize_model  # noqa: E402

pytestmark = pytest.mark.skipif(
    not _int8.int8_gemm_available(), reason="this torch has no int8 GEMM"
)

#: fbgemm's and oneDNN's instruction sets capped below VNNI (x86 CPUs before
#: it): their pair sums saturate where this CPU's may not
NO_VNNI = {"FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

#: what the kernels themselves give for the largest pairs, beside the probe
KERNELS_SAY = textwrap.dedent(
    """
    import warnings
    import torch
    from torch.nn import functional as F
    from skquant.torch import _int8
    warnings.simplefilter("ignore")
    w = torch.full((1, 4), 127, dtype=torch.int8)
    q = torch._make_per_channel_quantized_tensor(
        w, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.int64), 0)
    p = torch.ops.quantized.linear_prepack(q, None)
    x = torch.full((1, 4), 255.0)
    gemm = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(
        x, 1.0, 0, p)
    exact = float(gemm) == 4 * 255 * 127
    if _int8.onednn_conv_available():
        scale = torch.ones(1, dtype=torch.float64)
        packed = torch.ops.onednn.qconv_prepack(
            w.reshape(1, 4, 1, 1), scale, 1.0, 0, [1, 1], [0, 0], [1, 1], 1, None)
        conv = torch.ops.onednn.qconv2d_pointwise(
            torch.full((1, 4, 1, 1), 255, dtype=torch.uint8), 1.0, 0, packed,
            scale, torch.zeros(1, dtype=torch.int64), None, [1, 1], [0, 0],
            [1, 1], 1, 1.0, 0, torch.float32, "none", [], "")
        exact = exact and float(conv) == 4 * 255 * 127
    print(exact, _int8.exact_pair_sums())
    """
)


def _python(script, env=None):
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.split()


@pytest.mark.parametrize("env", [None, NO_VNNI], ids=["this CPU", "no VNNI"])
def test_the_probe_says_what_the_kernels_do(env):
    """``exact_pair_sums`` is what the kernels give for four products of 255
    times 127 (an int16 pair sum saturates at 32767): on this CPU, and with the
    kernels' instruction sets capped below VNNI."""
    kernels, probe = _python(KERNELS_SAY, env)
    assert probe == kernels
    if env is None:
        assert (probe == "True") == _int8.exact_pair_sums()


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, groups=4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 10),
    ).eval()


def w8a8(net, x, runtime="auto"):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        q = quantize_model(
            net,
            UniformQuantizer(n_bits=8),
            x,
            activations=ActivationQuantizer(n_bits=8),
            runtime=runtime,
        )
    said = [str(w.message) for w in seen if w.category is RuntimeFallbackWarning]
    return q, said


@pytest.mark.parametrize("exact", [True, False], ids=["exact", "saturating"])
def test_w8a8_runs_the_int8_kernels_where_the_sums_are_exact(exact, monkeypatch):
    """Static 8-bit inputs with 8-bit weights (codes up to 127) run the int8
    convolution and GEMM where this CPU sums their pairs exactly, and compute
    what the simulated path does; where it does not, they run simulated and
    say why."""
    if not exact:
        monkeypatch.setattr(_int8, "exact_pair_sums", lambda: False)
    x = torch.randn(64, 3, 12, 12)
    q, said = w8a8(cnn(), x)
    sim, _ = w8a8(cnn(), x, runtime="float")
    layers = [q[0], q[3], q[6]]
    assert all(m._largest_code > 64 for m in layers)
    runs = _int8.exact_pair_sums()
    assert [m._int8 is not None for m in layers] == [runs] * 3
    assert all(repr(m).endswith("simulated)") != runs for m in layers)
    assert any("saturate" in m for m in said) != runs
    with torch.no_grad():  # (layer by layer, on the same inputs: a float32
        for mine, theirs in zip(q, sim):  # rounding moves a later code by one)
            y, ref = mine(x), theirs(x)
            assert float((y - ref).abs().max() / ref.abs().max()) < 1e-5
            x = ref


def test_a_model_packed_where_sums_are_exact_runs_simulated_where_they_saturate(
    tmp_path,
):
    """A pickled W8A8 model (``torch.save``) loaded where the kernels' pair sums
    saturate (a CPU without VNNI) runs simulated there, with the outputs of the
    model it was, not saturated ones; a copy made there too."""
    x = torch.randn(16, 3, 12, 12)
    q, _ = w8a8(cnn(), x)
    with torch.no_grad():
        ref = q(x)
    buf = io.BytesIO()
    torch.save({"model": q, "x": x, "ref": ref}, buf)
    (tmp_path / "w8a8.pt").write_bytes(buf.getvalue())
    script = KERNELS_SAY + textwrap.dedent(
        f"""
        import copy
        saved = torch.load({str(tmp_path / "w8a8.pt")!r}, weights_only=False)
        for q in (saved["model"], copy.deepcopy(saved["model"])):
            with torch.no_grad():
                y = q(saved["x"])
            err = float((y - saved["ref"]).abs().max() / saved["ref"].abs().max())
            print(q[0]._int8 is not None, q[6]._int8 is not None, err < 1e-2)
        """
    )
    kernels, probe, *runs = _python(script, NO_VNNI)
    assert probe == kernels
    assert runs == [probe, probe, "True"] * 2


def test_w8a8_chains_where_the_sums_are_exact():
    """A W8A8 network whose kernels run chains them (the codes a conv gives on
    the next grid), with the unchained model's predictions."""
    if not (_int8.exact_pair_sums() and _int8.onednn_conv_available()):
        pytest.skip("this CPU's pair sums saturate: W8A8 runs simulated")
    from skquant.torch import chain_int8

    net = nn.Sequential(*cnn()[:3], nn.Conv2d(16, 16, 3), nn.ReLU(), *cnn()[5:]).eval()
    x = torch.randn(256, 3, 12, 12)
    q, _ = w8a8(net, x)
    with torch.no_grad():
        before = q(x)
        assert chain_int8(q) == [("0", "3"), ("3", "6")]
        after = q(x)
    assert (after.argmax(1) != before.argmax(1)).sum() <= 2
    assert float((after - before).abs().max() / before.abs().max()) < 0.05
