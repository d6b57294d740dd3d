"""Benchmarks (not tests): ``make bench`` runs ``python -m benchmarks.run``; see docs/performance.md."""
