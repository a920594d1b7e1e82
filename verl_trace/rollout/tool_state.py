"""Per-trajectory state of stateful tools, branched with the agent state.

verl shares one instance of each tool among all trajectories of a worker and calls
``create()``/``release()`` around every single call, so a tool that models an environment (a file
system, a trading account, an interpreter) must keep that environment with the trajectory. verl's
answer is ``agent_data.extra_fields``, but that dict also becomes the trajectory's
``extra_fields`` in TransferQueue and the reward's ``extra_info``: the place for small, JSON-like
records (e.g. the calls a reward re-checks), not for live simulator objects.

:func:`tool_state` is the place for the rest: a dict on the ``AgentData`` object that the rollout
never exports. ``TraceToolAgentLoop`` snapshots every ``AgentData`` attribute it does not exclude,
so this dict is deep-copied at every turn boundary and again for every branch that resumes from
the snapshot: a continuation starts from a private copy of the environment and siblings never
share one. An object that cannot be copied by ``copy.deepcopy`` as is (a live process, a socket)
defines ``__deepcopy__`` (Python's own copy hook) to say how it branches. Under verl's plain
``tool_agent`` the dict simply lives as long as the trajectory.
"""

from __future__ import annotations

from typing import Any

TOOL_STATE_ATTR = "trace_tool_state"


def tool_state(agent_data: Any) -> dict[str, Any]:
    """The trajectory's tool-state dict (created empty on first use)."""
    state = getattr(agent_data, TOOL_STATE_ATTR, None)
    if state is None:
        state = {}
        setattr(agent_data, TOOL_STATE_ATTR, state)
    return state
