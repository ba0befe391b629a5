"""Contrastive tuning of a BERT-family sentence encoder on (query, body) pairs.

With atomic docids warm-started from the document vectors, a document's row
is its body through the encoder, and the step-0 model scores a query by
cosine against those rows. Training the rows themselves fits the documents
that have training queries and nothing else; training the *encoder* moves
every row at once: documents with no queries, and documents added later,
whose rows are computed from their bodies by the same encoder.

The loss is the in-batch softmax over a batch of pairs (each query's own
body against the other bodies of the batch, cosine / temperature), as
sentence-transformers' MultipleNegativesRankingLoss, on both towers of one
shared encoder. Shapes are fixed ([batch, query_length] and [batch,
doc_length]), so one step compiles once.

  params, losses = tune(embedder, pairs, EncoderTuning(steps=150))
"""

import dataclasses
import logging
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr import batching
from gr.model import bert
from gr.model import embed


@dataclasses.dataclass(frozen=True)
class EncoderTuning:
  """How the encoder is tuned.

  Attributes:
    steps: optimizer steps (0 keeps the encoder as it is).
    batch_size: pairs per step; each query's negatives are the batch's
      other bodies.
    learning_rate: AdamW peak, after a linear warmup over
      `warmup_fraction` of the steps, then linear decay to 0.
    temperature: the softmax's cosine scale is 1 / temperature.
    query_length: query tokens kept ([CLS] and [SEP] included); bodies keep
      the embedder's max_length.
    lead_pseudo_queries: also pair each document with one of its first
      three sentences (an inverse-cloze pseudo-query), so every document,
      test documents included, is seen; no judged query is used for it.
    seed: pair order and pseudo-query choice.
  """

  steps: int = 150
  batch_size: int = 32
  learning_rate: float = 2e-5
  warmup_fraction: float = 0.1
  temperature: float = 0.05
  query_length: int = 64
  lead_pseudo_queries: bool = False
  seed: int = 0


def in_batch_loss(
  queries: jax.Array, docs: jax.Array, temperature: float
) -> jax.Array:
  """queries [B, d], docs [B, d] unit vectors -> mean softmax cross-entropy
  of each query's own doc (row i) among the B docs, scores cos / temperature."""
  logits = queries @ docs.T / temperature
  return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def lead_pseudo_query(body: str, rng: np.random.Generator) -> str | None:
  """One of the body's first three sentences of five or more words (None
  when it has none, or only one sentence, which would be the body itself)."""
  sentences = [
    s.strip()
    for s in body.replace("?", ".").replace("!", ".").split(". ")
    if len(s.split()) >= 5
  ]
  if len(sentences) < 2:
    return None
  return sentences[int(rng.integers(min(3, len(sentences))))]


def _schedule(tuning: EncoderTuning) -> optax.Schedule:
  warmup = max(1, int(tuning.steps * tuning.warmup_fraction))
  return optax.join_schedules(
    [
      optax.linear_schedule(0.0, tuning.learning_rate, warmup),
      optax.linear_schedule(
        tuning.learning_rate, 0.0, max(1, tuning.steps - warmup)
      ),
    ],
    [warmup],
  )


def _step_fn(config: bert.BertConfig, tuning: EncoderTuning, optimizer):
  """The jitted train step: (params, opt_state, q ids, q mask, d ids,
  d mask) -> (params, opt_state, loss)."""
  encoder = bert.BertEncoder(config)

  def encode(params, ids, mask):
    hidden = encoder.apply({"params": params}, ids, mask)
    return bert.mean_pool_normalise(hidden, mask)

  def loss_fn(params, q_ids, q_mask, d_ids, d_mask):
    return in_batch_loss(
      encode(params, q_ids, q_mask),
      encode(params, d_ids, d_mask),
      tuning.temperature,
    )

  @jax.jit
  def step(params, opt_state, q_ids, q_mask, d_ids, d_mask):
    loss, grads = jax.value_and_grad(loss_fn)(
      params, q_ids, q_mask, d_ids, d_mask
    )
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _tokens(
  embedder: embed.Embedder, texts: Sequence[str], length: int
) -> tuple[np.ndarray, np.ndarray]:
  """texts -> ids [len(texts), length] int32 and mask [len(texts), length]
  bool, each text cut to `length` tokens with its [SEP] kept."""
  rows = []
  for encoding in embedder.tokenizer.encode_batch(list(texts)):
    ids = encoding.ids
    rows.append(ids if len(ids) <= length else ids[: length - 1] + ids[-1:])
  ids = batching.pad_sequences(rows, length)
  return ids, ids != 0


def tune(
  embedder: embed.Embedder,
  pairs: Sequence[tuple[str, str]],
  tuning: EncoderTuning,
) -> tuple[Any, list[float]]:
  """Trains embedder's encoder on (query, body) pairs.

  Returns (params, the loss of every step). The pairs are shuffled once by
  tuning.seed and walked in order, wrapping around; a batch never holds a
  body twice, so no in-batch negative is a positive.
  """
  optimizer = optax.adamw(_schedule(tuning), weight_decay=0.01)
  params = embedder.params
  opt_state = optimizer.init(params)
  step = _step_fn(embedder.config, tuning, optimizer)
  batches = _batches(pairs, tuning)
  losses, started = [], time.time()
  for i in range(tuning.steps):
    queries, bodies = next(batches)
    q_ids, q_mask = _tokens(embedder, queries, tuning.query_length)
    d_ids, d_mask = _tokens(embedder, bodies, embedder.max_length)
    params, opt_state, loss = step(
      params, opt_state, q_ids, q_mask, d_ids, d_mask
    )
    losses.append(float(loss))
    if (i + 1) % 25 == 0 or i + 1 == tuning.steps:
      logging.info(
        "encoder tuning step %d/%d: loss %.4f (%.1f s)",
        i + 1, tuning.steps, np.mean(losses[-25:]), time.time() - started)  # fmt: skip
  return params, losses


def _batches(pairs: Sequence[tuple[str, str]], tuning: EncoderTuning):
  """Endless batches ([queries], [bodies]) of batch_size pairs with distinct
  bodies, in a seeded order that wraps around the pairs."""
  order = np.random.default_rng(tuning.seed).permutation(len(pairs))
  position = 0
  while True:
    queries, bodies, seen = [], [], set()
    for _ in range(len(pairs)):
      query, body = pairs[order[position % len(order)]]
      position += 1
      if body in seen:
        continue
      seen.add(body)
      queries.append(query)
      bodies.append(body)
      if len(queries) == tuning.batch_size:
        break
    if len(queries) < tuning.batch_size:
      raise ValueError(
        f"encoder tuning: batch_size {tuning.batch_size} but only "
        f"{len(queries)} distinct bodies in the pairs"
      )
    yield queries, bodies
