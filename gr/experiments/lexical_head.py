"""Training the lexical plan's term-weight head on top of a frozen model.

The plan scores a docid log-prob + beta * sum over the query's tokens of
w(token) * impact(token's term, document), where w = exp(state . kernel +
bias) is `lexical_lib.TermWeightHead` over the token's encoder state. At
its zero start every w is 1 (BM25 over the term sets). The head is shared
by every query and document, so what it learns on the train queries
applies to documents that have none (per-document rows never train here).

Training is listwise: for each train query, its candidates are the
documents the step-0 search ranks first (the hard negatives) plus its
relevant ones; the loss is the softmax cross-entropy of the relevant
documents among them under the fused score, with the model's log-probs
fixed and an L2 pull of the kernel to 0 (the start). Every `eval_every`
steps the dev queries are reranked the same way (their candidates, the
relevant ones only where the search found them) and the step with the
best dev MRR@10 wins (ties: the earlier step, so step 0 stays when
nothing helps). Never the eval split.

Shapes: Q queries, K candidates per query, T query tokens that have a
term (over all queries), E encoder width.
"""

import dataclasses
import logging
from typing import Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr import batching
from gr.experiments import dev_selection
from gr.index import lexicon
from gr.index import vocab as vocab_lib
from gr.model import lexical as lexical_lib
from gr.search import retrieval


@dataclasses.dataclass(frozen=True)
class HeadTraining:
  """How the head trains: Adam at `learning_rate` for `steps` full-batch
  steps, L2 `l2` on the kernel, dev checked every `eval_every` steps; at
  most `max_queries` judged queries of each split (a fixed sample), so a
  corpus with many queries costs a bounded search."""

  steps: int = 300
  learning_rate: float = 3e-3
  l2: float = 1e-2
  eval_every: int = 25
  max_queries: int = 5000


@flax.struct.dataclass
class RerankSet:
  """Queries with their candidates, ready for the head.

  states [T, E] float32 and query [T] int32: each term-bearing query
  token's encoder state and its query; contributions [T, K] the impact of
  the token's term in each candidate; model [Q, K] each candidate's model
  score (-inf: padding); relevant [Q, K] bool.
  """

  states: np.ndarray
  query: np.ndarray
  contributions: np.ndarray
  model: np.ndarray
  relevant: np.ndarray


def fused_scores(head, rerank, weight: float) -> jax.Array:
  """[Q, K] model + weight * the head-weighted lexical score."""
  token_weights = head.token_weights(rerank.states[None])[0]  # [T]
  lexical = jax.ops.segment_sum(
    token_weights[:, None] * rerank.contributions,
    rerank.query,
    num_segments=rerank.model.shape[0],
  )  # [Q, K]
  return rerank.model + weight * lexical


def listwise_loss(head, rerank, weight: float, l2: float) -> jax.Array:
  """Mean over queries with a relevant candidate of -log P(relevant)."""
  scores = fused_scores(head, rerank, weight)
  log_p = jax.nn.log_softmax(scores, axis=1)
  relevant_log_p = jax.nn.logsumexp(
    jnp.where(rerank.relevant, log_p, -jnp.inf), axis=1
  )
  has = rerank.relevant.any(axis=1)
  loss = -jnp.sum(jnp.where(has, relevant_log_p, 0.0)) / jnp.maximum(
    has.sum(), 1
  )
  return loss + l2 * jnp.sum(head.kernel**2)


def rerank_mrr(head, rerank, weight: float) -> float:
  """Mean MRR@10 of the candidates reranked by the fused score (0 for
  queries none of whose relevant documents is a candidate)."""
  scores = np.asarray(fused_scores(head, rerank, weight))
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
) -> tuple[lexical_lib.TermWeightHead, list[dict]]:
  """The head of the best dev step, and the curve [{"step", "dev
  MRR@10", "train loss"}] (step 0 = the zero head); with `record` (the
  eval split's set), each point also has its "eval MRR@10", for the record
  only (never chosen on)."""
  head = lexical_lib.TermWeightHead.zeros(train.states.shape[1])
  train_set = jax.tree.map(jnp.asarray, train)
  optimizer = optax.adam(config.learning_rate)
  state = optimizer.init(head)

  @jax.jit
  def step(head, state, train_set):
    loss, grads = jax.value_and_grad(listwise_loss)(
      head, train_set, weight, config.l2
    )
    updates, state = optimizer.update(grads, state, head)
    return optax.apply_updates(head, updates), state, loss

  def point(step_number, loss):
    out = {
      "step": step_number,
      "dev MRR@10": rerank_mrr(head, dev, weight),
      "train loss": float(loss),
    }
    if record is not None:
      out["eval MRR@10"] = rerank_mrr(head, record, weight)
    return out

  curve = [point(0, listwise_loss(head, train_set, weight, config.l2))]
  best, best_head = curve[0]["dev MRR@10"], head
  for number in range(1, config.steps + 1):
    head, state, loss = step(head, state, train_set)
    if number % config.eval_every == 0 or number == config.steps:
      curve.append(point(number, loss))
      if curve[-1]["dev MRR@10"] > best:
        best, best_head = curve[-1]["dev MRR@10"], head
  logging.info("term-weight head: dev MRR@10 by step %s", curve)
  return best_head, curve


def rerank_set(
  searcher: retrieval.Searcher,
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
  *,
  add_relevant: bool,
) -> RerankSet:
  """The searcher's candidates for the judged `queries` (plus their
  relevant documents where add_relevant: training), with the model's
  score of each (the searcher's zero-head plan removed) and the lexical
  contributions of each query token."""
  qids = [q for q in qrels if q in queries]
  vocab = searcher.index.vocab
  tokens = vocab_lib.encode_texts(
    vocab, [queries[q] for q in qids], searcher.input_length
  )
  found, _ = searcher.search_tokens(tokens)  # [Q, k] positions
  position = {d: i for i, d in enumerate(searcher.index.doc_ids)}
  candidates = []
  for qid, row in zip(qids, found):
    docs = [int(d) for d in row if d >= 0]
    relevant = {position[d] for d, r in qrels[qid].items() if r > 0}
    if add_relevant:
      docs += sorted(relevant - set(docs))
    candidates.append((docs, relevant))
  model = _model_scores(searcher, tokens, [c for c, _ in candidates])
  return _assembled(searcher, tokens, candidates, model)


def _model_scores(searcher, tokens, candidates) -> np.ndarray:
  """[Q, K] each candidate's best docid score by the model alone
  (teacher-forced, as the exact oracle scores), -inf padding."""
  width = max(len(c) for c in candidates)
  scores = np.full((len(candidates), width), -np.inf, np.float32)
  score = retrieval.make_score_fn(
    searcher.model, searcher.mesh, searcher.config.score_mode
  )
  sequences, documents = searcher.index.docid_sequences()
  rows_of = {}
  for row, document in enumerate(documents):
    rows_of.setdefault(int(document), []).append(row)
  targets = batching.pad_sequences(sequences)
  rows_per_query = width * max(map(len, rows_of.values()))  # one shape
  for q, (query, docs) in enumerate(zip(tokens, candidates)):
    # Cut to its length bucket: the padding's encoder work is most of it.
    query = retrieval.cut_to_bucket(query[None])[0]
    rows = [r for d in docs for r in rows_of[d]]
    padded = np.zeros((rows_per_query,), np.int64)
    padded[: len(rows)] = rows
    values = np.asarray(score(searcher.params, query, targets[padded]))
    start = 0
    for k, d in enumerate(docs):
      count = len(rows_of[d])
      scores[q, k] = values[start : start + count].max()
      start += count
  return scores


def _assembled(searcher, tokens, candidates, model) -> RerankSet:
  """The `RerankSet` of candidates [(docs, relevant positions)] per query
  and their model scores [Q, K]."""
  term_sets = searcher.term_sets
  folding = lexicon.folding(searcher.index.vocab, term_sets)
  terms = folding.terms(tokens)  # [Q, Li]
  encoded = _encoded(searcher, tokens)
  query, contributions = [], []
  relevant = np.zeros(model.shape, bool)
  for q, (docs, positives) in enumerate(candidates):
    relevant[q, : len(docs)] = [d in positives for d in docs]
    at = np.flatnonzero(terms[q])
    query += [q] * len(at)
    match = term_sets.terms[docs][None] == terms[q, at][:, None, None]
    padded = np.zeros((len(at), model.shape[1]), np.float32)
    padded[:, : len(docs)] = (match * term_sets.impacts[docs][None]).sum(2)
    contributions.append(padded)  # [t, K]
  rows, positions = np.nonzero(terms)
  return RerankSet(
    states=np.stack([encoded[r][p] for r, p in zip(rows, positions)])
    if len(rows)
    else np.zeros((0, encoded[0].shape[-1]), np.float32),
    query=np.asarray(query, np.int32),
    contributions=np.concatenate(contributions),
    model=model,
    relevant=relevant,
  )


def _encoded(searcher, tokens, batch_size: int = 64) -> list[np.ndarray]:
  """Each query's encoder states [Li_bucket, E], in batches cut to their
  length bucket (one compile per bucket)."""
  encode = jax.jit(searcher.model.encode)
  out = []
  for start in range(0, len(tokens), batch_size):
    chunk = tokens[start : start + batch_size]
    padded = batching.pad_rows(retrieval.cut_to_bucket(chunk), batch_size)
    states = np.asarray(encode(searcher.params, padded), np.float32)
    out.extend(states[: len(chunk)])
  return out


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
  weight = searcher.lexical_weight
  if splits is None or weight == 0:
    logging.info("term-weight head: not trained (splits %s, weight %s)",
                 splits and list(splits), weight)  # fmt: skip
    return None
  sets = {
    split: _merged(
      [
        rerank_set(searcher, queries, qrels, add_relevant=split == "train")
        for queries, qrels in _sampled(by_name, config.max_queries).values()
      ]
    )
    for split, by_name in splits.items()
    if by_name
  }
  if np.isinf(weight):  # the term sets alone: no model part
    sets = {s: r.replace(model=np.where(np.isfinite(r.model), 0.0, -np.inf))
            for s, r in sets.items()}  # fmt: skip
    weight = 1.0
  head, curve = train_head(
    sets["train"], sets["dev"], weight, config, sets.get("eval")
  )
  best = max(curve, key=lambda p: (p["dev MRR@10"], -p["step"]))
  record = {
    "curve": curve,
    "chosen_step": best["step"],
    "trained_weight": float(searcher.lexical_weight),
    "selection": None,
  }
  if best["step"] > 0:
    searcher.term_weight_head = head
    record["selection"] = selection.choose(searcher)
  return record


def _sampled(by_name: dict, max_queries: int) -> dict:
  """{name: (queries, qrels)} with at most `max_queries` judged queries in
  all, the same share of each query set, a fixed sample (seed 0)."""
  total = sum(len(qrels) for _, qrels in by_name.values())
  if total <= max_queries:
    return by_name
  rng = np.random.default_rng(0)
  out = {}
  for name, (queries, qrels) in by_name.items():
    keep = max(1, len(qrels) * max_queries // total)
    qids = sorted(qrels)
    chosen = rng.choice(len(qids), size=min(keep, len(qids)), replace=False)
    out[name] = (queries, {qids[i]: qrels[qids[i]] for i in sorted(chosen)})
  return out


def _merged(sets: list[RerankSet]) -> RerankSet:
  """One `RerankSet` of several (query sets), candidates padded to the
  widest."""
  width = max(r.model.shape[1] for r in sets)

  def wide(array, fill):
    pad = [(0, 0), (0, width - array.shape[1])]
    return np.pad(array, pad, constant_values=fill)

  offsets = np.cumsum([0] + [r.model.shape[0] for r in sets[:-1]])
  return RerankSet(
    states=np.concatenate([r.states for r in sets]),
    query=np.concatenate([r.query + o for r, o in zip(sets, offsets)]),
    contributions=np.concatenate([wide(r.contributions, 0.0) for r in sets]),
    model=np.concatenate([wide(r.model, -np.inf) for r in sets]),
    relevant=np.concatenate([wide(r.relevant, False) for r in sets]),
  )
