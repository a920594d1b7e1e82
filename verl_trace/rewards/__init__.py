"""Reward functions usable through verl's ``reward.custom_reward_function`` hook."""
