"""The main job (`python -m skquant demo`) on scikit-learn's digits."""

import subprocess
import sys

import numpy as np
import pytest

from skquant.__main__ import main
from skquant._demo import run_demo


@pytest.fixture(scope="module")
def rows():
    return {r["label"]: r for r in run_demo(verbose=False)}


def test_table_has_every_setting(rows):
    for b in (8, 4, 3, 2):
        assert f"MSQ {b}-bit" in rows
    assert {"float32", "MSQ ternary", "MSQ binary"} <= set(rows)
    for b in ("4-bit", "3-bit", "2-bit", "ternary"):
        assert f"GPFQ {b}" in rows and f"null-space {b}" in rows


def test_accuracy_and_sizes_are_sensible(rows):
    float_acc = rows["float32"]["accuracy"]
    assert float_acc > 0.9
    assert rows["MSQ 8-bit"]["accuracy"] >= float_acc - 0.01
    assert (
        rows["MSQ 8-bit"]["rel_error"]
        < rows["MSQ 4-bit"]["rel_error"]
        < rows["MSQ 2-bit"]["rel_error"]
    )
    # bits per weight: codes plus float32 scales (64x64 and 64x10 layers)
    scale_bits = 32 * (64 + 10) / (64 * 64 + 64 * 10)
    for label, bits in [("MSQ 4-bit", 4), ("MSQ ternary", 2), ("MSQ binary", 1)]:
        assert rows[label]["bits_per_weight"] == pytest.approx(bits + scale_bits)
    assert rows["MSQ binary"]["compression"] > rows["MSQ 2-bit"]["compression"] > 1
    # the MSE-optimal clipping helps most where the grid is coarsest
    assert rows["MSQ 2-bit mse"]["accuracy"] > rows["MSQ 2-bit"]["accuracy"]
    # data-driven methods: lower layer error than MSQ at the same bits
    for b in ("4-bit", "3-bit", "2-bit"):
        for method in ("GPFQ", "null-space"):
            assert rows[f"{method} {b}"]["rel_error"] < rows[f"MSQ {b}"]["rel_error"]
            assert (
                rows[f"{method} {b}"]["bits_per_weight"]
                == rows[f"MSQ {b}"]["bits_per_weight"]
            )
    assert rows["null-space 2-bit"]["accuracy"] > rows["MSQ 2-bit"]["accuracy"] + 0.2
    # per-layer bit-widths (Zhou): one choice per layer, within a point of float
    (zhou,) = [r for k, r in rows.items() if k.startswith("MSQ per-layer ")]
    assert len(zhou["bits"]) == 2 and zhou["accuracy"] >= float_acc - 0.02
    assert zhou["label"].endswith(
        "/".join(
            str(b)[0] if isinstance(b, str) else str(b) for b in zhou["bits"].values()
        )
    )
    # adaptive precision: the stored model, and its coded payload alone
    ad, payload = rows["adaptive"], rows["adaptive, payload"]
    assert ad["accuracy"] == payload["accuracy"] >= float_acc - 0.02
    assert payload["bits_per_weight"] < ad["bits_per_weight"] < 32
    assert ad["compression"] == pytest.approx(32 / ad["bits_per_weight"])


def test_smart_quantization_row(rows):
    pytest.importorskip("torch")
    (sq,) = [r for k, r in rows.items() if k.startswith("SQ trained ")]
    assert set(sq["alphabets"].values()) <= {"binary", "ternary"}
    # 1 or 2 bits per weight plus one float32 scale per layer (64x64, 64x10)
    bits = {"binary": 1, "ternary": 2}
    n = {"0": 64 * 64, "2": 64 * 10}
    expect = sum(bits[a] * n[k] + 32 for k, a in sq["alphabets"].items())
    assert sq["bits_per_weight"] == pytest.approx(expect / sum(n.values()))
    assert sq["label"].endswith("/".join(a[0] for a in sq["alphabets"].values()))
    assert sq["accuracy"] > 0.9 and not np.isfinite(sq["rel_error"])


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "demo.png"
    run_demo(plot=str(path), verbose=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_prints_table():
    res = subprocess.run(
        [sys.executable, "-m", "skquant", "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    assert "MSQ 4-bit" in res.stdout and "accuracy" in res.stdout


def test_cli_mnist_missing_says_how_to_fetch(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SKQUANT_DATA", str(tmp_path))
    assert main(["demo", "--dataset", "mnist"]) == 2
    assert "get_data.sh" in capsys.readouterr().err


def test_cli_rejects_bad_hidden(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--hidden", "a,b"])
    assert "--hidden must be comma-separated ints" in capsys.readouterr().err


def test_compile_notice_once_per_install(tmp_path, monkeypatch, capsys):
    import skquant._demo
    import skquant._kernels
    from skquant.__main__ import main

    assert not skquant._kernels.cache_is_warm(tmp_path)
    for marker in skquant._kernels._MARKERS:
        (tmp_path / f"{marker}10.py311.nbi").touch()
    assert skquant._kernels.cache_is_warm(tmp_path)
    monkeypatch.setattr(skquant._demo, "run_demo", lambda **kw: None)
    for warm in (False, True):
        monkeypatch.setattr(skquant._kernels, "cache_is_warm", lambda warm=warm: warm)
        assert main(["demo"]) == 0
        err = capsys.readouterr().err
        assert ("Compiling skquant's numba kernels" in err) is (not warm)


def test_file_sizes_are_the_counted_sizes_plus_a_header(rows):
    for label, r in rows.items():
        if label == "adaptive, payload":
            assert r.get("file_bytes") is None  # a part of the adaptive file
            continue
        counted = (
            r["model_bits"] / 8 if "model_bits" in r else (64 * 64 + 64 * 10 + 74) * 4
        )
        # the header describes every tensor (4 fixed-point ones: about 2 kB)
        header = 3072 if label == "adaptive" else 2048
        assert counted <= r["file_bytes"] < counted + header, label


@pytest.mark.parametrize(
    "args, message",
    [
        (["--hidden", "0"], "--hidden must be comma-separated ints >= 1, got '0'"),
        (["--hidden", "64,-3"], "--hidden must be comma-separated ints >= 1"),
        (["--seed", "-1"], "--seed must be an int >= 0, got '-1'"),
        (["--seed", "x"], "--seed must be an int >= 0, got 'x'"),
        (
            ["--plot", "/nonexistent/dir/x.png"],
            "--plot's folder '/nonexistent/dir' does",
        ),
    ],
)
def test_cli_checks_arguments_before_the_demo_runs(args, message, monkeypatch, capsys):
    import skquant._demo

    ran = []
    monkeypatch.setattr(skquant._demo, "run_demo", lambda **kw: ran.append(kw))
    with pytest.raises(SystemExit):
        main(["demo", *args])
    assert message in capsys.readouterr().err
    assert not ran


def test_cli_passes_checked_arguments(tmp_path, monkeypatch):
    import skquant._demo

    ran = []
    monkeypatch.setattr(skquant._demo, "run_demo", lambda **kw: ran.append(kw))
    plot = str(tmp_path / "x.png")
    assert main(["demo", "--hidden", "8,4", "--seed", "3", "--plot", plot]) == 0
    assert main(["demo", "--hidden", ""]) == 0
    assert ran[0] == dict(dataset="digits", hidden=(8, 4), plot=plot, random_state=3)
    assert ran[1]["hidden"] is None
