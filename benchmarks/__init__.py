"""Measurements: each module a script, `python -m benchmarks.<name> --help` (see benchmarks/README.md)."""
