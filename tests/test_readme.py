"""The README's Python examples run as written, each block on its own."""

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def _use_blocks():
    """The ```python blocks of the README's "## Use" section, in order."""
    text = README.read_text()
    section = text.split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_use_section_has_blocks():
    blocks = _use_blocks()
    assert len(blocks) >= 4
    # each block is runnable alone: the names it uses come from its own lines
    assert all("import" in code for code in blocks)


def test_readme_examples_run_each_in_a_fresh_namespace(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files
    namespaces = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, code in enumerate(_use_blocks()):
            if "import torch" in code and importlib.util.find_spec("torch") is None:
                namespaces.append(None)
                continue
            namespace = {}  # a fresh namespace: no name leaks from block to block
            exec(compile(code, f"{README}:block {i + 1}", "exec"), namespace)
            namespaces.append(namespace)
    out = capsys.readouterr().out
    assert "QuantizedTensor(shape=(784, 256)" in out
    mlp_ns = namespaces[1]
    qmlp, Xd, yd = mlp_ns["qmlp"], mlp_ns["Xd"], mlp_ns["yd"]
    assert qmlp.score(Xd / 16, yd) > 0.9
    # float64 digits, 4-bit codes and one float32 scale per output channel
    n_in = [W.shape[0] for W in mlp_ns["mlp"].coefs_]
    assert [r["bits"] for r in qmlp.report_.rows] == [4 + 32 / n for n in n_in]
    if namespaces[-1] is None:
        pytest.skip("torch is not installed")
    sq = namespaces[-1]
    # Smart Quantization: every layer on its alphabet, under two bits per weight
    assert set(sq["res"].alphabets.values()) <= {"binary", "ternary"}
    assert sq["res"].bits_per_weight < 2.1
    assert sq["clf"].score(sq["Xd"] / 16, sq["yd"]) > 0.9
