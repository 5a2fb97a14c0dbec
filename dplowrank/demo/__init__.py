"""Demo helpers, outside the library proper: the MiniLM model and offline text and data.

Used by the command line (``python -m dplowrank compress``), the examples and the
benchmarks. Nothing in the library imports this package.
"""
