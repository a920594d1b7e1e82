"""SearchTool against a live retrieval server: config, observations, and faults (killed, frozen, refusing)."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from verl.experimental.agent_loop.tool_agent_loop import AgentData
from verl.tools.tool_registry import initialize_tools_from_config

from verl_trace.tools.search_tool import SearchTool, close_shared_sessions

pytestmark = pytest.mark.slow

TOOL_YAML = Path(__file__).resolve().parents[2] / "recipes" / "search_r1" / "config" / "tool_config" / "search_tool_config.yaml"


def make_tool(url: str, **config) -> SearchTool:
    return SearchTool({"type": "native", "retrieval_service_url": url, **config}, None)


def run(coro):
    """asyncio.run, closing the tool's shared HTTP sessions before the loop ends."""

    async def main():
        try:
            return await coro
        finally:
            await close_shared_sessions()

    return asyncio.run(main())


async def call(tool: SearchTool, parameters, agent_data=None):
    instance_id, _ = await tool.create()
    try:
        return await tool.execute(instance_id, parameters, agent_data=agent_data)
    finally:
        await tool.release(instance_id)


def agent_data() -> AgentData:
    return AgentData(messages=[], image_data=None, video_data=None, audio_data=None, mm_processor_kwargs=None,
                     metrics={}, request_id="r0", tools_kwargs={})


def test_recipe_tool_yaml_loads_through_verl(server, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_URL", f"{server.url}/retrieve")
    [tool] = initialize_tools_from_config(str(TOOL_YAML))
    assert isinstance(tool, SearchTool) and tool.name == "search"
    assert tool.settings.retrieval_service_url == f"{server.url}/retrieve" and tool.settings.topk == 3
    assert tool.tool_schema.function.parameters.required == ["query_list"]


@pytest.mark.parametrize(
    "config, field",
    [({}, "config.retrieval_service_url"),
     ({"retrieval_service_url": "http://h:1", "topkk": 3}, "config.topkk"),
     ({"retrieval_service_url": "http://h:1", "topk": 0}, "config.topk"),
     ({"retrieval_service_url": "localhost:8000"}, "config.retrieval_service_url"),
     ({"retrieval_service_url": "http://h:1", "type": "mcp"}, "config.type")],
)
def test_bad_config_names_the_field(config, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        SearchTool({"type": "native", **config}, None)


def test_url_without_path_gets_the_retrieve_endpoint_and_default_schema():
    tool = make_tool("http://127.0.0.1:8000")
    assert tool.settings.retrieval_service_url == "http://127.0.0.1:8000/retrieve"
    assert tool.name == "search"


def test_observation_is_search_r1_text_with_the_gold_passage(server, mini_records):
    tool = make_tool(server.url)
    hop = mini_records[700]["metadata"]["chain"][0]
    response, reward, metrics = run(call(tool, {"query_list": [hop["query"]]}))
    lines = response.text.split("\n")
    assert len(lines) == 3 and lines[0].startswith(f'Doc 1(Title: "{hop["query"]}") ')
    assert hop["finds"] in lines[0] and lines[1].startswith("Doc 2(Title: ")
    assert reward == 0.0
    assert metrics["search_calls"] == 1 and metrics["search_errors"] == 0 and metrics["search_attempts"] == 1
    assert metrics["search_hits"] == 3 and metrics["search_latency_s"] > 0


def test_several_queries_a_string_query_limits_and_truncation(server):
    tool = make_tool(server.url, max_queries=2, max_doc_chars=40, topk=1)
    response, _, metrics = run(call(tool, {"query_list": ["Kogridale", "  ", "Fotreia", "Gemmar"]}))
    assert response.text.startswith("(Only the first 2 of 3 queries were searched.)")
    assert '\nResults for "Kogridale":\nDoc 1(Title: "Kogridale")' in response.text
    assert '\n\nResults for "Fotreia":\nDoc 1(Title: "Fotreia")' in response.text
    assert all(line.endswith(" ...") for line in response.text.split("\n") if line.startswith("Doc"))
    assert metrics["search_queries"] == 2
    single, _, _ = run(call(tool, {"query_list": "Kogridale"}))
    assert single.text.startswith('Doc 1(Title: "Kogridale")')


@pytest.mark.parametrize("params", [{}, {"query_list": 5}, {"query_list": [1, "a"]}, {"query_list": ["", " "]},
                                    {"queries": ["Kogridale"]}])
def test_malformed_arguments_give_an_error_observation(server, params):
    response, _, metrics = run(call(make_tool(server.url), params))
    assert response.text.startswith("Search error: 'query_list'")
    assert metrics["search_errors"] == 1 and metrics["search_attempts"] == 0


def test_frozen_then_killed_server_gives_error_observations_and_counts(start_server):
    """A frozen server times out, recovers when it resumes; a killed one fails fast. Nothing raises."""
    proc = start_server()
    tool = make_tool(proc.url, timeout=0.5, max_retries=1, backoff=0.05)
    data = agent_data()
    proc.signal(signal.SIGSTOP)
    try:
        frozen, _, metrics = run(call(tool, {"query_list": ["Kogridale"]}, data))
    finally:
        proc.signal(signal.SIGCONT)
    assert frozen.text.startswith("Search error: the retrieval service failed (no answer within 0.5s after 2")
    assert metrics["search_timeouts"] == 1 and metrics["search_attempts"] == 2

    recovered, _, metrics = run(call(tool, {"query_list": ["Kogridale"]}, data))
    assert recovered.text.startswith('Doc 1(Title: "Kogridale")') and metrics["search_errors"] == 0

    proc.signal(signal.SIGKILL)
    proc.proc.wait(timeout=10)
    tool = make_tool(proc.url, timeout=5, max_retries=2, backoff=0.05)
    start = time.monotonic()
    killed, reward, metrics = run(call(tool, {"query_list": ["Kogridale"]}, data))
    assert time.monotonic() - start < 5
    assert killed.text.startswith("Search error: the retrieval service failed (ClientConnectorError")
    assert "after 3 attempt(s)" in killed.text and reward == 0.0
    assert metrics["search_errors"] == 1 and metrics["search_attempts"] == 3 and metrics["search_timeouts"] == 0
    assert data.extra_fields == {"search_calls": 3, "search_errors": 2, "search_timeouts": 1}


def test_a_refused_request_is_not_retried(server):
    tool = make_tool(server.url, max_queries=2000)
    response, _, metrics = run(call(tool, {"query_list": [f"q{i}" for i in range(1025)]}))
    assert "HTTP 422" in response.text and "queries" in response.text
    assert metrics["search_attempts"] == 1 and metrics["search_errors"] == 1


def test_many_concurrent_calls_share_one_limited_pool(server, mini_records):
    queries = [r["metadata"]["chain"][0]["query"] for r in mini_records[:40]]
    tools = [make_tool(server.url, max_concurrency=4) for _ in range(2)]

    async def sequential():
        return [(await call(tools[0], {"query_list": [q]}))[0].text for q in queries]

    async def concurrent():
        outs = await asyncio.gather(*(call(tools[i % 2], {"query_list": [q]}) for i, q in enumerate(queries)))
        return [o[0].text for o in outs]

    assert run(concurrent()) == run(sequential())
