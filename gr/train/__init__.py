"""Training: the sharded train loop, optimizer, checkpoints, seqio tasks.

loop (train() and the step loop), state (TrainState and the sharded, jitted
step, SAM), optimizer, data (task batches and their saved position),
checkpoints (orbax, with the index artifact beside them), tasks and
preprocessors (seqio tasks and mixtures), example_files (streamed examples),
indexing (index a corpus once). May import gr.decode, gr.model, gr.index and
below.
"""
