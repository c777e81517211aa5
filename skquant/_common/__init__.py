"""Shared settings and plumbing: the global configuration, progress bars, joblib
tasks, argument checks and blocks of rows."""
