"""doc2query training: the encoder-decoder network on body -> query text.

The doc2query model is the same encoder-decoder network, trained on the
doc2query task (document body -> text of a train query relevant to it),
from its family's text-to-text start (gr/model/family.py). Sampling
queries with it: gr/queries/query_generators.py.
"""

import os
from typing import Callable, Optional

from gr.data import beir
from gr.model import family as family_lib
from gr.model import models
from gr.model import pretrained
from gr.queries import generative_memory as memory_lib
from gr.train import loop as train_lib
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib
from gr.train import streaming as streaming_lib
from gr.train import tasks
from gr.index import vocab as vocab_lib


def register_doc2query_task(
  name: str,
  dataset: beir.BeirDataset,
  vocab: vocab_lib.Vocabulary,
  *,
  version: str = "v1",
  streaming: streaming_lib.Streaming = streaming_lib.DEFAULT,
) -> str:
  """Registers `gr.{name}.doc2query.{version}`: body -> train query text.

  Pairs come from the train qrels (and dev qrels as the validation split).
  Inputs are document bodies only. Registering the same data again is a
  no-op; different data under the same name raises (bump `version`). A
  corpus larger than `streaming.above_docs` streams from shards.
  """
  streams = tasks.example_streams(tasks.DOC2QUERY, dataset, None, vocab)
  if next(streams[tasks.TRAIN](), None) is None:
    raise ValueError(
      f"doc2query task {name!r}: the dataset has no train "
      "qrels with score > 0, so there is nothing to learn"
    )
  return tasks.register_streams(
    f"gr.{name}.doc2query.{version}",
    streams,
    vocab,
    docid_targets=False,
    num_docs=len(dataset.corpus),
    streaming=streaming,
  )


def train_doc2query(
  *,
  model: models.EncoderDecoderModel,
  dataset: beir.BeirDataset,
  vocab: vocab_lib.Vocabulary,
  model_dir: str,
  name: str,
  train_steps: int,
  batch_size: int = 64,
  input_length: int = 256,
  max_query_len: int = 32,
  optimizer: optimizer_lib.OptimizerConfig = (optimizer_lib.OptimizerConfig()),
  seed: int = 0,
  eval_every: int = 0,
  checkpoint_every: int = 1000,
  log_every: int = 100,
  version: str = "v1",
  cache_dir: Optional[str] = None,
  vector_every: int = 0,
  train_fn: Callable[..., state_lib.TrainState] = train_lib.train,
):
  """Trains (or resumes, or just loads) a doc2query model in `model_dir`.

  A `model_dir` that already holds step `train_steps` is restored, not
  retrained. The model starts from `doc2query_start` (the family's start;
  a frozen encoder's cache in `cache_dir`, default model_dir/../
  encoder_cache; `vector_every` > 0 also teaches the generative memory).
  A corpus above streaming.DEFAULT_ABOVE_DOCS documents streams its task
  from shards in model_dir/../examples.
  `train_fn` is the training loop: gr.train.loop.train, or the gin-bound one
  (gr/experiments/configurables.train) where `train.*` bindings apply.

  Returns:
    (model with vocab_size fitted to `vocab`, params).
  """
  examples_dir = os.path.join(
    os.path.dirname(os.path.abspath(model_dir)), "examples"
  )
  task = register_doc2query_task(
    name,
    dataset,
    vocab,
    version=version,
    streaming=streaming_lib.Streaming(directory=examples_dir),
  )
  init_params, transform = doc2query_start(
    models.fit_vocab(model, vocab.vocab_size),
    task,
    cache_dir
    or os.path.join(
      os.path.dirname(os.path.abspath(model_dir)), "encoder_cache"
    ),
    input_length=input_length,
    max_query_len=max_query_len,
    seed=seed,
    vector_every=vector_every,
  )
  state = train_fn(
    model=model,
    mixture_or_task_name=task,
    train_steps=train_steps,
    batch_size=batch_size,
    model_dir=model_dir,
    input_length=input_length,
    target_length=max_query_len,
    optimizer=optimizer,
    seed=seed,
    eval_every=eval_every,
    checkpoint_every=checkpoint_every,
    log_every=log_every,
    init_params=init_params,
    batch_transform=transform,
  )
  return models.fit_vocab(model, vocab.vocab_size), state.params


def doc2query_start(
  model: models.EncoderDecoderModel,
  task: str,
  cache_dir: str,
  *,
  input_length: int,
  max_query_len: int,
  seed: int,
  vector_every: int = 0,
):
  """(initial params, batch transform) of a doc2query model: the family's
  text-to-text start (a pretrained encoder's weights under a fresh decoder,
  HF T5 weights, or None: random), and the frozen encoder layers run once
  over the task's bodies (gr/model/encoder_cache.py). With `vector_every`
  = k > 0, every k-th row of each batch sees only its document's vector
  (gr/queries/generative_memory.py), so the same model also writes queries
  for documents whose bodies are gone.
  """
  family = family_lib.family_of(model)
  if vector_every and not family.encoder_dir(model):
    raise ValueError("vector_every needs a pretrained-encoder model")
  params = family.text_params(
    model, seed=seed, input_length=input_length, target_length=max_query_len
  )
  if not model.has_frozen_encoder_layers:
    if vector_every:
      raise ValueError("vector_every needs frozen encoder layers")
    return params, None
  rows = pretrained.mixture_encoder_inputs(
    task, input_length=input_length, target_length=max_query_len
  )
  cache = family.encoder_states(model, params, rows, cache_dir)
  if not vector_every:
    return params, cache.add_states
  if model.config.trainable_encoder_layers:
    raise ValueError(
      "vector_every needs the whole encoder frozen "
      "(TRAINABLE_ENCODER_LAYERS = 0): a document vector is "
      "the pooled output of the last layer"
    )
  return params, lambda batch: memory_lib.with_vector_sources(
    cache.add_states(batch), vector_every
  )


def model_vocabulary(
  model: models.EncoderDecoderModel,
  dataset: beir.BeirDataset,
  vocab_dir: str,
  *,
  vocab_size: int = 8000,
  seed: int = 0,
):
  """The text vocabulary of a doc2query model (its family's: a pretrained
  encoder's WordPiece, a T5 checkpoint's sentencepiece, else sentencepiece
  trained on `dataset`'s bodies and train queries in `vocab_dir`)."""
  return family_lib.family_of(model).text_vocabulary(
    model, dataset, vocab_dir, vocab_size=vocab_size, seed=seed
  )
