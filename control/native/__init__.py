"""Compiled extensions of the hot path (built from native/ by setup.py)."""
