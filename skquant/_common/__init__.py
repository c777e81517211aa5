"""Shared settings and plumbing: the global configuration and progress bars."""
