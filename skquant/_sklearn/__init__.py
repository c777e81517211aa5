"""Front ends over whole scikit-learn models: the quantized MLP, the adaptive loop
and the sensitivity of an MLP, and the per-layer bit allocator."""
