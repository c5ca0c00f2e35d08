"""The hosted rerank APIs as data: where each lives, what its request and answer look like,
how many documents one request may carry, which variable holds its key and what its error
codes mean. `rerank-api:MODEL?provider=NAME` (or a preset such as `cohere-rerank-v3.5`) reads
one entry; the request loop, cache and call log are rerank_api.RerankAPI's.

Sources (the providers' public API references, read 2026-12-01):
- Cohere v2: docs.cohere.com/reference/rerank, /docs/reranking-best-practices (1 to 10,000
  documents per request, query up to 2,048 tokens), /reference/errors; key CO_API_KEY
  (the official SDK's variable). 499 (request cancelled) is to be tried again, as the errors
  reference says, so it is retried like a 5xx; other providers document no 499.
- Jina: api.jina.ai/v1/rerank as documented on jina.ai/reranker (request and answer shapes;
  the same shape LocalAI and New API implement); key JINA_API_KEY. No per-request document
  limit was found in the pages read: 100 per request here is this toolkit's choice.
- Voyage: docs.voyageai.com/reference/reranker-api (at most 1,000 documents; total tokens
  = query tokens x documents + document tokens, bounded per model), /docs/error-codes;
  key VOYAGE_API_KEY.
- Mixedbread: mixedbread.com/api-reference/endpoints/reranking (POST /v1/reranking with
  `input`, answer `data[].score`), /api-reference/error-handling; key MXBAI_API_KEY. No
  per-request limit found in the pages read: 100 per request here is this toolkit's choice.

Every request asks for all of its documents back (top_n / top_k = the batch size) and no
document texts (return_documents / return_input false where the API has the field).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Provider:
    name: str
    base_url: str  # the versioned root; `path` is appended
    path: str
    key_env: str
    documents_field: str
    top_field: str
    max_documents: int  # per request, from the reference (or this toolkit's choice, see above)
    fixed: dict = field(default_factory=dict)  # constant request fields
    errors: dict = field(default_factory=dict)  # HTTP status -> what the reference says it means
    retry: frozenset = frozenset()  # statuses beyond the client's usual ones that the reference says to retry
    reference: str = ""

    def payload(self, model: str, query: str, docs: list[str]) -> dict:
        return {"model": model, "query": query, self.documents_field: list(docs), self.top_field: len(docs),
                **self.fixed}

    def explain(self, status: int) -> str:
        hint = self.errors.get(status)
        if status in (401, 403) and not hint:
            hint = "the key was refused"
        if status in (401, 403, 498):
            hint = f"{hint}: check {self.key_env}"
        return hint or ""


PROVIDERS: dict[str, Provider] = {
    "cohere": Provider(
        "cohere", "https://api.cohere.com/v2", "/rerank", "CO_API_KEY", "documents", "top_n", 10_000,
        errors={400: "invalid request (e.g. empty document list or query)", 401: "unauthorized",
                402: "payment required", 404: "model not found", 429: "rate limit",
                498: "invalid token", 499: "request cancelled", 500: "server error"},
        retry=frozenset({499}),
        reference="https://docs.cohere.com/reference/rerank"),
    "jina": Provider(
        "jina", "https://api.jina.ai/v1", "/rerank", "JINA_API_KEY", "documents", "top_n", 100,
        fixed={"return_documents": False},
        errors={400: "invalid request", 401: "unauthorized", 402: "balance exhausted", 422: "invalid parameters",
                429: "rate limit"},
        reference="https://jina.ai/reranker/"),
    "voyage": Provider(
        "voyage", "https://api.voyageai.com/v1", "/rerank", "VOYAGE_API_KEY", "documents", "top_k", 1_000,
        fixed={"return_documents": False, "truncation": True},
        errors={400: "invalid request (batch too large, too many tokens, bad parameter)", 401: "unauthorized",
                403: "forbidden (IP address)", 429: "rate limit", 500: "server error", 502: "service unavailable",
                503: "service unavailable", 504: "service unavailable"},
        reference="https://docs.voyageai.com/reference/reranker-api"),
    "mixedbread": Provider(
        "mixedbread", "https://api.mixedbread.com/v1", "/reranking", "MXBAI_API_KEY", "input", "top_k", 100,
        fixed={"return_input": False},
        errors={400: "bad request", 401: "invalid, expired or missing API key", 402: "insufficient balance",
                403: "insufficient permissions", 422: "request cannot be processed", 429: "rate limit",
                500: "server error", 503: "service unavailable"},
        reference="https://www.mixedbread.com/api-reference/endpoints/reranking"),
}
