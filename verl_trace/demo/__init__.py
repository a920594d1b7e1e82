"""The CPU end-to-end demo: a tiny agent learns multi-hop search with TRACE.

``python -m verl_trace.demo`` (``make demo``) runs the whole loop for real on an ordinary machine:
a BM25 retrieval server (``verl_trace.tools.retrieval_server.process``), a tiny Qwen2 with a
locally trained tokenizer (``model``), a supervised warm start on deliberately imperfect
demonstrations generated through verl's agent loop (``demonstrations``, ``sft``, ``warm_start``),
then RL where every step's rollouts go through
``TreeRolloutRunner`` + ``TraceToolAgentLoop`` + ``HFLLMClient`` + the real ``SearchTool``
(``agent``), advantages come from verl's registry and the loss from verl's
``get_policy_loss_fn`` (``learner``), with held-out evaluation (``evaluate``), checkpoints
(``checkpoint``), a report with plots and a rendered rollout tree (``report``, ``render``).
``benchmarks/e2e_cpu.py`` compares allocators with the same pieces. docs/demo.md explains it.

This small trainer exists for CPU demos and benchmarks only; verl's trainer is the product path.
It ships in the wheel (``python -m verl_trace.demo`` from an install), its dependencies in the
``demo`` extra: ``pip install 'verl-trace[demo]'`` (checked here, on import).
"""

from ..extras import require_extra

require_extra("demo", "the CPU demo (verl_trace.demo)")
