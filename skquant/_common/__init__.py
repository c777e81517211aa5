"""Shared settings and plumbing: the global configuration, progress bars, joblib
tasks and argument checks."""
