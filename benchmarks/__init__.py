"""Benchmarks and the demo job."""
