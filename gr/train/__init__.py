"""Training: the sharded train loop, optimizer, checkpoints, seqio tasks.

The train step and loop (resume, SAM), orbax checkpoints with the index
artifact beside them, seqio tasks and mixtures, streamed example files.
May import gr.decode, gr.model, gr.index and below.
"""
