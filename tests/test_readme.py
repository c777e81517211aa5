"""The README's Python examples run as written (in order, sharing names)."""

import importlib.util
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"


def test_readme_examples_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write files
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for code in blocks:
            if "import torch" in code and importlib.util.find_spec("torch") is None:
                pytest.skip("torch is not installed")
            exec(compile(code, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "QuantizedTensor(shape=(784, 256)" in out
    assert namespace["qmlp"].score(namespace["Xd"] / 16, namespace["yd"]) > 0.9
    # Smart Quantization: every layer on its alphabet, under two bits per weight
    assert set(namespace["res"].alphabets.values()) <= {"binary", "ternary"}
    assert namespace["res"].bits_per_weight < 2.1
    assert namespace["clf"].score(namespace["Xd"] / 16, namespace["yd"]) > 0.9
