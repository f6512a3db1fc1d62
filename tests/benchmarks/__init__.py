"""Benchmarks that write JSON (learning, round overhead, secure aggregation, DP, robustness)."""
