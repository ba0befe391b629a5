"""gr: generative retrieval in JAX/Flax."""
