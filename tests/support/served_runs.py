"""Run dirs like run_experiment's, for the serving tests
(tests/serve/test_capacity.py, test_served_plan.py, test_serving.py).

`warm_started` gives the tiny BERT (tests/support/tiny_bert.py) under a
one-layer decoder warm-started so that step 0 is dense retrieval
(gr/model/warm_start.py), with its index saved; `save_run` writes the
checkpoint (with the index version dir) and the model config;
`searcher_of` is the peer oracle for a served Retriever's scores.
"""

import os
from typing import Mapping, Optional

from gr.data import beir
from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib
from gr.model import model_config
from gr.model import models
from gr.model import pretrained
from gr.search import retrieval
from gr.serve import online_rows
from gr.train import checkpoints

from tests.support import tiny_bert


def warm_started(
  bert_dir: str,
  corpus: Mapping[str, beir.Document],
  table,
  index_dir: str,
  input_length: int,
):
  """Saves the WordPiece index of `table` in `index_dir`; returns (index,
  model, params): docid rows warm-started from the documents' vectors."""
  index_lib.save_index(pretrained.wordpiece_index(table, bert_dir), index_dir)
  index = index_lib.load_index(index_dir)
  model = models.fit_vocab(
    tiny_bert.frozen_model(bert_dir), index.vocab.vocab_size
  )
  kwargs = dict(seed=0, input_length=input_length, target_length=2)
  base = pretrained.initial_params(
    model, bert_dir, index=index, doc_vectors=None, warm=False, **kwargs
  )
  tokens = vocab_lib.encode_texts(
    index.vocab, [corpus[d].text for d in index.doc_ids], input_length
  )
  vectors = online_rows.DocumentEncoder(model, input_length).vectors(
    base, tokens
  )
  params = pretrained.initial_params(
    model,
    bert_dir,
    index=index,
    doc_vectors=vectors,
    encoder_params=base["encoder"],
    **kwargs,
  )
  return index, model, params


def save_run(
  workdir: str,
  model,
  params,
  index_dir: str,
  *,
  step: int,
  input_length: int,
  corpus: Optional[Mapping[str, beir.Document]] = None,
  scoring: Optional[Mapping[str, object]] = None,
) -> str:
  """Checkpoints `params` at `step` in workdir/model (with the index's
  current version dir) and saves the model config (with workdir/corpus.jsonl
  when `corpus` is given, and the run's `scoring`); returns the model dir."""
  model_dir = os.path.join(workdir, "model")
  checkpoints.save(
    model_dir,
    step,
    {"params": params},
    extra_artifacts_dir=index_lib.current_version_dir(index_dir),
  )
  kwargs = {}
  if corpus is not None:
    kwargs["corpus_path"] = os.path.join(workdir, "corpus.jsonl")
    beir.write_corpus(kwargs["corpus_path"], corpus)
  model_config.save_model_config(
    workdir, model.config, input_length=input_length, scoring=scoring, **kwargs
  )
  return model_dir


def searcher_of(r, config, input_length: int, **kwargs) -> retrieval.Searcher:
  """A Searcher (batches of 4) over Retriever `r`'s model, params and index
  with `config`'s search config; `kwargs` go to the Searcher."""
  return retrieval.Searcher(
    r.model,
    r.params,
    r.index,
    config.search_config(r.max_decode_len),
    input_length=input_length,
    batch_size=4,
    **kwargs,
  )
