"""Former home of the LLM backends; the names stay importable from here.

The backends live in rerankers/backends/ (hf, vllm, openai, http); the LLM families'
templates, plan driver and call cache in rerankers/llm.py.
"""

from __future__ import annotations

from .backends import BACKENDS, make_backend  # noqa: F401
from .backends.base import Backend as ChatBackend, ChatRequest, ChatResponse  # noqa: F401
from .backends.http import BackendError, HTTPClient, chat_completion_shape, split_urls  # noqa: F401
from .llm import (CACHE_NAMESPACE, COMMON_DOC, MAX_PARSED_CHARS, PER_QUERY_KEYS, PLACEHOLDERS, TEMPLATE_DIR,  # noqa: F401
                  CallLog, Caller, LLMRerankerBase, Plan, check_placeholders, drive, load_template)
