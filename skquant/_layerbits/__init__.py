"""Layer bit-widths (Zhou et al.): sensitivity, exact allocation, the estimator."""
