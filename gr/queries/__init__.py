"""Pseudo-queries: cut from the text, sampled by doc2query, DSI-QG pairs.

May import gr.search, gr.train and below.
"""
