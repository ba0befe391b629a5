"""Decoding: constrained beam search, trie constraints, ranking, sampling.

hooks (the decoder step and the LogitsProcessor / Constraint protocols),
beam_search (the loop) and expand (one step's continuations), constraint
(the trie constraint), aggregate (documents from docids), oracle (exact
ranking), plan (lexical look-ahead), sampling, and model_decoder (the model
as the loops see it). May import gr.index, gr.model and below.
"""
