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
shared encoder; with hard negatives each query also meets one more body
per pair. Shapes are fixed (queries [batch, query_length], bodies [batch
or 2 * batch, doc_length]), so one step compiles once.

  params, losses = tune(embedder, pairs, EncoderTuning(steps=150))
"""

import dataclasses
import logging
import math
import time
from typing import Any, Callable, Sequence

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
    hard_negatives: each pair also brings its query's best BM25 document
      that is not relevant (mined by the caller, gr/experiments/
      tuned_encoder.py), so the loss separates the documents that a
      lexical match confuses, which is what a fusion with BM25 needs.
    max_passes: at most this many passes over the pairs (0: no bound), so
      a corpus with few training queries is not fitted over and over.
    trainable_layers: tune only the top this many transformer layers (0:
      every layer and the embeddings). The layers below run forward only,
      so a step costs less (no backward pass through them) and the
      pretrained lower layers stay as they are.
    seed: pair order and pseudo-query choice.
  """

  steps: int = 150
  batch_size: int = 32
  learning_rate: float = 2e-5
  warmup_fraction: float = 0.1
  temperature: float = 0.05
  query_length: int = 64
  lead_pseudo_queries: bool = False
  hard_negatives: bool = False
  max_passes: float = 0.0
  trainable_layers: int = 0
  seed: int = 0

  def steps_for(self, pairs: int) -> int:
    """The steps to run over `pairs` pairs: `steps`, cut to `max_passes`
    passes over them (rounded up) when max_passes > 0."""
    if self.max_passes <= 0:
      return self.steps
    return min(self.steps, math.ceil(self.max_passes * pairs / self.batch_size))


def in_batch_loss(
  queries: jax.Array,
  docs: jax.Array,
  temperature: float,
  allowed: jax.Array | None = None,
) -> jax.Array:
  """Mean softmax cross-entropy of each query's own doc among the batch's.

  queries [B, d], docs [C, d] unit vectors, C >= B: query i's positive is
  doc i; docs B.. are extra negatives (hard ones). Scores are cos /
  temperature. allowed [B, C] bool masks out columns that must not count
  as negatives (another copy of query i's own body); None allows all.
  """
  logits = queries @ docs.T / temperature
  if allowed is not None:
    logits = jnp.where(allowed, logits, -1e9)
  rows = jnp.arange(queries.shape[0])
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[rows, rows])


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


def _frozen_layers(config: bert.BertConfig, tuning: EncoderTuning) -> int:
  """How many layers (from the bottom, embeddings included) stay frozen."""
  if tuning.trainable_layers <= 0:
    return 0
  return max(0, config.num_layers - tuning.trainable_layers)


def _optimizer(
  config: bert.BertConfig, tuning: EncoderTuning, params
) -> optax.GradientTransformation:
  """AdamW (weight decay 0.01) on the tuned parameters; frozen ones (the
  embeddings and the layers below the top `trainable_layers`) get no
  update at all, weight decay included."""
  adamw = optax.adamw(_schedule(tuning), weight_decay=0.01)
  frozen = _frozen_layers(config, tuning)
  if frozen == 0:
    return adamw
  tuned = {f"layer_{i}" for i in range(frozen, config.num_layers)}
  labels = {k: jax.tree.map(lambda _, k=k: "tuned" if k in tuned else
    "frozen", v) for k, v in params.items()}  # fmt: skip
  return optax.multi_transform(
    {"tuned": adamw, "frozen": optax.set_to_zero()}, labels
  )


def _step_fn(config: bert.BertConfig, tuning: EncoderTuning, optimizer):
  """The jitted train step: (params, opt_state, batch) -> (params,
  opt_state, loss); batch has q_ids, q_mask [B, Lq], d_ids, d_mask [C, Ld]
  and allowed [B, C] (see `in_batch_loss`)."""
  encoder = bert.BertEncoder(config)
  frozen = _frozen_layers(config, tuning)

  def encode(params, ids, mask):
    hidden = ids
    if frozen:
      hidden = jax.lax.stop_gradient(
        encoder.apply({"params": params}, ids, mask, stop_layer=frozen)
      )
    hidden = encoder.apply({"params": params}, hidden, mask, start_layer=frozen)
    return bert.mean_pool_normalise(hidden, mask)

  def loss_fn(params, batch):
    return in_batch_loss(
      encode(params, batch["q_ids"], batch["q_mask"]),
      encode(params, batch["d_ids"], batch["d_mask"]),
      tuning.temperature,
      batch["allowed"],
    )

  @jax.jit
  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
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
  negatives: Sequence[str] | None = None,
  on_step: Callable[[int, Any], None] | None = None,
) -> tuple[Any, list[float]]:
  """Trains embedder's encoder on (query, body) pairs.

  negatives[i], when given, is a hard negative body of pair i (a BM25 top
  document that is not relevant): each batch then scores its B queries
  against its B bodies and their B negatives. on_step(step, params), when
  given, is called after every step (1-based), e.g. to trace a learning
  curve. Returns (params, the loss of every step). The pairs are shuffled
  once by tuning.seed and walked in order, wrapping around; a batch never
  holds a positive body twice, and a copy of a query's own body among the
  negatives is masked out.
  """
  if negatives is not None and len(negatives) != len(pairs):
    raise ValueError(f"{len(negatives)} negatives for {len(pairs)} pairs")
  tuning = dataclasses.replace(tuning, steps=tuning.steps_for(len(pairs)))
  params = embedder.params
  optimizer = _optimizer(embedder.config, tuning, params)
  opt_state = optimizer.init(params)
  step = _step_fn(embedder.config, tuning, optimizer)
  batches = _batches(pairs, tuning)
  losses, started = [], time.time()
  for i in range(tuning.steps):
    rows = next(batches)
    batch = _batch(embedder, tuning, pairs, negatives, rows)
    params, opt_state, loss = step(params, opt_state, batch)
    losses.append(float(loss))
    if on_step is not None:
      on_step(i + 1, params)
    if (i + 1) % 25 == 0 or i + 1 == tuning.steps:
      logging.info(
        "encoder tuning step %d/%d: loss %.4f (%.1f s)",
        i + 1, tuning.steps, np.mean(losses[-25:]), time.time() - started)  # fmt: skip
  return params, losses


def _batch(embedder, tuning, pairs, negatives, rows) -> dict[str, np.ndarray]:
  """The step's arrays for the pairs at `rows` (see `_step_fn`)."""
  queries = [pairs[r][0] for r in rows]
  bodies = [pairs[r][1] for r in rows]
  if negatives is not None:
    bodies += [negatives[r] for r in rows]
  q_ids, q_mask = _tokens(embedder, queries, tuning.query_length)
  d_ids, d_mask = _tokens(embedder, bodies, embedder.max_length)
  own = np.array(bodies[: len(rows)])[:, None]  # [B, 1]
  allowed = (own != np.array(bodies)[None, :]) | np.eye(
    len(rows), len(bodies), dtype=bool
  )  # [B, C]
  return dict(q_ids=q_ids, q_mask=q_mask, d_ids=d_ids, d_mask=d_mask,
    allowed=allowed)  # fmt: skip


def _batches(pairs: Sequence[tuple[str, str]], tuning: EncoderTuning):
  """Endless batches (lists of batch_size pair indices with distinct
  bodies), in a seeded order that wraps around the pairs."""
  order = np.random.default_rng(tuning.seed).permutation(len(pairs))
  position = 0
  while True:
    rows, seen = [], set()
    for _ in range(len(pairs)):
      row = int(order[position % len(order)])
      position += 1
      if pairs[row][1] in seen:
        continue
      seen.add(pairs[row][1])
      rows.append(row)
      if len(rows) == tuning.batch_size:
        break
    if len(rows) < tuning.batch_size:
      raise ValueError(
        f"encoder tuning: batch_size {tuning.batch_size} but only "
        f"{len(rows)} distinct bodies in the pairs"
      )
    yield rows
