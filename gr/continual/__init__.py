"""Continual indexing: add and delete documents in a trained index.

Update strategies with replay, the generative memory, index versions, and
the dynamic-corpus (DSI++) protocol and its report. May import
gr.queries, gr.search and below.
"""
