"""Import rules: `import skquant` never imports torch, nor compiles kernels."""

import subprocess
import sys


def _run(code):
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )


def test_import_does_not_import_torch():
    res = _run("import sys, skquant; assert 'torch' not in sys.modules, 'torch loaded'")
    assert res.returncode == 0, res.stderr


def test_public_names_resolve():
    import skquant

    for name in skquant.__all__:
        assert hasattr(skquant, name), name
