"""The relay benchmark of issue #6: `python -m bench` (see docs/benchmark.md)."""
