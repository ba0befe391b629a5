"""The model: networks (T5, BERT encoder), families, warm start, configs.

Holds the Flax networks, the encoder-decoder wrapper (loss, scores, decode
step), pretrained encoders and HF T5 import, the warm start, the frozen
encoder cache and the model config saved with a run. May import gr.data,
gr.docids, gr.index and the shared leaves.
"""
