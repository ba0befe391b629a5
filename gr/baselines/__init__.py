"""Non-generative baselines."""
