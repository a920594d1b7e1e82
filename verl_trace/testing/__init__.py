"""Helpers for the tests and the CPU demo, not part of the training path: a seeded scripted
policy behind verl's LLM client interface (:mod:`.scripted`), a toy arithmetic tool task with
its reward (:mod:`.arithmetic`) and a tiny Qwen2 + tokenizer built locally (:mod:`.tiny`).

They ship in the package (rather than under ``tests/``) because Ray actors must import them: verl
loads tools and reward functions by module path, and a pickled ``ScriptedPolicyClient`` is
unpickled in every rollout worker. Importing this package imports nothing; import the module.
"""
