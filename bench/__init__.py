"""Benchmark scripts and their shared harness (never run by the test suite).

A package so that ``bench._harness`` can be imported from the repository root, by the scripts
(which put the root on ``sys.path``) and by ``tests/``. The random-weight models the scripts
time are the tests' builders (``tests/tiny_models.py``).
"""
