"""The wire protocol of ``POST /retrieve`` (Search-R1's, which verl's old search tool also spoke).

Request: ``{"queries": [str, ...], "topk": int | null, "return_scores": bool}``.
Response: ``{"result": [per-query list, ...]}`` where each entry is
``{"document": {"id": ..., "contents": ...}, "score": float}`` when ``return_scores`` is true,
and the bare document otherwise (exactly what Search-R1's server does).

The request model is built from the server's ``Limits``, so an oversized request is refused by
pydantic with a 422 naming the field (``queries``, ``queries.3``, ``topk``), never by a crash.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints, create_model


class Limits(BaseModel):
    """Per-request limits of the server (all configurable on the command line)."""

    default_topk: int = Field(3, ge=1)
    max_topk: int = Field(100, ge=1)
    max_queries: int = Field(1024, ge=1)
    max_query_chars: int = Field(4096, ge=1)
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)


def request_model(limits: Limits) -> type[BaseModel]:
    """A ``RetrieveRequest`` pydantic model enforcing ``limits``."""
    query = Annotated[str, StringConstraints(max_length=limits.max_query_chars)]
    return create_model(
        "RetrieveRequest",
        queries=(list[query], Field(min_length=1, max_length=limits.max_queries,
                                    description="search queries, answered in one batch")),
        topk=(int | None, Field(None, ge=1, le=limits.max_topk,
                                description=f"passages per query (default {limits.default_topk})")),
        return_scores=(bool, Field(False, description="wrap each document as {document, score}")),
    )
