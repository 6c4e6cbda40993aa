"""Benchmark harness for ortembed (GitHub issue 5): `python -m bench` writes bench/RESULTS.md.

Not part of the test run and not shipped with the service: it measures, it never asserts.
"""
