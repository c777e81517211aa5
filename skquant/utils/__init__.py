"""Utilities for users and tests of skquant."""
