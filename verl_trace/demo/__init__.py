"""The CPU demo: a tiny agent learns multi-hop search, trained by verl's own trainer.

``python -m verl_trace.demo`` (``make demo``) runs the product path at toy scale on an ordinary
machine: a BM25 retrieval server (``verl_trace.tools.retrieval_server.process``), a tiny Qwen2
with a locally trained tokenizer whose entity names share their updates (``model``,
``shared_names``), a supervised warm start on deliberately imperfect demonstrations generated
through verl's agent loop (``demonstrations``, ``sft``, ``warm_start``), then RL through
``python -m verl_trace.main_trace`` on the ``cpu`` platform (``trainer``): verl's PPO trainer,
FSDP2 actor, ``hf`` rollout server, TRACE's tree rollout, predictor and estimator, verl's
validation as the held-out evaluation (``evaluate`` reads its dumps) and verl's checkpoints and
resume. The report has plots and a rendered rollout tree (``report``, ``render``).
``benchmarks/e2e_cpu.py`` compares allocators with the same job. docs/demo.md explains it.

It ships in the wheel (``python -m verl_trace.demo`` from an install), its dependencies in the
``demo`` extra: ``pip install 'verl-trace[demo]'`` (checked here, on import).
"""

from ..extras import require_extra

require_extra("demo", "the CPU demo (verl_trace.demo)")
