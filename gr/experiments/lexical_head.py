"""Training the lexical plan's term-weight head on top of a frozen model.

The plan scores a docid log-prob + beta * sum over the query's tokens of
w(token) * impact(token's term, document), where w = exp(state . kernel +
bias) is `lexical_lib.TermWeightHead` over the token's encoder state. At
its zero start every w is 1 (BM25 over the term sets). The head is shared
by every query and document, so what it learns on the train queries
applies to documents that have none (per-document rows never train here).

With `expansion_terms` > 0 the head also has an `Expansion`
(lexical_lib): weights for the query's `expansion_terms` heaviest terms it
does not contain, from its encoder states against the encoder's own
word-piece embeddings, behind a gate that starts at 0 (so step 0 is
unchanged).

Training is listwise (gr/experiments/rerank_sets.py builds the sets): for
each train query, its candidates are the documents the step-0 search
ranks first (the hard negatives) plus its relevant ones; the loss is the
softmax cross-entropy of the relevant documents among them under the
fused score, with the model's log-probs fixed and an L2 pull of the
kernel to 0 and of the expansion's projection to the identity (the
start), over minibatches of `batch_size` queries. Every `eval_every`
steps the dev queries are reranked the same way (their candidates, the
relevant ones only where the search found them) and the step with the
best dev MRR@10 wins (ties: the earlier step, so step 0 stays when
nothing helps). Never the eval split.

Shapes: Q queries, Li query tokens, K candidates per query, X added
terms, E encoder width, V the vocabulary's pieces.
"""

import dataclasses
import logging
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr.experiments import dev_selection
from gr.experiments import rerank_sets
from gr.model import lexical as lexical_lib
from gr.search import retrieval
from gr.train import encoder_tuning

RerankSet = rerank_sets.RerankSet


@dataclasses.dataclass(frozen=True)
class HeadTraining:
  """How the head trains: Adam at `learning_rate` for `steps` steps of
  `batch_size` queries (a fixed shuffle, seed 0), L2 `l2` on the kernel
  and on the expansion's projection minus the identity, dev checked every
  `eval_every` steps; at most `max_queries` judged queries of each split (a
  fixed sample), so a corpus with many queries costs a bounded search.
  expansion_terms: terms the expansion adds per query (0: no expansion).
  lead_queries: also train on one lead-sentence pseudo-query per document
  (`lead_queries`), which covers the documents no train query judges."""

  steps: int = 300
  learning_rate: float = 3e-3
  l2: float = 1e-2
  eval_every: int = 25
  max_queries: int = 5000
  batch_size: int = 64
  expansion_terms: int = 0
  lead_queries: bool = False


def lexical_scores(head, rerank, space=None) -> jax.Array:
  """[Q, K] each candidate's head-weighted lexical score: its query
  tokens' weights times their terms' impacts, plus, with an expansion
  (which needs the `TermSpace` space), its added terms' weights times
  their impacts in the candidate."""
  weights = head.token_weights(rerank.states) * (rerank.terms > 0)
  scores = jnp.einsum("ql,qlk->qk", weights, rerank.contributions)
  if head.expansion is None:
    return scores
  added, values = head.expansion.select(
    rerank.states, rerank.tokens > 0, rerank.terms, space
  )  # [Q, X]
  impacts = space.impacts(rerank.documents, added)  # [Q, X, K]
  return scores + jnp.einsum("qx,qxk->qk", values, impacts)


def fused_scores(head, rerank, weight: float, space=None) -> jax.Array:
  """[Q, K] model + weight * the head-weighted lexical score."""
  return rerank.model + weight * lexical_scores(head, rerank, space)


def penalty(head) -> jax.Array:
  """The squared distance of the head from its start (kernel 0,
  projection identity)."""
  out = jnp.sum(head.kernel**2)
  if head.expansion is not None:
    projection = head.expansion.projection
    out += jnp.sum((projection - jnp.eye(projection.shape[0])) ** 2)
  return out


def listwise_loss(head, rerank, weight: float, l2: float, space=None):
  """Mean over queries with a relevant candidate of -log P(relevant),
  plus l2 * `penalty`."""
  scores = fused_scores(head, rerank, weight, space)
  log_p = jax.nn.log_softmax(scores, axis=1)
  relevant_log_p = jax.nn.logsumexp(
    jnp.where(rerank.relevant, log_p, -jnp.inf), axis=1
  )
  has = rerank.relevant.any(axis=1)
  loss = -jnp.sum(jnp.where(has, relevant_log_p, 0.0)) / jnp.maximum(
    has.sum(), 1
  )
  return loss + l2 * penalty(head)


@jax.jit
def _fused_batch(head, rerank, weight, space):
  return fused_scores(head, rerank, weight, space)


def rerank_mrr(
  head, rerank, weight: float, space=None, batch_size: int = 128
) -> float:
  """Mean MRR@10 of the candidates reranked by the fused score (0 for
  queries none of whose relevant documents is a candidate), scored in
  batches of each length group (`rerank_sets.length_groups`), one shape
  per group."""
  scores = np.zeros(rerank.model.shape, np.float32)
  for length, rows in rerank_sets.length_groups(rerank):
    size = min(batch_size, len(rows))
    for start in range(0, len(rows), size):
      picked = rows[np.arange(start, start + size) % len(rows)]
      batch = rerank_sets.cut(rerank, picked, length)
      scores[picked] = np.asarray(_fused_batch(head, batch, weight, space))
  best = np.where(rerank.relevant, scores, -np.inf).max(axis=1)  # [Q]
  rank = (scores > best[:, None]).sum(axis=1)
  found = np.isfinite(best) & (rank < 10)
  return float(np.mean(np.where(found, 1.0 / (rank + 1), 0.0)))


def train_head(
  train: RerankSet,
  dev: RerankSet,
  weight: float,
  config: HeadTraining,
  record: Optional[RerankSet] = None,
  start: Optional[lexical_lib.TermWeightHead] = None,
  space: Optional[rerank_sets.TermSpace] = None,
) -> tuple[lexical_lib.TermWeightHead, list[dict]]:
  """The head of the best dev step, and the curve [{"step", "dev
  MRR@10", "train loss"}] (step 0 = `start`, default the zero head, no
  expansion); with `record` (the eval split's set), each point also has
  its "eval MRR@10", for the record only (never chosen on). A head with an
  expansion needs the `TermSpace` space."""
  head = start or lexical_lib.TermWeightHead.zeros(train.states.shape[-1])
  optimizer = optax.adam(config.learning_rate)
  state = optimizer.init(head)
  batches = _batches(rerank_sets.length_groups(train), config.batch_size)

  @jax.jit
  def step(head, state, batch):
    loss, grads = jax.value_and_grad(listwise_loss)(
      head, batch, weight, config.l2, space
    )
    updates, state = optimizer.update(grads, state, head)
    head = optax.apply_updates(head, updates)
    if head.expansion is not None:  # the gate stays >= 0
      gate = jnp.maximum(head.expansion.gate, 0.0)
      head = head.replace(expansion=head.expansion.replace(gate=gate))
    return head, state, loss

  def point(step_number, loss):
    out = {
      "step": step_number,
      "dev MRR@10": rerank_mrr(head, dev, weight, space),
      "train loss": float(loss),
    }
    if record is not None:
      out["eval MRR@10"] = rerank_mrr(head, record, weight, space)
    return out

  def next_batch():
    length, rows = next(batches)
    return jax.tree.map(jnp.asarray, rerank_sets.cut(train, rows, length))

  batch = next_batch()
  curve = [point(0, listwise_loss(head, batch, weight, config.l2, space))]
  best, best_head = curve[0]["dev MRR@10"], head
  for number in range(1, config.steps + 1):
    head, state, loss = step(head, state, batch)
    batch = next_batch()
    if number % config.eval_every == 0 or number == config.steps:
      curve.append(point(number, loss))
      logging.info("term-weight head step %d: %s", number, curve[-1])
      if curve[-1]["dev MRR@10"] > best:
        best, best_head = curve[-1]["dev MRR@10"], head
  logging.info("term-weight head: dev MRR@10 by step %s", curve)
  return best_head, curve


def _batches(groups: list[tuple[int, np.ndarray]], batch_size: int):
  """Endless (length, rows [min(batch_size, n)]) over the length groups:
  each step's group drawn in proportion to its size, its rows the next of
  the group's own shuffle, reshuffled each pass (seed 0); one shape per
  group, so one compile each."""
  rng = np.random.default_rng(0)
  sizes = np.array([len(rows) for _, rows in groups], np.float64)
  pending = [np.zeros((0,), np.int64) for _ in groups]
  while True:
    g = int(rng.choice(len(groups), p=sizes / sizes.sum()))
    length, rows = groups[g]
    size = min(batch_size, len(rows))
    if len(pending[g]) < size:
      pending[g] = np.concatenate([pending[g], rng.permutation(rows)])
    yield length, pending[g][:size]
    pending[g] = pending[g][size:]


def starting_head(
  searcher: retrieval.Searcher, config: HeadTraining, width: int
) -> lexical_lib.TermWeightHead:
  """The zero head for the searcher's encoder of `width` (its states'
  last axis), with a zero-gate expansion over its encoder's word-piece
  embeddings when config.expansion_terms."""
  expansion = None
  if config.expansion_terms:
    count = searcher.lexical_index.term_of.shape[0]
    expansion = lexical_lib.Expansion.start(
      piece_vectors(searcher.params, count, width), config.expansion_terms
    )
  return lexical_lib.TermWeightHead.zeros(width, expansion)


def piece_vectors(params, count: int, width: int) -> np.ndarray:
  """[count, width] the encoder's input embeddings of the vocabulary's
  first `count` ids (its word pieces): a BERT encoder's word embeddings,
  else the shared token embedder's."""
  params = params.get("params", params)
  encoder = params.get("encoder", {})
  if "word_embeddings" in encoder:
    table = encoder["word_embeddings"]["embedding"]
  else:
    table = params["token_embedder"]["embedding"]
  table = np.asarray(table, np.float32)
  if table.shape[0] < count or table.shape[1] != width:
    raise ValueError(
      f"the encoder's embeddings {table.shape} cannot give {count} pieces "
      f"of width {width}"
    )
  return table[:count]


def query_splits(selection) -> Optional[dict]:
  """{"train" | "dev" | "eval": {query set name: (queries, qrels)}} of a
  `dev_selection.LexicalSelection`'s folder (eval: its eval split, for the
  record; may be empty), or None when it lacks train or dev queries (then
  no head is trained)."""
  found = {
    key: dev_selection.held_out_queries(
      selection.data_dir, selection.query_sets, split, selection.max_docs
    )
    for key, split in (
      ("train", "train"),
      ("dev", "dev"),
      ("eval", selection.eval_split),
    )
  }
  return found if found["train"] and found["dev"] else None


def lead_queries(selection) -> Optional[tuple[dict, dict]]:
  """({qid: text}, {qid: {doc id: 1}}): one lead sentence per document of
  the selection's corpus as a pseudo-query judged to it
  (encoder_tuning.lead_pseudo_query, seed 0; documents with none are
  skipped), or None without a corpus with train queries. Documents, not
  queries: the dev and test documents are covered, their queries unseen."""
  for _, dataset in dev_selection.query_set_data(
    selection.data_dir, selection.query_sets, "train", selection.max_docs
  ):
    rng = np.random.default_rng(0)
    queries, qrels = {}, {}
    for doc_id, doc in dataset.corpus.items():
      lead = encoder_tuning.lead_pseudo_query(doc.text, rng)
      if lead:
        queries[f"lead:{doc_id}"] = lead
        qrels[f"lead:{doc_id}"] = {doc_id: 1}
    return queries, qrels
  return None


def improve(
  searcher: retrieval.Searcher,
  selection: dev_selection.LexicalSelection,
  config: HeadTraining,
) -> Optional[dict]:
  """Trains the head at the searcher's dev-chosen plan weight and, when a
  step beats step 0 on dev, installs it and chooses the weight again.

  Returns {"curve", "chosen_step", "trained_weight", "selection" (the new
  choice, or None when the zero head stays)}; None where nothing can be
  trained: no train or dev queries, or the plan is off (weight 0).
  """
  splits = query_splits(selection)
  if splits is not None and config.lead_queries:
    leads = lead_queries(selection)
    if leads is not None:
      splits["train"]["lead sentences"] = leads
  weight = searcher.lexical_weight
  if splits is None or weight == 0:
    logging.info("term-weight head: not trained (splits %s, weight %s)",
                 splits and list(splits), weight)  # fmt: skip
    return None
  sets = {
    split: rerank_sets.merged(
      [
        rerank_sets.rerank_set(
          searcher, queries, qrels, add_relevant=split == "train"
        )
        for queries, qrels in rerank_sets.sampled(
          by_name, config.max_queries
        ).values()
      ]
    )
    for split, by_name in splits.items()
    if by_name
  }
  if np.isinf(weight):  # the term sets alone: no model part
    sets = {s: r.replace(model=np.where(np.isfinite(r.model), 0.0, -np.inf))
            for s, r in sets.items()}  # fmt: skip
    weight = 1.0
  start = starting_head(searcher, config, sets["train"].states.shape[-1])
  space = rerank_sets.term_space(searcher) if start.expansion else None
  head, curve = train_head(
    sets["train"], sets["dev"], weight, config, sets.get("eval"), start, space
  )
  best = max(curve, key=lambda p: (p["dev MRR@10"], -p["step"]))
  record = {
    "expansion_terms": config.expansion_terms,
    "curve": curve,
    "chosen_step": best["step"],
    "trained_weight": float(searcher.lexical_weight),
    "selection": None,
  }
  if best["step"] > 0:
    searcher.term_weight_head = head
    record["selection"] = selection.choose(searcher)
  return record
