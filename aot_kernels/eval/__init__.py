"""Judging reductions without an LLM (SPEC §7, §9): encoders (the descriptor tower), built-in
videos, metrics and proxies, `compare`, the FLOPs model, benchmark workloads and the CPU bench.

Above the reducers, below the integrations. Importing this package imports none of its modules.
"""
