"""Benchmarks of kerasrv, run on demand with `python -m bench.run` (`make bench`), never as a timed test."""
