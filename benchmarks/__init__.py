"""Benchmarks for flockws' broadcaster (run with ``python -m benchmarks.run``)."""
