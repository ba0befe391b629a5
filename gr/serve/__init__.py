"""The docid decoding service: the served run, retriever, batching, HTTP.

Loads a trained run once and retrieves fast (gr.serve.retriever), keeps
the served run's files and online logs, micro-batches concurrent requests
and serves them over FastAPI with a search page. May import gr.continual
and below.
"""
