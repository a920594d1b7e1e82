"""Deliberately imperfect demonstrations of the multi-hop search task, generated for real.

A scripted teacher plays the task through the same machinery the RL phase uses: verl's agent
loop (``TraceToolAgentLoop`` via ``TreeRolloutRunner``), the real ``SearchTool`` over HTTP and
the qa_em reward; only the LLM is replaced by ``ScriptedPolicyClient`` driven by the teacher. So
every demonstration is token for token the layout the policy will later generate in (chat
template, tool-call tokens, observation tokens, masks), and its reward is known.

The teacher follows the gold chain as a state machine over the searches it has made so far, and
makes the mistakes the issue asks for, each with its own probability (``TeacherSettings``):
a wrong first query (a person's given name only, or another entity of the same kind), following
the wrong passage at a later hop, answering prematurely with an intermediate entity, and a wrong
final answer; after a wrong search it either recovers (searches the right entity) or answers
from the wrong passage. Its decisions are drawn from a hash of (seed, run id, history), so a set
of demonstrations is reproducible whatever order the runs finish in.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..allocation import Budget
from ..config import BudgetConfig, TraceConfig
from ..rewards import qa_em
from ..rollout import LeafOutput, RewardFn, TreePrompt, TreeRolloutRunner, build_planner, compute_score_reward
from ..testing.scripted import PolicyCall, ScriptedPolicyClient
from ..tools.search_tool import SearchTool, close_shared_sessions
from .settings import DemoSettings, TeacherSettings
from .world import Question

_QUESTION = re.compile(r"Question: (.*?)<\|im_end\|>", re.S)
_CALL = re.compile(r'"query_list": \["(.*?)"\]')
_TOOL_TURN = re.compile(r"<\|im_start\|>tool\n(.*?)<\|im_end\|>", re.S)
_DOC = re.compile(r'Doc \d+\(Title: "?(.*?)"?\) (.*)')
_RELATION = re.compile(r"(?:born in|founded by|founded|headquartered in|city in|capital of [\w ]+? is) ([A-Z][\w ]*?)\.")

MAX_CONCURRENCY = 64  # agent-loop runs in flight in this process (demonstrations, the evaluator)

# The compact tool schema the agent sees (the chat template renders it into every prompt).
SEARCH_SCHEMA = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search passages.",
        "parameters": {"type": "object", "properties": {"query_list": {"type": "array", "items": {"type": "string"}}},
                       "required": ["query_list"]},
    },
}


def search_text(query: str) -> str:
    """A hermes tool call, as verl's parser reads it."""
    return f'<tool_call>{{"name": "search", "arguments": {{"query_list": ["{query}"]}}}}</tool_call>'


def answer_text(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def search_tool_config(retrieve_url: str, topk: int) -> dict:
    """The search tool's config: the RL job's rollout workers build the tool from it (as YAML,
    ``trainer.write_inputs``) and this process builds the same tool (:func:`make_search_tool`)."""
    return {"type": "native", "retrieval_service_url": retrieve_url, "topk": topk, "timeout": 30, "max_retries": 2}


def search_tool_yaml(topk: int) -> dict:
    """verl's tool YAML of the same tool for the RL job's rollout workers (the server's URL comes
    from ``$RETRIEVAL_URL`` in the job's environment)."""
    return {"tools": [{"class_name": f"{SearchTool.__module__}.{SearchTool.__name__}",
                       "config": search_tool_config("${oc.env:RETRIEVAL_URL}", topk), "tool_schema": SEARCH_SCHEMA}]}


def make_search_tool(retrieve_url: str, topk: int):
    """The real verl ``SearchTool`` pointed at the server (BaseTool prints its schema: silenced)."""
    from verl.tools.schemas import OpenAIFunctionToolSchema

    config = search_tool_config(retrieve_url, topk)
    with contextlib.redirect_stdout(io.StringIO()):
        return SearchTool(config, OpenAIFunctionToolSchema.model_validate(SEARCH_SCHEMA))


def parse_docs(observation: str) -> list[tuple[str, str]]:
    """(title, text) of each passage in a search observation."""
    return [(m[1], m[2]) for m in (_DOC.match(line) for line in observation.splitlines()) if m]


def relation_entities(passage_text: str) -> list[str]:
    return _RELATION.findall(passage_text)


@dataclass
class Teacher:
    """The imperfect scripted policy (module docstring). ``distractors`` maps a question template to
    same-kind entities used for wrong first queries when the topic is not a person."""

    questions: dict[str, Question]
    settings: TeacherSettings
    max_turns: int
    seed: int = 0

    def __post_init__(self) -> None:
        by_kind: dict[str, list[str]] = {}
        for q in self.questions.values():
            by_kind.setdefault(_kind(q), []).append(q.topic)
        self.distractors = {k: sorted(set(v)) for k, v in by_kind.items()}

    def __call__(self, call: PolicyCall) -> str:
        text = call.text
        m = _QUESTION.search(text)
        if m is None or m[1].strip() not in self.questions:
            raise ValueError("teacher: the prompt holds no known 'Question: ...'")
        q = self.questions[m[1].strip()]
        queries = _CALL.findall(text.split("<|im_start|>assistant", 1)[-1])
        observations = _TOOL_TURN.findall(text)
        rng = random.Random(f"{self.seed}|{call.request_id}|{call.turn}|{'|'.join(queries)}")
        return self.act(q, queries, observations, call.turn, rng)

    def act(self, q: Question, queries: Sequence[str], observations: Sequence[str], turn: int, rng: random.Random) -> str:
        s, chain, hops = self.settings, q.chain, q.hops
        done, last_wrong = 0, False
        for query in queries:
            if done < hops and query.strip().lower() == chain[done]["query"].lower():
                done, last_wrong = done + 1, False
            else:
                last_wrong = True
        last_obs = observations[-1] if observations else ""
        if turn >= self.max_turns - 1:  # the last turn the loop allows: answer with what we have
            return answer_text(chain[done - 1]["finds"] if done else _first_relation(last_obs) or q.topic)
        r = rng.random()
        if last_wrong:
            if r < s.recover:
                return search_text(chain[done]["query"] if done < hops else chain[-1]["query"])
            return answer_text(_first_relation(last_obs) or q.topic)
        if done == hops:
            if r < s.wrong_answer:
                return answer_text(self._distractor(last_obs, chain[-1]["finds"], q, rng))
            return answer_text(chain[-1]["finds"])
        if done == 0:
            if r < s.wrong_first_query:
                return search_text(self._wrong_first(q, rng))
            return search_text(chain[0]["query"])
        if r < s.premature_answer:
            return answer_text(chain[done - 1]["finds"])
        if r < s.premature_answer + s.wrong_entity:
            return search_text(self._distractor(last_obs, chain[done]["query"], q, rng))
        return search_text(chain[done]["query"])

    def _wrong_first(self, q: Question, rng: random.Random) -> str:
        if " " in q.topic:  # a person: the given name alone (it hits namesakes)
            return q.topic.split()[0]
        pool = [t for t in self.distractors.get(_kind(q), []) if t != q.topic]
        return rng.choice(pool) if pool else q.topic.split()[0]

    @staticmethod
    def _distractor(observation: str, right: str, q: Question, rng: random.Random) -> str:
        """An entity from the observation that is not the right one (the wrong passage or relation)."""
        docs = parse_docs(observation)
        cands = [title for title, _ in docs[1:]] + [e for _, text in docs[:1] for e in relation_entities(text)]
        cands = [c for c in dict.fromkeys(cands) if c.lower() != right.lower()]
        return rng.choice(cands) if cands else q.topic


def _first_relation(observation: str) -> str | None:
    docs = parse_docs(observation)
    ents = relation_entities(docs[0][1]) if docs else []
    return ents[0] if ents else None


def _kind(q: Question) -> str:
    return q.template.split("_")[0]


@dataclass
class Demonstration:
    """One teacher trajectory as the SFT phase trains on it (only ``response_mask == 1`` tokens)."""

    question_id: str
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    reward: float


async def play(prompts: Sequence[TreePrompt], policy, tokenizer, rollout_config, tools: Sequence[Any],
               reward_fn: RewardFn, max_turns: int, seed: int, progress: bool) -> list[tuple[str, LeafOutput]]:
    """One chain per prompt played by the scripted ``policy`` through the real agent loop, tools and
    reward (the uniform allocator with one leaf per root): (uid, output) of every leaf that did not
    fail, in the order they finished."""
    r = rollout_config.actor_rollout_ref.rollout
    client = ScriptedPolicyClient(tokenizer, policy, prompt_length=r.prompt_length, response_length=r.response_length,
                                  seed=seed)
    runner = TreeRolloutRunner(rollout_config, client, tokenizer, tools=list(tools), reward_fn=reward_fn,
                               hf_model_type="qwen2", max_concurrency=MAX_CONCURRENCY)
    cfg = TraceConfig(allocator="uniform", budget=BudgetConfig(leaves_per_prompt=1, min_leaves_per_root=1))
    planner = build_planner(cfg, n_roots=len(prompts), budget=Budget(leaves=len(prompts)), max_turns=max_turns,
                            rng=np.random.default_rng(seed))
    result = await runner.run_step(planner, list(prompts), {"temperature": 1.0, "logprobs": False}, progress=progress)
    return [(leaf.uid, leaf.output) for leaf in result.leaves if leaf.status.value != "failed"]


async def _generate(questions: Sequence[Question], teacher: Teacher, tokenizer, rollout_config, retrieve_url: str,
                    settings: DemoSettings, progress: bool) -> list[Demonstration]:
    try:
        played = await play([q.prompt(f"demo-{i}") for i, q in enumerate(questions)], teacher, tokenizer,
                            rollout_config, [make_search_tool(retrieve_url, settings.task.topk)],
                            compute_score_reward(qa_em.compute_score, tokenizer), settings.task.max_turns,
                            settings.seed, progress)
    finally:
        await close_shared_sessions()
    by_uid = {f"demo-{i}": q for i, q in enumerate(questions)}
    return [Demonstration(by_uid[uid].id, list(out.prompt_ids), list(out.response_ids), list(out.response_mask),
                          float(out.reward_score)) for uid, out in played]


def generate_demonstrations(questions: Sequence[Question], tokenizer, rollout_config, retrieve_url: str,
                            settings: DemoSettings, *, progress: bool = True) -> list[Demonstration]:
    """``settings.sft.demonstrations`` teacher trajectories over ``questions`` (each question once
    before any repeats), through the real agent loop, search tool and reward."""
    rng = random.Random(settings.seed)
    n = settings.sft.demonstrations
    order = []
    while len(order) < n:
        order += rng.sample(list(questions), min(len(questions), n - len(order)))
    teacher = Teacher({q.question: q for q in questions}, settings.teacher, settings.task.max_turns, settings.seed)
    return asyncio.run(_generate(order, teacher, tokenizer, rollout_config, retrieve_url, settings, progress))


def demonstration_stats(demos: Sequence[Demonstration]) -> dict[str, float]:
    rewards = np.array([d.reward for d in demos]) if demos else np.zeros(1)
    return {"demonstrations": float(len(demos)), "teacher_accuracy": float(rewards.mean()),
            "response_tokens_mean": float(np.mean([len(d.response_ids) for d in demos])) if demos else 0.0}


def dump_examples(demos: Sequence[Demonstration], tokenizer, k: int = 3) -> str:
    """A few decoded demonstrations, for the report."""
    return json.dumps([{"question_id": d.question_id, "reward": d.reward,
                        "response": tokenizer.decode(d.response_ids, skip_special_tokens=False)} for d in demos[:k]],
                      indent=1)
