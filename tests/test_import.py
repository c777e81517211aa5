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


#: the public names before the package moved into its rooms (commit 1facab1): each
#: still imports from the same place
PUBLIC_BEFORE_ROOMS = {
    "skquant": "ActivationQuantizer AdaptivePrecisionQuantizer BinaryQuantizer "
    "GPTQQuantizer GreedyPathQuantizer LayerBitAllocator NoFreedomWarning "
    "NullSpaceQuantizer QuantizedMLP QuantizedTensor SensitivityResult "
    "TernaryQuantizer UniformQuantizer __version__ adaptive_quantize_mlp "
    "allocate_bits closed_form_bits config_context get_config load "
    "measure_sensitivity pack_codes quantize save set_config unpack_codes",
    "skquant.torch": "FakeQuantize QuantConv1d QuantConv2d QuantLinear SQClassifier "
    "SQRegularizer SQResult TorchNetwork adaptive_quantize_model capture_inputs "
    "fake_quantize_ste load_into loss_gradients matrix_to_weight "
    "measure_sensitivity quantize_model save_model train_baseline train_sq "
    "weight_to_matrix",
    "skquant.metrics": "compression_ratio model_size_bits relative_error sqnr",
    "skquant.theory": "error_decay gpfq_bound lp_scale_bound max_subset_norm_bound "
    "msq_bound nullspace_bound plot_error_decay posterior_nullspace_bound "
    "predicted_rate",
    "skquant.datasets": "get_data_home load_idx load_mnist make_gaussian_layer "
    "mnist_available write_idx",
    "skquant.utils.discovery": "all_estimators",
}


def test_public_names_import_from_where_they_did():
    import importlib

    missing = []
    for module, names in PUBLIC_BEFORE_ROOMS.items():
        if module == "skquant.torch":
            try:
                importlib.import_module("torch")
            except ImportError:
                continue
        mod = importlib.import_module(module)
        missing += [f"{module}.{n}" for n in names.split() if not hasattr(mod, n)]
        missing += [
            f"{module}.{n} (not in __all__)"
            for n in names.split()
            if n not in mod.__all__
        ]
    assert missing == []


def test_estimator_discovery_does_not_import_torch():
    res = _run(
        "import sys\n"
        "from skquant.utils.discovery import all_estimators\n"
        "assert len(all_estimators()) >= 10\n"
        "assert 'torch' not in sys.modules, 'torch loaded'"
    )
    assert res.returncode == 0, res.stderr
