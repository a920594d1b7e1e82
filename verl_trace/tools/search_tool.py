"""``search(query_list)``: a verl ``BaseTool`` that asks a Search-R1 compatible retrieval server.

verl 0.9.1 removed its ``SearchTool``; this one is loaded the same way, from a tool config YAML::

    tools:
      - class_name: verl_trace.tools.search_tool.SearchTool
        config:
          type: native
          retrieval_service_url: http://127.0.0.1:8000/retrieve
          topk: 3              # passages per query
          timeout: 30          # seconds per HTTP attempt
          max_retries: 2       # further attempts after a failed one (connection error, timeout, 5xx, 429)
          backoff: 0.5         # seconds before the first retry, doubled each time (with jitter)
          max_concurrency: 64  # requests in flight to this server from one rollout process
        # tool_schema may be omitted: the default is Search-R1's search(query_list: array[string])

Observations are Search-R1's text (``Doc 1(Title: ...) text``), each passage cut to
``max_doc_chars`` at a word boundary. A server that is down, slow or broken never raises into
the agent loop: the agent gets an error observation (and may search again or answer), the
returned metrics count the failure (``search_errors``, ``search_timeouts``), and the same
counters accumulate per trajectory in ``agent_data.extra_fields`` (verl's ``ToolAgentLoop``
drops the metrics dict, ``extra_fields`` reaches the batch).

All ``SearchTool`` instances of a process share one HTTP connection pool and one concurrency
limit per server URL (per event loop: verl runs one loop per agent-loop worker process). The
client is aiohttp, not httpx: at 64 concurrent requests httpx's pool collapsed to a tenth of
aiohttp's throughput here (encode/httpx#3215; numbers in docs/benchmarks.md).
"""

from __future__ import annotations

from . import search_extra  # noqa: F401  (first: checks the optional packages below)

# isort: split
import asyncio
import json
import random
import time
import weakref
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse
from verl.utils.rollout_trace import rollout_trace_op

DEFAULT_SCHEMA = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches a text corpus for each query and returns the most relevant passages.",
        "parameters": {
            "type": "object",
            "properties": {
                "query_list": {"type": "array", "items": {"type": "string"},
                               "description": "One or more search queries."},
            },
            "required": ["query_list"],
        },
    },
}

_COUNTERS = ("search_calls", "search_errors", "search_timeouts")


class SearchToolConfig(BaseModel):
    """The ``config:`` block of the tool YAML; unknown keys are refused so typos do not pass silently."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["native"] = "native"
    retrieval_service_url: str
    topk: int = Field(3, ge=1, le=100)
    timeout: float = Field(30.0, gt=0)
    max_retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(0.5, ge=0)
    max_concurrency: int = Field(64, ge=1)
    max_queries: int = Field(5, ge=1, description="queries searched per call; the rest are dropped with a note")
    max_query_chars: int = Field(512, ge=1)
    max_doc_chars: int = Field(1000, ge=40, description="each passage is cut to this many characters")

    @field_validator("retrieval_service_url")
    @classmethod
    def _endpoint(cls, url: str) -> str:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"must be an http(s) URL, got {url!r}")
        return urlunsplit(parsed._replace(path="/retrieve")) if parsed.path in ("", "/") else url


class _SearchFailed(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


# (event loop) -> {(url, max_concurrency): (session, semaphore)}; entries die with their loop.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict] = weakref.WeakKeyDictionary()


def _pool(cfg: SearchToolConfig) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
    per_loop = _POOLS.setdefault(asyncio.get_running_loop(), {})
    key = (cfg.retrieval_service_url, cfg.max_concurrency)
    if key not in per_loop or per_loop[key][0].closed:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=cfg.max_concurrency))
        per_loop[key] = (session, asyncio.Semaphore(cfg.max_concurrency))
    return per_loop[key]


async def close_shared_sessions() -> None:
    """Close this event loop's HTTP sessions (verl's workers never need to; tests and scripts that
    run many short event loops call it before each loop ends)."""
    for session, _ in _POOLS.pop(asyncio.get_running_loop(), {}).values():
        await session.close()


def format_passages(results: list[dict], max_doc_chars: int) -> str:
    """Search-R1's observation text: ``Doc i(Title: t) text`` per passage."""
    lines = []
    for i, item in enumerate(results, start=1):
        doc = item["document"] if "document" in item else item
        title, _, text = str(doc.get("contents", "")).partition("\n")
        lines.append(f"Doc {i}(Title: {title.strip()}) {_cut(text.strip(), max_doc_chars)}")
    return "\n".join(lines) if lines else "No results."


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    head = text[:limit].rsplit(" ", 1)[0] or text[:limit]
    return head + " ..."


def _parse_queries(parameters: dict[str, Any], cfg: SearchToolConfig) -> tuple[list[str], str]:
    """Validated queries and a note for the agent about what was dropped (or raise ValueError)."""
    raw = parameters.get("query_list") if isinstance(parameters, dict) else None
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(q, str) for q in raw):
        raise ValueError("'query_list' must be a list of strings, e.g. {\"query_list\": [\"who founded X\"]}")
    queries = [q.strip()[: cfg.max_query_chars] for q in raw if q.strip()]
    if not queries:
        raise ValueError("'query_list' has no non-empty query")
    note = ""
    if len(queries) > cfg.max_queries:
        note = f"(Only the first {cfg.max_queries} of {len(queries)} queries were searched.)\n"
        queries = queries[: cfg.max_queries]
    return queries, note


class SearchTool(BaseTool):
    """Stateless: every call is one POST /retrieve; ``create``/``release`` keep nothing."""

    def __init__(self, config: dict, tool_schema: OpenAIFunctionToolSchema | None = None):
        try:
            self.settings = SearchToolConfig.model_validate(config)
        except ValidationError as exc:
            fields = "; ".join(f"config.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"SearchTool: invalid tool config ({fields})") from None
        super().__init__(config, tool_schema)

    def get_openai_tool_schema(self) -> OpenAIFunctionToolSchema:
        return OpenAIFunctionToolSchema.model_validate(DEFAULT_SCHEMA)

    @rollout_trace_op
    async def execute(self, instance_id: str, parameters: dict[str, Any], **kwargs) -> tuple[ToolResponse, float, dict]:
        cfg = self.settings
        start = time.perf_counter()
        metrics: dict[str, float] = {"search_calls": 1, "search_errors": 0, "search_timeouts": 0,
                                     "search_attempts": 0, "search_queries": 0, "search_hits": 0}
        try:
            queries, note = _parse_queries(parameters, cfg)
        except ValueError as exc:
            metrics["search_errors"] = 1
            text = f"Search error: {exc}."
        else:
            metrics["search_queries"] = len(queries)
            try:
                results = await self._retrieve(queries, metrics)
            except _SearchFailed as exc:
                metrics["search_errors"] = 1
                metrics["search_timeouts"] = float(exc.kind == "timeout")
                text = (f"Search error: the retrieval service failed ({exc}). "
                        "You may search again or answer with what you know.")
            else:
                metrics["search_hits"] = sum(len(r) for r in results)
                blocks = [format_passages(r, cfg.max_doc_chars) for r in results]
                if len(queries) > 1:
                    blocks = [f"Results for \"{q}\":\n{b}" for q, b in zip(queries, blocks)]
                text = note + "\n\n".join(blocks)
        metrics["search_latency_s"] = time.perf_counter() - start
        self._count(kwargs.get("agent_data"), metrics)
        return ToolResponse(text=text), 0.0, metrics

    async def _retrieve(self, queries: list[str], metrics: dict[str, float]) -> list[list[dict]]:
        cfg = self.settings
        session, gate = _pool(cfg)
        payload = {"queries": queries, "topk": cfg.topk, "return_scores": True}
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        failure = _SearchFailed("error", "no attempt made")
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                await asyncio.sleep(cfg.backoff * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            metrics["search_attempts"] += 1
            try:
                async with gate, session.post(cfg.retrieval_service_url, json=payload, timeout=timeout) as resp:
                    status, body = resp.status, await resp.read()
            except TimeoutError:
                failure = _SearchFailed("timeout", f"no answer within {cfg.timeout:g}s")
                continue
            except aiohttp.ClientError as exc:
                failure = _SearchFailed("connection", f"{type(exc).__name__}: {exc}".rstrip(": "))
                continue
            if status >= 500 or status == 429:
                failure = _SearchFailed("http", f"HTTP {status}")
                continue
            if status >= 400:  # our request is wrong; retrying will not help
                raise _SearchFailed("http", f"HTTP {status}: {body[:300].decode(errors='replace')}")
            return self._results(body, len(queries))
        raise _SearchFailed(failure.kind, f"{failure} after {cfg.max_retries + 1} attempt(s)")

    @staticmethod
    def _results(body: bytes, n_queries: int) -> list[list[dict]]:
        try:
            results = json.loads(body)["result"]
        except (ValueError, KeyError, TypeError):
            raise _SearchFailed("protocol", "response is not {\"result\": [...]}") from None
        if (not isinstance(results, list) or len(results) != n_queries
                or not all(isinstance(r, list) and all(isinstance(d, dict) and isinstance(d.get("document", d), dict)
                                                       for d in r) for r in results)):
            raise _SearchFailed("protocol", f"expected {n_queries} lists of documents")
        return results

    @staticmethod
    def _count(agent_data: Any, metrics: dict[str, float]) -> None:
        """Per-trajectory counters in ``agent_data.extra_fields`` (copied along when a tree branches)."""
        extra = getattr(agent_data, "extra_fields", None)
        if isinstance(extra, dict):
            for key in _COUNTERS:
                extra[key] = extra.get(key, 0) + int(metrics[key])
