"""Search over a fixed index: retrieval, evaluation, metrics, baselines.

Queries to ranked documents with a trained model, evaluation next to BM25
and dense retrieval, metrics with trec_eval semantics (pytrec_eval). May
import gr.train, gr.decode, gr.model and below.
"""
