"""Retrieval with a trained model: queries -> ranked documents.

`Searcher` holds one jitted constrained beam search (compiled once per
batch shape; the trie is an argument, so editing it does not recompile) and
turns query texts into ranked (doc_id, score) lists of distinct documents:
with several docids per document (multi-docids) it decodes enough docids
for top_k documents and merges each document's docids by
`SearchConfig.aggregation`. gr/search/exact.py's `exact_ranking` is the
oracle beam search approximates: every docid scored by teacher forcing,
merged the same way.

Both run on one device, or on a ('data', 'model') mesh (gr/partitioning.py)
with the batch split over 'data' and the params sharded by the logical axis
rules training uses; the results are the same.
"""

import dataclasses
from typing import Mapping, Optional, Sequence

from jax.sharding import Mesh
import numpy as np

import jax
import jax.numpy as jnp

from gr import batching
from gr.decode import aggregate
from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.model import lexical as lexical_lib
from gr.index import artifact as index_lib
from gr.index import lexicon
from gr.decode import model_decoder
from gr.model import models
from gr import partitioning
from gr.partitioning import BATCH, REPLICATED, param_specs
from gr.index import vocab as vocab_lib

Ranking = list[tuple[str, float]]


INPUT_BUCKETS = (16, 32, 64, 128, 256, 512)


def input_lengths(max_length: int) -> tuple[int, ...]:
  """Every length `input_bucket` can give for inputs of max_length: the
  buckets below it, then max_length (what a server compiles)."""
  return (*(b for b in INPUT_BUCKETS if b < max_length), max_length)


def input_bucket(tokens: np.ndarray, max_length: int) -> int:
  """Smallest of `input_lengths(max_length)` covering every row's last
  token."""
  nonzero = np.flatnonzero(np.asarray(tokens).any(axis=0))
  longest = int(nonzero[-1]) + 1 if len(nonzero) else 1
  return next(
    n for n in input_lengths(max_length) if n >= min(longest, max_length)
  )


def cut_to_bucket(tokens: np.ndarray) -> np.ndarray:
  """tokens [B, Li] -> [B, input_bucket]: the padding past the longest row
  that its bucket does not need is not encoded."""
  return tokens[:, : input_bucket(tokens, tokens.shape[1])]


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """How a query is decoded."""

  beam_size: int = 10
  top_k: int = 10
  max_decode_len: int = 16
  length_penalty_alpha: float = 0.0
  aggregation: str = "max"  # multi-docids: "max" or "logsumexp"
  docids_per_doc: int = 1  # most docids of one document (`fit_to_index`)
  # Sparse output layer: below the root, logits only for each beam's trie
  # children ([N, W], not [N, V]), and scores = log-softmax over the allowed
  # tokens (the model's distribution restricted to the trie), not the
  # full-vocabulary log-probs. Off: the exact full normaliser.
  sparse_output: bool = False
  # How a docid scores (gr/model/models.py SCORE_MODES): "log_probs" sums
  # its steps' log-probs; "logits" sums their raw logits, EOS adding 0
  # (RIPOR, for residual-quantisation docids whose rows are codebook
  # vectors). The exact oracle (`exact_ranking`) scores the same way.
  score_mode: str = "log_probs"
  # The lexical plan's look-ahead (gr/decode/plan.py): each trie node's
  # bonus is the best lexical score beneath it. False, the ablation: a
  # docid gains its document's score only when it ends (the model's beams,
  # reranked).
  plan_guidance: bool = True
  # Step 0 once per query, not once per beam: every beam then holds BOS
  # and the same cache (gr/decode/beam_search.py `first_step`); the same
  # scores, with 1 / beams of step 0's decoder work.
  first_step: bool = True


def docids_per_document(index: index_lib.Index) -> int:
  """The most docids any document of `index` has (1 for an empty index)."""
  return max((len(ids) for ids in index.table.docids_of.values()), default=1)


def fit_to_index(config: SearchConfig, index: index_lib.Index) -> SearchConfig:
  """`config` with docids_per_doc set from `index`."""
  return dataclasses.replace(config, docids_per_doc=docids_per_document(index))


def make_search_fn(
  model: models.EncoderDecoderModel,
  config: SearchConfig,
  mesh: Optional[Mesh] = None,
  with_plan: bool = False,
):
  """Jitted (params, encoder_tokens [B, Li], trie_arrays) -> RankedDocuments;
  with_plan: (params, encoder_tokens, trie_arrays, plan).

  plan: a `plan_lib.LexicalPlan` (data: its weight and term sets change
  without recompiling): each docid then scores its log-prob plus
  plan.weight * its document's lexical score, the plan guiding the beams
  by look-ahead bonuses (gr/decode/plan.py).

  documents [B, top_k] are distinct positions in the index's doc_ids (-1 =
  none), each document's docids merged by config.aggregation; scores
  [B, top_k] log-probs; docids [B, top_k, D, L] the docid tokens that found
  each document, best first (D = config.docids_per_doc).

  On a `mesh`, the batch (B a multiple of its 'data' axis) and the results
  are split over 'data', the params as in training, the trie replicated.
  """
  beams, _ = aggregate.document_search_sizes(
    config.beam_size, config.top_k, config.docids_per_doc
  )

  def search(params, encoder_tokens, trie_arrays, plan=None):
    batch = encoder_tokens.shape[0]
    # Encoded once: the decoder cross-attends to it and a plan's
    # term-weight head reads it.
    encoded = model.encode(params, encoder_tokens)  # [B, Li, E]
    decoder = model_decoder.model_decoder(
      model,
      params,
      encoder_tokens,
      rows_per_input=beams,
      cache_rows=batch,  # the search repeats it per beam
      max_decode_len=config.max_decode_len,
      encoded=encoded,
      sparse_output=config.sparse_output,
    )
    return aggregate.constrained_document_search(
      decoder.tokens_to_logits,
      decoder.cache,
      batch,
      trie_arrays,
      beam_size=config.beam_size,
      max_decode_len=config.max_decode_len,
      top_k=config.top_k,
      docids_per_doc=config.docids_per_doc,
      aggregation=config.aggregation,
      length_penalty_alpha=config.length_penalty_alpha,
      sparse_output=config.sparse_output,
      potential=(
        None
        if plan is None
        else plan.potential(trie_arrays, encoder_tokens, encoded)
      ),
      score_mode=config.score_mode,
      first_step=decoder.first_step if config.first_step else None,
    )

  specs = (param_specs(model, mesh), BATCH, REPLICATED)
  if with_plan:
    return partitioning.jit_on_mesh(search, mesh, specs + (REPLICATED,), BATCH)
  return partitioning.jit_on_mesh(
    lambda params, tokens, trie: search(params, tokens, trie),
    mesh,
    specs,
    BATCH,
  )


def make_lexical_search_fn(
  model: models.EncoderDecoderModel, top_k: int, mesh: Optional[Mesh] = None
):
  """Jitted (params, plan, encoder_tokens [B, Li]) -> (documents [B, k],
  scores [B, k]) by the plan's lexical scores alone: the term-set docids
  as a retriever (BM25 over the model's terms; the model's encoder runs
  only for a plan with a term-weight head). k = min(top_k, N); documents
  that share no term with the query are -1, score -inf."""

  def search(params, plan, encoder_tokens):
    states = None
    if plan.head is not None:
      states = model.encode(params, encoder_tokens)  # [B, Li, E]
    scores = plan.document_scores(encoder_tokens, states)  # [B, N]
    top, documents = jax.lax.top_k(scores, min(top_k, scores.shape[1]))
    found = top > 0
    return jnp.where(found, documents, -1), jnp.where(found, top, -jnp.inf)

  specs = (param_specs(model, mesh), REPLICATED, BATCH)
  return partitioning.jit_on_mesh(search, mesh, specs, BATCH)


class Searcher:
  """Batched retrieval over a fixed index with a model and its params: the
  evaluation path (run files, metrics, the exact oracle beside it).

  The difference from gr/serve/retriever.py's `Retriever`: a Searcher never changes
  its index and persists nothing; a Retriever is the served index, loaded
  from a checkpoint, with bucketed batches for traffic and online
  add/delete written to disk. Both run the same jitted search
  (`make_search_fn`).

  The config's docids_per_doc is set from the index (`fit_to_index`). With a
  `mesh`, each batch is split over its 'data' axis (batch_size is rounded up
  to a multiple of it), the params are sharded as in training and the trie
  is replicated; the results are those of one device.
  """

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params,
    index: index_lib.Index,
    config: SearchConfig,
    *,
    input_length: int = 64,
    batch_size: int = 32,
    mesh: Optional[Mesh] = None,
    term_sets: Optional[term_sets_lib.TermSets] = None,
    lexical_weight: float = 0.0,
    term_weight_head: Optional[lexical_lib.TermWeightHead] = None,
  ):
    self.model, self.index, self.mesh = model, index, mesh
    self.params = partitioning.place(params, param_specs(model, mesh), mesh)
    self.config = fit_to_index(config, index)
    self.input_length = input_length
    self.batch_size = batching.data_multiple(batch_size, mesh)
    self.trie = index.build_trie()
    self.refresh_trie()
    self._search = make_search_fn(model, self.config, mesh)
    self._planned_search = make_search_fn(
      model, self.config, mesh, with_plan=True
    )  # compiled on first use
    self._lexical_search = make_lexical_search_fn(
      model, self.config.top_k, mesh
    )
    self.term_sets = term_sets
    self._term_weight_head = term_weight_head
    self._plan_of_index = None
    self.lexical_weight = lexical_weight

  @property
  def term_weight_head(self) -> Optional[lexical_lib.TermWeightHead]:
    """The plan's query-token weights (None: 1 each, BM25's factor)."""
    return self._term_weight_head

  @term_weight_head.setter
  def term_weight_head(self, head) -> None:
    self._term_weight_head = head
    self._plan_of_index = None  # rebuilt with the head
    self.lexical_weight = self.lexical_weight

  @property
  def lexical_weight(self) -> float:
    """The plan's weight beta: 0 = the model alone, inf = the term sets
    alone (no model), else log-prob + beta * lexical score per docid."""
    return self._lexical_weight

  @lexical_weight.setter
  def lexical_weight(self, weight: float) -> None:
    if weight < 0 or weight != weight:
      raise ValueError(f"lexical_weight must be >= 0, got {weight}")
    if weight > 0 and self.term_sets is None:
      raise ValueError("lexical_weight > 0 needs the index's term sets")
    self._lexical_weight = float(weight)
    self.plan = None
    if weight > 0:
      base = self._base_plan()
      self.plan = base.replace(
        weight=jnp.asarray(1.0 if np.isinf(weight) else weight, jnp.float32)
      )

  @property
  def lexical_index(self) -> lexical_lib.LexicalIndex:
    """The device form of the index's term sets (needs them)."""
    return self._base_plan().lexical

  def _base_plan(self) -> plan_lib.LexicalPlan:
    """The plan of the index's term sets and docids, weight 1 (built
    once)."""
    if self._plan_of_index is not None:
      return self._plan_of_index
    if len(self.term_sets) != len(self.index.doc_ids):
      raise ValueError(
        f"term sets of {len(self.term_sets)} documents for an index of "
        f"{len(self.index.doc_ids)}"
      )
    sequences, documents = self.index.docid_sequences()
    lexical = lexical_lib.lexical_index(
      self.term_sets, lexicon.folding(self.index.vocab, self.term_sets)
    )
    plan = plan_lib.lexical_plan(
      lexical,
      sequences,
      documents,
      1.0,
      self.term_weight_head,
      guided=self.config.plan_guidance,
    )
    self._plan_of_index = partitioning.place(plan, REPLICATED, self.mesh)
    return self._plan_of_index

  def repoint(
    self,
    params,
    index: index_lib.Index,
    term_sets: Optional[term_sets_lib.TermSets] = None,
  ) -> None:
    """The same compiled searches over other params and another index of
    the same model config (a continual version): the trie is built again,
    and the plan over `term_sets` at the current weight (None: no plan,
    weight 0)."""
    self.params = partitioning.place(
      params, param_specs(self.model, self.mesh), self.mesh
    )
    self.index = index
    self.trie = index.build_trie()
    self.refresh_trie()
    self.term_sets = term_sets
    self._plan_of_index = None
    self.lexical_weight = self.lexical_weight if term_sets else 0.0

  def refresh_trie(self) -> None:
    """Re-uploads the trie after host-side inserts/deletes (same shapes)."""
    self.trie_arrays = partitioning.place(
      self.trie.to_device(), REPLICATED, self.mesh
    )

  def search_tokens(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[n, Li] -> (docs [n, top_k], scores [n, top_k]), fixed batch shape.

    Each batch is cut to the smallest length bucket that holds its longest
    query (one compile per bucket), so short queries skip the padding.
    """
    docs, scores = [], []
    for start in range(0, len(tokens), self.batch_size):
      chunk = tokens[start : start + self.batch_size]
      padded = batching.pad_rows(cut_to_bucket(chunk), self.batch_size)
      found_docs, found_scores = self._search_batch(padded)
      docs.append(np.asarray(found_docs)[: len(chunk)])
      scores.append(np.asarray(found_scores)[: len(chunk)])
    return np.concatenate(docs), np.concatenate(scores)

  def _search_batch(self, tokens: np.ndarray):
    """[batch_size, Li] -> (documents, scores) [batch_size, top_k]."""
    if self.plan is not None and np.isinf(self.lexical_weight):
      return self._lexical_search(self.params, self.plan, tokens)
    if self.plan is None:
      found = self._search(self.params, tokens, self.trie_arrays)
    else:
      found = self._planned_search(
        self.params, tokens, self.trie_arrays, self.plan
      )
    return found.documents, found.scores

  def search(self, texts: Sequence[str]) -> list[Ranking]:
    """Query texts -> per query a ranked list of (doc_id, score): the
    log-prob, plus the weighted lexical score with a plan."""
    if not texts:
      return []
    tokens = vocab_lib.encode_texts(self.index.vocab, texts, self.input_length)
    docs, scores = self.search_tokens(tokens)
    doc_ids = self.index.doc_ids
    return [
      [(doc_ids[d], float(s)) for d, s in zip(row_d, row_s) if d >= 0]
      for row_d, row_s in zip(docs, scores)
    ]

  def run(self, queries: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """A TREC-style run {qid: {doc_id: score}} for `queries`."""
    qids = list(queries)
    rankings = self.search([queries[q] for q in qids])
    return {qid: dict(ranking) for qid, ranking in zip(qids, rankings)}


def make_score_fn(
  model: models.EncoderDecoderModel,
  mesh: Optional[Mesh] = None,
  score_mode: str = "log_probs",
  per_step: bool = False,
):
  """Jitted (params, query [Li], targets [n, L]) -> log-prob [n] (summed
  raw logits with score_mode "logits", as `SearchConfig.score_mode`);
  per_step: each step's [n, L], unsummed.

  On a `mesh`, the targets (n a multiple of its 'data' axis) and scores are
  split over 'data', the params as in training, the query replicated.
  """

  def score(params, query_tokens, targets):
    # The query is encoded, and its cross-attention keys and values are
    # projected, once for all [n] targets (gr/model/layers.py MultiHeadAttention).
    encoded = model.encode(params, query_tokens[None])  # [1, Li, width]
    scores = model.step_scores(
      params, encoded, query_tokens[None], targets, score_mode
    )  # [n, L]
    return scores if per_step else scores.sum(axis=-1)

  return partitioning.jit_on_mesh(
    score, mesh, (param_specs(model, mesh), REPLICATED, BATCH), BATCH
  )


def retrieval_config(search: SearchConfig, target_length: int) -> SearchConfig:
  """`search` with max_decode_len at least the longest docid."""
  return dataclasses.replace(
    search, max_decode_len=max(search.max_decode_len, target_length)
  )
