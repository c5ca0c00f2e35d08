"""Second-stage rerankers, one module per family. Each implements
rankify_cli.types.Reranker and imports only the core types plus its own backend, lazily."""
