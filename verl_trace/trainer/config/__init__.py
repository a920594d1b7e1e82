"""Hydra configs of ``python -m verl_trace.main_trace`` (a package so ``pkg://verl_trace.trainer.config`` resolves)."""
