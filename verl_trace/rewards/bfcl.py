"""BFCL v4 multi-turn reward: BFCL's own checker on the calls the trajectory made.

Use it through verl's reward-function hook::

    reward:
      custom_reward_function:
        path: pkg://verl_trace.rewards.bfcl
        name: compute_score

Inputs: ``ground_truth`` (the entry's per-turn ground-truth calls, JSON), ``extra_info`` = the row's
(``tools_kwargs[SCENARIO_KEY]``: the entry's id, ``initial_config`` and classes) plus the
trajectory's ``extra_fields``, which verl's reward managers merge in: the calls the BFCL tools
recorded (``bfcl_calls``, by user turn and assistant message) and the user turns never delivered
(``pending_user_turns``).

Scoring follows BFCL's evaluation of a multi-turn entry
(``bfcl_eval.eval_checker.eval_runner._evaluate_single_multi_turn_entry``): a conversation cut
before its last user turn fails (BFCL: ``force_terminated``); otherwise BFCL's ``multi_turn_checker``
re-executes the model's calls and the ground truth in fresh simulators and, after each turn with
ground truth, requires equal public state of every instance and every ground-truth result among
the model's results so far. 1.0 if valid, else 0.0; the failure kind becomes reward extra info.

One private detail of BFCL is handled here and only here: its executor caches simulator instances
in its module's globals under ``{model_name}_{entry id}_...``, for the life of the process. We pass
a unique model name per call and delete that call's instances afterwards, so scores never see
another trajectory's state and the cache does not grow.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from ..rollout.agent_loop import PENDING_USER_TURNS
from ..tools.bfcl.package import category_of
from ..tools.bfcl.tool import CALLS_KEY, SCENARIO_KEY

ERROR_KINDS = ("force_terminated", "empty_turn_model_response", "instance_state_mismatch",
               "execution_response_mismatch")


def group_calls(records: Sequence[Sequence[Any]], n_turns: int) -> list[list[list[str]]]:
    """``[[turn, step, call], ...]`` -> per user turn, per assistant message (step), its calls."""
    turns: list[list[list[str]]] = [[] for _ in range(n_turns)]
    last: list[tuple[int, int] | None] = [None] * n_turns
    for turn, step, call in records:
        turn, step = int(turn), int(step)
        if not 0 <= turn < n_turns:
            raise ValueError(f"call {call!r} recorded for user turn {turn}, but the entry has {n_turns}")
        if last[turn] != (turn, step):
            turns[turn].append([])
            last[turn] = (turn, step)
        turns[turn][-1].append(str(call))
    return turns


def check(decoded: list[list[list[str]]], ground_truth: list[list[str]], scn: dict[str, Any]) -> dict[str, Any]:
    """BFCL's ``multi_turn_checker`` on one trajectory, isolated from every other call."""
    from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils
    from bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker import multi_turn_checker

    entry = {"id": scn["id"], "initial_config": json.loads(scn["initial_config"]),
             "involved_classes": list(scn["involved_classes"])}
    model_name = f"verl_trace_{uuid.uuid4().hex}"
    try:
        return multi_turn_checker(decoded, ground_truth, entry, category_of(scn["id"]), model_name)
    finally:
        cache = vars(multi_turn_utils)
        for key in [k for k in cache if k.startswith(model_name)]:
            del cache[key]


def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None, **_: Any) -> dict:
    extra_info = extra_info or {}
    scn = (extra_info.get("tools_kwargs") or {}).get(SCENARIO_KEY)
    if scn is None:
        raise ValueError(f"BFCL reward: extra_info.tools_kwargs[{SCENARIO_KEY!r}] is missing (see recipes/bfcl)")
    gt = json.loads(ground_truth) if isinstance(ground_truth, str) else [list(t) for t in ground_truth]
    flags = dict.fromkeys(ERROR_KINDS, 0.0)
    if int(extra_info.get(PENDING_USER_TURNS) or 0) > 0:
        flags["force_terminated"] = 1.0
        return {"score": 0.0, **flags}
    result = check(group_calls(extra_info.get(CALLS_KEY) or [], len(gt)), gt, scn)
    kind = str(result.get("error_type", "")).split(":")[-1]
    if kind in flags:
        flags[kind] = 1.0
    return {"score": 1.0 if result["valid"] else 0.0, **flags}
