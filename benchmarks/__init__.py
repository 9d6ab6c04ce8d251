"""Benchmarks and checks: run each as ``python -m benchmarks.<name>``."""
