"""Pseudo-queries: cut from the text, sampled by doc2query, DSI-QG pairs.

pseudo_queries (sentences and spans), doc2query (training),
query_sampling (jitted seeded sampling), query_generators (from bodies or
document vectors), generative_memory, dsi_qg (pairs, filter, report).
May import gr.search, gr.train and below.
"""
