"""rankify-cli: reproducible reranking benchmarks from the shell.

Kept import-light on purpose: `rankify --help` must not pull numpy, torch or transformers.
"""

__version__ = "0.1.0"
