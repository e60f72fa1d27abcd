"""Benchmark harness shared by ``benchmarks/*.py`` and ``hjseq bench``."""
