"""Index a corpus: its docid table and vocabulary, built once.

`load_or_build_index` returns the index saved under an index folder, or
builds it: the scheme's docids (embedding-based schemes embed the bodies
with the run's encoder), then the vocabulary (a pretrained encoder's
WordPiece, a T5 checkpoint's sentencepiece, or sentencepiece trained on the
corpus), and saves it (gr/index/artifact.py layout).
"""

import logging
import os
import time
from typing import Any, Mapping, Optional

from gr import docids as docids_lib
from gr.model import embed
from gr.index import artifact as index_lib
from gr.model import pretrained
from gr.model import pretrained_t5
from gr.data import beir


def load_or_build_index(
  dataset: beir.BeirDataset,
  index_dir: str,
  *,
  scheme: str,
  scheme_params: Mapping[str, Any],
  vocab_size: int,
  seed: int,
  encoder_dir: Optional[str] = None,
  embedding_length: int = 256,
  cache_dir: Optional[str] = None,
  t5_dir: Optional[str] = None,
) -> index_lib.Index:
  """The index under `index_dir`, built (docids + vocabulary) if absent.

  With `encoder_dir` (a pretrained encoder's HF folder) the vocabulary is
  that encoder's WordPiece tokenizer, and semantic docids cluster that
  encoder's embeddings of the bodies at `embedding_length` tokens (cached
  in `cache_dir`); else sentencepiece trained here, and MiniLM at 256.
  """
  if os.path.exists(os.path.join(index_dir, index_lib.CURRENT_FILE)):
    index = index_lib.load_index(index_dir)
    if index.table.scheme != scheme:
      raise ValueError(
        f"{index_dir} holds a {index.table.scheme!r} index, "
        f"not {scheme!r}: use another workdir"
      )
    if t5_dir:
      pretrained_t5.check_t5_index(index, t5_dir)
    return index
  start = time.time()
  table = assign_docids(
    dataset.corpus,
    scheme,
    scheme_params,
    encoder_dir,
    embedding_length,
    cache_dir,
  )
  if encoder_dir:
    index = pretrained.wordpiece_index(table, encoder_dir)
  elif t5_dir:
    index = pretrained_t5.t5_index(table, t5_dir)
  else:
    texts = index_lib.training_texts(
      dataset.corpus,
      {q: dataset.queries[q] for q in dataset.qrels.get("train", {})},
    )
    index = index_lib.build_index(
      table,
      texts,
      os.path.join(index_dir, "work"),
      vocab_size=vocab_size,
      seed=seed,
    )
  index_lib.save_index(index, index_dir)
  logging.info(
    "built %s index of %d documents in %.1fs",
    scheme,
    table.num_docs,
    time.time() - start,
  )
  return index_lib.load_index(index_dir)


def needs_embedder(scheme) -> bool:
  """Whether a docid scheme object places documents by their embeddings
  (semantic, or multi with a semantic part), and so needs an embedder (or
  the embeddings) to assign docids to new documents."""
  if scheme.name == "multi":
    return any(needs_embedder(part) for part in scheme.part_schemes())
  return scheme.name == "semantic"


def assign_docids(
  corpus,
  scheme: str,
  scheme_params: Mapping[str, Any],
  encoder_dir: Optional[str],
  embedding_length: int,
  cache_dir: Optional[str],
):
  """The scheme's DocidTable; embedding-based schemes use the encoder's."""
  scheme_obj = docids_lib.get_scheme(scheme, **scheme_params)
  if not (encoder_dir and needs_embedder(scheme_obj)):
    return scheme_obj.assign(corpus)
  embedder = embed.Embedder.load(encoder_dir, max_length=embedding_length)
  vectors = embed.document_embeddings(corpus, embedder, cache_dir)
  return scheme_obj.assign(corpus, embeddings=vectors)
