"""Benchmarks: they measure, they are not tests (see docs/benchmarks.md)."""
