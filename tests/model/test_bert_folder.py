"""A BERT encoder's params written back as a HF folder (gr/model/bert.py
`save_folder`): exact round trip, the same sentence vectors, the source's
other files kept, and an existing folder replaced whole."""

import os

import jax
import numpy as np

from gr.model import bert
from gr.model import embed
from tests.support import tiny_bert


def test_a_saved_folder_loads_the_same_params_and_vectors(tmp_path):
  source = tiny_bert.write_tiny_bert(str(tmp_path / "source"))
  start = embed.Embedder.load(source, max_length=16)
  # Word-embedding padding rows are never stored: they stay zero.
  moved = {
    **start.params,
    "layer_0": jax.tree.map(lambda x: x + 0.01, start.params["layer_0"]),
  }
  out = str(tmp_path / "tuned")
  bert.save_folder(moved, start.config, source, out)
  assert sorted(os.listdir(out)) == sorted(os.listdir(source))
  loaded = bert.load_params(out)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(moved)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  texts = ["a river of stone", "the doctor in winter"]
  again = embed.Embedder.load(out, max_length=16)
  in_memory = embed.Embedder(start.config, moved, start.tokenizer, 16)
  np.testing.assert_array_equal(again.embed(texts), in_memory.embed(texts))
  assert embed.encoder_fingerprint(again) == embed.encoder_fingerprint(
    in_memory
  )


def test_saving_over_a_folder_replaces_it_whole(tmp_path):
  source = tiny_bert.write_tiny_bert(str(tmp_path / "source"))
  config = bert.BertConfig.from_folder(source)
  params = bert.load_params(source)
  out = str(tmp_path / "tuned")
  os.makedirs(out)
  with open(os.path.join(out, "stale.txt"), "w") as f:
    f.write("old")
  bert.save_folder(params, config, source, out)
  assert "stale.txt" not in os.listdir(out)
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
