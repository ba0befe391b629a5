"""Decoding: constrained beam search, trie constraints, ranking, sampling.

Beam search with a logits hook, the trie constraint, document aggregation,
the exact oracle, ancestral sampling and the model adapter the loops see.
May import gr.index, gr.model and below.
"""
