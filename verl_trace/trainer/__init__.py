"""Layer 6: the little that changes in verl's trainer so TRACE runs under it.

Modules import verl's trainer machinery, so this package's ``__init__`` imports nothing: the
rollout layer and light tools can import ``verl_trace.trainer.config_check`` without pulling in
the trainer.
"""
