"""Backends: where a reranker family's model runs (local transformers, HTTP servers)."""
