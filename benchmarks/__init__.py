"""The benchmark suite: dicomtwist's archive side by side with its peers.

``python benchmarks/run.py --help``; see docs/benchmarks.md.
"""
