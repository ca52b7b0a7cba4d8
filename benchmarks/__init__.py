"""Benchmarks of torchlpc against its peers.

Run ``python -m benchmarks.run``, then ``python -m benchmarks.report``.
"""
