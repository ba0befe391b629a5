"""Index a corpus, build its training tasks, warm-start the model, train.

`index_and_train` is the one path from a corpus to a trained model, used by
run_experiment (gr/experiments/run.py) and continual indexing's version 0
(gr/continual/update.py): the index (`load_or_build_index`), the tasks the
caller registers over it, the model fitted to the index vocabulary, its
warm start (the model's family, gr/model/family.py: document vectors,
frozen-layer cache, initial params), then the caller's training loop.

`load_or_build_index` returns the index saved under an index folder, or
builds it: the scheme's docids (embedding-based schemes embed the bodies
with the run's encoder), then the family's vocabulary (a pretrained
encoder's WordPiece, a T5 checkpoint's sentencepiece, or sentencepiece
trained on the corpus), and saves it (gr/index/artifact.py layout).
"""

import dataclasses
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from gr import docids as docids_lib
from gr.data import beir
from gr.data import embeddings_file as embeddings_lib
from gr.index import artifact as index_lib
from gr.model import embed
from gr.model import family as family_lib
from gr.model import models
from gr.model import warm_start as warm_lib

Params = Any


def load_or_build_index(
  dataset: beir.BeirDataset,
  index_dir: str,
  model,
  *,
  scheme: str,
  scheme_params: Mapping[str, Any],
  vocab_size: int,
  seed: int,
  embedding_length: int = 256,
  cache_dir: Optional[str] = None,
  embeddings_file: Optional[str] = None,
) -> index_lib.Index:
  """The index under `index_dir`, built (docids + vocabulary) if absent.

  The vocabulary is the model family's; semantic docids cluster the
  family's encoder's embeddings of the bodies at `embedding_length` tokens
  (cached in `cache_dir`), else MiniLM's at 256, or the vectors of a
  supplied `embeddings_file` (gr/data/embeddings_file.py) if given.
  """
  family = family_lib.family_of(model)
  if os.path.exists(os.path.join(index_dir, index_lib.CURRENT_FILE)):
    index = index_lib.load_index(index_dir)
    if index.table.scheme != scheme:
      raise ValueError(
        f"{index_dir} holds a {index.table.scheme!r} index, "
        f"not {scheme!r}: use another workdir"
      )
    family.check_index(model, index)
    return index
  start = time.time()
  table = assign_docids(
    dataset.corpus,
    scheme,
    scheme_params,
    family.encoder_dir(model),
    embedding_length,
    cache_dir,
    embeddings_file,
  )
  index = family.build_index(
    model,
    table,
    dataset,
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
  return scheme.name in ("semantic", "rq")


def assign_docids(
  corpus,
  scheme: str,
  scheme_params: Mapping[str, Any],
  encoder_dir: Optional[str],
  embedding_length: int,
  cache_dir: Optional[str],
  embeddings_file: Optional[str] = None,
):
  """The scheme's DocidTable; embedding-based schemes take the vectors
  [len(corpus), D] of `embeddings_file` (supplied by the user), else embed
  the bodies with the encoder's (else MiniLM, the scheme's default)."""
  scheme_obj = docids_lib.get_scheme(scheme, **scheme_params)
  if embeddings_file:
    if not needs_embedder(scheme_obj):
      raise ValueError(
        f"embeddings_file {embeddings_file} given, but {scheme!r} docids "
        "use no embeddings (semantic, rq or multi with one of them do)"
      )
    vectors = embeddings_lib.vectors_for(embeddings_file, list(corpus))
    return scheme_obj.assign(corpus, embeddings=vectors)
  if not (encoder_dir and needs_embedder(scheme_obj)):
    return scheme_obj.assign(corpus)
  embedder = embed.Embedder.load(encoder_dir, max_length=embedding_length)
  vectors = embed.document_embeddings(corpus, embedder, cache_dir)
  return scheme_obj.assign(corpus, embeddings=vectors)


@dataclasses.dataclass(frozen=True)
class IndexSpec:
  """How a corpus is indexed: docid scheme and vocabulary."""

  scheme: str = "naive"
  scheme_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  vocab_size: int = 8000
  seed: int = 0
  # A user's document vectors for embedding-based schemes (None: embed).
  embeddings_file: Optional[str] = None


@dataclasses.dataclass
class IndexedRun:
  """A corpus indexed and a model ready to train (or trained) on it.

  Attributes:
    index: the index artifact (docid table + vocabulary).
    model: the model fitted to the index vocabulary (models.fit_vocab).
    mixture: the training mixture's name (None: none registered).
    target_length: the longest docid in tokens (EOS included).
    start: the family's warm start (initial params, document vectors,
      the frozen-layer cache built on the way).
    params: the trained params (the initial ones until trained; None for a
      model that train() initialises).
    train_seconds: how long training took.
  """

  index: index_lib.Index
  model: Any
  mixture: Optional[str]
  target_length: int
  start: family_lib.WarmStart
  params: Params = None
  train_seconds: float = 0.0

  @property
  def batch_transform(self) -> Optional[Callable[[dict], dict]]:
    """Adds the cached frozen-layer states to a batch (None: no cache)."""
    return family_lib.training_transform(self.model, self.start.states)

  def vector_matrix(self) -> np.ndarray:
    """[num_docs, E] document vectors in table order."""
    return self.start.vector_matrix(self.index.doc_ids)


def index_and_train(
  dataset: beir.BeirDataset,
  index_dir: str,
  model,
  spec: IndexSpec,
  *,
  input_length: int,
  register_tasks: Optional[Callable[[index_lib.Index], str]] = None,
  cache_rows: Callable[[index_lib.Index], Sequence[np.ndarray]] = (
    lambda index: ()
  ),
  warm: bool = True,
  temperature: float = warm_lib.DEFAULT_TEMPERATURE,
  states_dir: Optional[str] = None,
  embedding_cache_dir: Optional[str] = None,
  train: Optional[Callable[[IndexedRun], Params]] = None,
) -> IndexedRun:
  """Index `dataset`, register its tasks, warm-start `model`, train.

  Args:
    dataset: the corpus (and the queries its tasks may use).
    index_dir: the index folder (loaded if it holds one).
    model: the model as configured (fitted to the vocabulary here).
    spec: docid scheme and vocabulary.
    input_length: encoder input length of training and of the warm start.
    register_tasks: registers the training mixture over the index and
      returns its name (None: no mixture, e.g. nothing to train).
    cache_rows: encoder inputs [Li] the frozen-layer cache should hold
      besides the bodies (called only for a family with one).
    warm, temperature: the warm start (gr/model/warm_start.py).
    states_dir: the frozen-layer cache file's folder (None: the process's
      shared cache).
    embedding_cache_dir: where semantic docids' body embeddings are cached.
    train: the caller's training loop, given the run; returns the trained
      params (None: no training, the params are the initial ones).

  Returns:
    The IndexedRun with its params.
  """
  index = load_or_build_index(
    dataset,
    index_dir,
    model,
    scheme=spec.scheme,
    scheme_params=spec.scheme_params,
    vocab_size=spec.vocab_size,
    seed=spec.seed,
    embedding_length=input_length,
    cache_dir=embedding_cache_dir,
    embeddings_file=spec.embeddings_file,
  )
  mixture = register_tasks(index) if register_tasks else None
  target_length = index.max_docid_length()
  model = models.fit_vocab(model, index.vocab.vocab_size)
  start = family_lib.family_of(model).warm_start(
    model,
    index,
    dataset.corpus,
    seed=spec.seed,
    input_length=input_length,
    target_length=target_length,
    warm=warm,
    temperature=temperature,
    cache_dir=states_dir,
    cache_rows=lambda: cache_rows(index),
  )
  run = IndexedRun(index, model, mixture, target_length, start, start.params)
  if train is not None:
    train_start = time.time()
    run.params = train(run)
    run.train_seconds = time.time() - train_start
  return run
