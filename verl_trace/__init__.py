"""verl-trace: TRACE (Tree Rollout Allocation for Contrastive Exploration) as a verl plugin."""

__version__ = "0.1.0"
