"""Benchmark commands: each prints one JSON document (ratios measured in the same run)."""
