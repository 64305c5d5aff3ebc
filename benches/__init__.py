"""Benchmarks of fastbdm (pytest-benchmark): see benches/conftest.py and docs/PERFORMANCE.md."""
