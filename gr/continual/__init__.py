"""Continual indexing: add and delete documents in a trained index.

update (version 0 and each update), strategies, generators (pseudo-queries
for new documents), replay (an update's examples and mixtures), training
(in memory, on the mesh), versions (committed index versions); the
dynamic-corpus (DSI++) protocol: dynamic_cells (one scheme x strategy),
periods (D0..Dn), dsi_metrics, dynamic_report (the experiment that runs the
grid, run_dynamic_experiment, is a driver: gr/experiments/dynamic.py).
May import gr.queries, gr.search and below.
"""
