"""The FastAPI application: ``POST /retrieve`` and ``GET /health`` over one backend and corpus.

No ``from __future__ import annotations`` here: FastAPI must see the request model built from
the limits as a real annotation.
"""

import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .corpus import Corpus
from .index import Backend
from .protocol import Limits, request_model


def search_documents(backend: Backend, corpus: Corpus, queries: list[str], k: int,
                     return_scores: bool) -> list[list[Any]]:
    """Run one batch through the backend and attach the documents; blank queries get no hits."""
    live = [i for i, q in enumerate(queries) if q.strip()]
    results: list[list[Any]] = [[] for _ in queries]
    if live:
        for i, hits in zip(live, backend.search([queries[i] for i in live], k)):
            docs = [corpus[h.row] for h in hits]
            results[i] = ([{"document": d, "score": h.score} for d, h in zip(docs, hits)]
                          if return_scores else docs)
    return results


def create_app(backend: Backend, corpus: Corpus, limits: Limits) -> FastAPI:
    RetrieveRequest = request_model(limits)
    started = time.time()
    app = FastAPI(title="verl-trace retrieval server", max_body_size=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes every offending input back; a 1000-query request would come back whole.
        detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest) -> dict:  # type: ignore[valid-type]
        k = request.topk or limits.default_topk
        # Scoring is CPU work: keep it off the event loop so /health and new requests stay responsive.
        result = await run_in_threadpool(search_documents, backend, corpus, request.queries, k,
                                         request.return_scores)
        return {"result": result}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "backend": backend.name, "num_docs": len(corpus),
                "corpus": str(corpus.path), "uptime_s": round(time.time() - started, 1),
                "limits": limits.model_dump()}

    return app
