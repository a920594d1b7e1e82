"""BFCL function docs as the OpenAI function schemas verl's tools carry.

BFCL writes parameter types in its own vocabulary (``dict``, ``float``, ``tuple``, ...); its own
table ``GORILLA_TO_OPENAPI`` maps them to JSON-schema types. verl's ``OpenAIFunctionPropertySchema``
keeps only ``type``, ``description`` and ``enum`` per parameter, so what the chat template would
otherwise lose (a default, the element type of an array, nested fields) is written into the
parameter's description.
"""

from __future__ import annotations

import json
from typing import Any


def _type(bfcl_type: Any) -> str:
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    return GORILLA_TO_OPENAPI.get(str(bfcl_type), "string")


def _describe(spec: dict[str, Any]) -> str:
    parts = [spec.get("description", "").strip()]
    if "items" in spec and isinstance(spec["items"], dict):
        parts.append(f"Items: {_type(spec['items'].get('type', 'string'))}.")
    if "properties" in spec and isinstance(spec["properties"], dict):
        fields = ", ".join(f"{k} ({_type(v.get('type', 'string'))})" for k, v in spec["properties"].items())
        parts.append(f"Fields: {fields}.")
    if "default" in spec:
        parts.append(f"Default: {json.dumps(spec['default'])}.")
    return " ".join(p for p in parts if p)


def openai_schema(doc: dict[str, Any]) -> dict[str, Any]:
    """One BFCL function doc -> ``{"type": "function", "function": {...}}``."""
    params = doc.get("parameters") or {}
    properties = {}
    for name, spec in (params.get("properties") or {}).items():
        prop: dict[str, Any] = {"type": _type(spec.get("type", "string")), "description": _describe(spec)}
        if spec.get("enum"):
            prop["enum"] = list(spec["enum"])
        properties[name] = prop
    return {
        "type": "function",
        "function": {
            "name": doc["name"],
            "description": doc.get("description", ""),
            "parameters": {"type": "object", "properties": properties, "required": list(params.get("required") or [])},
        },
    }
