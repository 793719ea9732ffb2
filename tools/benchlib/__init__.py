"""The benchmark behind docs/benchmarks.md (run it with ``python tools/bench.py``)."""
