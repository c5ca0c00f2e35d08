"""First-stage retrievers. Each implements rankify_cli.types.Retriever and imports only the
core types plus its own backend (lazily, inside the class)."""
