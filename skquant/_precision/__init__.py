"""Adaptive precision (Khoram & Li): per-parameter bits from the loss gradient."""
