"""Slow float64 NumPy reference of SPEC.md: the judge of every backend (no torch here)."""
