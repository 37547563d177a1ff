"""Benchmarks of machining_t2v: decoding, data preparation, training, generation, Kedro overhead.

Run them with ``make bench`` or ``python -m benchmarks.run`` (``--quick`` for a smoke run,
``--only decode,train`` for some areas). Every figure is the median of several runs and every
comparison is a ratio of figures measured in the same run, interleaved, so that load from other
processes hits both sides alike. Speed targets are checked here, never in the test suite.
"""
