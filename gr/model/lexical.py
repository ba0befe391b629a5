"""The model's lexical plan: a weight for every vocabulary term of a query,
and each document's score as the weighted sum over its term set.

Query side: weight[v] = the summed weights of the query's tokens whose
term is v (gr/index/lexicon.py folds tokens to terms: stems, no stopwords
or specials, optionally a word of several pieces as one term). Each
token's weight comes from the model's `TermWeightHead` over its encoder
state, exp(state . kernel + bias), and is 1 without a
head or at the head's zero start: then weight[v] = occurrences of v, BM25's
query-side factor (the document side carries idf, gr/docids/term_sets.py),
and the plan is BM25 over each document's term set. The head is trained
on top of a frozen model (gr/experiments/lexical_head.py). The head's
optional `Expansion` (SPLADE's max pooling, PAG's "simultaneous" pass)
adds the query's `width` heaviest terms it does not contain, each
weighing gate * max over positions log(1 + relu(logit)); its gate starts
at 0, so an untrained expansion adds nothing.

  score[b, d] = sum_j weight[b, term_j] * impact_j over entries j of d

Document side, in two segments, as a search engine keeps a main index and
a small delta:
- `Postings` (the main segment): the entries grouped by term (an inverted
  index, CSR). A query touches only its own terms' postings: B x Li x W
  gathers (W = the longest list, at most N), not B x P (P = the sum of the
  set sizes).
- flat entries terms / impacts / documents [P'] (the delta): written in
  place by online adds (gr/serve/served_plan.py), B x P' gathers. Empty
  for a fixed index.

Everything here runs inside the jitted search and loss (no host step).
"""

import io
import os
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gr import atomic_io
from gr.index import word_terms


@flax.struct.dataclass
class Postings:
  """Term sets as an inverted index (CSR by term).

  start [T + 1] int32: term t's postings are rows start[t]:start[t + 1] of
  documents [Pp] int32 and impacts [Pp] float32 (rows past start[T] are
  padding); width (static): the longest list a query gathers, at least
  every term's document frequency.
  """

  start: jax.Array
  documents: jax.Array
  impacts: jax.Array
  width: int = flax.struct.field(pytree_node=False, default=1)


def postings(
  terms: np.ndarray,
  impacts: np.ndarray,
  documents: np.ndarray,
  num_terms: int,
  capacity: int = 0,
  width: int = 0,
) -> tuple[Postings, np.ndarray]:
  """Entries [P] (any order) -> (their `Postings`, [P] the row of each).

  capacity: rows at least (padding after the entries); width: at least
  (default: the longest list, rounded up to a power of two so that small
  changes of the corpus keep the shape).
  """
  terms = np.asarray(terms, np.int64)
  if len(terms) and not 0 <= terms.min() <= terms.max() < num_terms:
    raise ValueError(f"entry terms outside [0, {num_terms})")
  order = np.argsort(terms, kind="stable")
  counts = np.bincount(terms, minlength=num_terms)[:num_terms]
  start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
  rows = max(len(terms), capacity, 1)
  sorted_documents = np.zeros(rows, np.int32)
  sorted_impacts = np.zeros(rows, np.float32)
  sorted_documents[: len(terms)] = np.asarray(documents)[order]
  sorted_impacts[: len(terms)] = np.asarray(impacts)[order]
  longest = int(counts.max()) if len(counts) else 1
  width = max(width, 1 << max(longest - 1, 0).bit_length())
  row_of = np.empty(len(terms), np.int64)
  row_of[order] = np.arange(len(terms))
  return Postings(
    jnp.asarray(start),
    jnp.asarray(sorted_documents),
    jnp.asarray(sorted_impacts),
    width=width,
  ), row_of


def empty_entries() -> dict:
  """The flat delta of a `LexicalIndex` that has none."""
  return {
    "terms": jnp.zeros((0,), jnp.int32),
    "impacts": jnp.zeros((0,), jnp.float32),
    "documents": jnp.zeros((0,), jnp.int32),
  }


@flax.struct.dataclass
class LexicalIndex:
  """Device form of the term sets.

  main: the `Postings` of most documents; terms [P'] int32, impacts [P']
  float32, documents [P'] int32: the flat delta (the row of each entry in
  the index's document order; may be empty); the folding of query tokens
  to terms (gr/index/lexicon.TermFolding): term_of [V] int32 (each piece's
  term, 0 for ids that are no term: PAD, [CLS], [SEP], stopwords; ids past
  V, docid tokens, are none), continuation [V] bool, word_codes [W] uint32
  and word_terms [W] int32 (words of several pieces as one term), with
  word_buckets for words not in the table; num_terms: the term id space.
  """

  main: Postings
  terms: jax.Array
  impacts: jax.Array
  documents: jax.Array
  term_of: jax.Array
  continuation: jax.Array
  word_codes: jax.Array
  word_terms: jax.Array
  num_documents: int = flax.struct.field(pytree_node=False, default=0)
  num_terms: int = flax.struct.field(pytree_node=False, default=0)
  word_buckets: int = flax.struct.field(pytree_node=False, default=0)


def folding_fields(folding) -> dict:
  """A gr/index/lexicon.TermFolding as `LexicalIndex` fields: its device
  arrays (term_of, continuation, word_codes, word_terms) and sizes
  (num_terms, word_buckets)."""
  return {
    "term_of": jnp.asarray(folding.classes, jnp.int32),
    "continuation": jnp.asarray(folding.continuation, bool),
    "word_codes": jnp.asarray(folding.word_codes, jnp.uint32),
    "word_terms": jnp.asarray(folding.word_terms, jnp.int32),
    "num_terms": folding.num_terms,
    "word_buckets": folding.word_buckets,
  }


def lexical_index(term_sets, folding) -> LexicalIndex:
  """A `LexicalIndex` of `term_sets` (gr/docids/term_sets.TermSets) and
  the folding they were built with (gr/index/lexicon.folding)."""
  terms, impacts, documents = term_sets.flat()
  main, _ = postings(terms, impacts, documents, folding.num_terms)
  return LexicalIndex(
    main=main,
    **empty_entries(),
    num_documents=len(term_sets),
    **folding_fields(folding),
  )


@flax.struct.dataclass
class Expansion:
  """Weights for terms the query does not contain, from its encoder
  states (the expansion half of the plan).

  A word-start piece v weighs max over the query's positions i of
  log(1 + relu((states_i @ projection) . pieces_v + bias)); a term, the
  heaviest of its pieces (lexicon's classes), times gate. The query's own
  terms are left to the copy path (the token weights) and the `width`
  heaviest other terms join the query.

  pieces [V, E] float32: the encoder's word-piece embeddings, frozen (no
  gradient reaches them); projection [E, E] (identity at the start), bias
  [], gate [] >= 0 (0 at the start: the expansion adds nothing).
  """

  pieces: jax.Array
  projection: jax.Array
  bias: jax.Array
  gate: jax.Array
  width: int = flax.struct.field(pytree_node=False, default=32)

  @classmethod
  def start(cls, pieces, width: int = 32) -> "Expansion":
    """The zero-gate expansion over the piece embeddings pieces [V, E]."""
    pieces = jnp.asarray(pieces, jnp.float32)
    return cls(
      pieces=pieces,
      projection=jnp.eye(pieces.shape[1], dtype=jnp.float32),
      bias=jnp.zeros((), jnp.float32),
      gate=jnp.zeros((), jnp.float32),
      width=width,
    )

  def piece_weights(self, states: jax.Array, mask: jax.Array) -> jax.Array:
    """states [B, Li, E], mask [B, Li] (the query's real tokens) -> [B, V]
    each piece's pooled weight (before the gate), >= 0."""
    pieces = jax.lax.stop_gradient(self.pieces)
    projected = states.astype(jnp.float32) @ self.projection  # [B, Li, E]
    logits = jnp.einsum("ble,ve->blv", projected, pieces) + self.bias
    values = jnp.where(mask[..., None], jnp.log1p(jax.nn.relu(logits)), 0.0)
    return values.max(axis=1)

  def select(
    self, states: jax.Array, mask: jax.Array, query_terms: jax.Array, folding
  ) -> tuple[jax.Array, jax.Array]:
    """The added terms [B, X] and their weights [B, X] (X = min(width,
    num_terms)): the heaviest terms other than the query's own
    (query_terms [B, Li], 0 = none) under `folding` (a `LexicalIndex`, or
    anything with its term_of [V], continuation [V] and num_terms; a
    continuation piece starts no word: no term)."""
    num_terms = folding.num_terms
    pieces = self.piece_weights(states, mask)  # [B, V]
    piece_terms = jnp.where(folding.continuation, 0, folding.term_of)  # [V]
    batch = jnp.arange(states.shape[0])[:, None]
    weights = jnp.zeros((states.shape[0], num_terms), jnp.float32)
    weights = weights.at[batch, piece_terms[None, :]].max(pieces)
    own = jnp.zeros(weights.shape, bool).at[batch, query_terms].set(True)
    weights = jnp.where(own | (jnp.arange(num_terms) == 0), 0.0, weights)
    values, terms = jax.lax.top_k(weights, min(self.width, num_terms))
    return terms.astype(jnp.int32), self.gate * values


@flax.struct.dataclass
class TermWeightHead:
  """A query token's weight from its encoder state [E]:
  exp(state . kernel + bias). kernel [E] float32, bias [] float32; zeros
  give every token weight 1 (the BM25 start). expansion: the optional
  `Expansion` (None: the query's own terms only)."""

  kernel: jax.Array
  bias: jax.Array
  expansion: Optional[Expansion] = None

  @classmethod
  def zeros(cls, width: int, expansion=None) -> "TermWeightHead":
    return cls(
      jnp.zeros((width,), jnp.float32), jnp.zeros((), jnp.float32), expansion
    )

  def token_weights(self, states: jax.Array) -> jax.Array:
    """states [B, Li, E] -> [B, Li] positive weights."""
    logits = jnp.einsum("ble,e->bl", states.astype(jnp.float32), self.kernel)
    return jnp.exp(logits + self.bias)


HEAD_FILE = "term_weight_head.npz"
HEAD_FORMAT = "gr.term_weight_head.v1"
EXPANSION_FORMAT = "gr.term_weight_head.v2"  # with an `Expansion`
_EXPANSION_FIELDS = ("pieces", "projection", "expansion_bias", "gate", "width")


def save_head(run_dir: str, head: TermWeightHead) -> str:
  """Writes run_dir/term_weight_head.npz atomically (v2 with the
  expansion, its frozen piece embeddings included); returns the path."""
  fields = {
    "kernel": np.asarray(head.kernel, np.float32),
    "bias": np.asarray(head.bias, np.float32),
  }
  expansion = head.expansion
  if expansion is not None:
    fields.update(
      pieces=np.asarray(expansion.pieces, np.float32),
      projection=np.asarray(expansion.projection, np.float32),
      expansion_bias=np.asarray(expansion.bias, np.float32),
      gate=np.asarray(expansion.gate, np.float32),
      width=np.asarray(expansion.width, np.int64),
    )
  buffer = io.BytesIO()
  np.savez(
    buffer,
    format=np.array(HEAD_FORMAT if expansion is None else EXPANSION_FORMAT),
    **fields,
  )
  path = os.path.join(run_dir, HEAD_FILE)
  atomic_io.write_bytes(path, buffer.getvalue())
  return path


def load_head(run_dir: str) -> Optional[TermWeightHead]:
  """The head saved in `run_dir` (None: none saved).

  Raises:
    ValueError: naming the file, when it is not such a head.
  """
  path = os.path.join(run_dir, HEAD_FILE)
  if not os.path.exists(path):
    return None
  names = ("format", "kernel", "bias") + _EXPANSION_FIELDS
  try:
    with np.load(path) as data:
      fields = {k: data[k] for k in names if k in data}
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f"{path}: unreadable ({e})") from e
  kind = str(fields.get("format", ""))
  if kind not in (HEAD_FORMAT, EXPANSION_FORMAT) or not (
    "kernel" in fields and "bias" in fields
  ):
    raise ValueError(f"{path}: not a {HEAD_FORMAT} or v2 file")
  kernel, bias = fields["kernel"], fields["bias"]
  if kernel.ndim != 1 or bias.shape != () or not np.isfinite(kernel).all():
    raise ValueError(f"{path}: kernel must be [E] finite, bias a scalar")
  expansion = None
  if kind == EXPANSION_FORMAT:
    expansion = _loaded_expansion(path, fields, kernel.shape[0])
  return TermWeightHead(
    jnp.asarray(kernel, jnp.float32), jnp.asarray(bias, jnp.float32),
    expansion,
  )  # fmt: skip


def _loaded_expansion(path: str, fields: dict, width: int) -> Expansion:
  """The `Expansion` of a v2 head file's fields, checked."""
  missing = [k for k in _EXPANSION_FIELDS if k not in fields]
  if missing:
    raise ValueError(f"{path}: a v2 head without {', '.join(missing)}")
  pieces, projection = fields["pieces"], fields["projection"]
  gate, terms = fields["gate"], fields["width"]
  if (
    pieces.ndim != 2
    or pieces.shape[1] != width
    or projection.shape != (width, width)
    or gate.shape != ()
    or terms.shape != ()
    or int(terms) < 1
  ):
    raise ValueError(
      f"{path}: expansion pieces must be [V, {width}], projection "
      f"[{width}, {width}], gate a scalar and width a positive count"
    )
  values = (pieces, projection, fields["expansion_bias"], gate)
  if not all(np.isfinite(v).all() for v in values) or float(gate) < 0:
    raise ValueError(f"{path}: expansion values must be finite, gate >= 0")
  return Expansion(
    pieces=jnp.asarray(pieces, jnp.float32),
    projection=jnp.asarray(projection, jnp.float32),
    bias=jnp.asarray(fields["expansion_bias"], jnp.float32),
    gate=jnp.asarray(gate, jnp.float32),
    width=int(terms),
  )


def query_terms(lexical: LexicalIndex, tokens: jax.Array) -> jax.Array:
  """tokens [B, Li] -> [B, Li] each token's term (0: none)."""
  return word_terms.fold(
    jnp, tokens, lexical.term_of, lexical.continuation, lexical.word_codes,
    lexical.word_terms, lexical.word_buckets, lexical.num_terms,
  )  # fmt: skip


def document_scores(
  lexical: LexicalIndex,
  tokens: jax.Array,
  token_weights: Optional[jax.Array] = None,
  expansion: Optional[Expansion] = None,
  states: Optional[jax.Array] = None,
) -> jax.Array:
  """Query tokens [B, Li] -> [B, N] each document's lexical score: the sum
  over the query's tokens of the token's weight (token_weights [B, Li];
  None: 1) times its term's impact in the document, plus, with an
  `expansion` (which reads the encoder states [B, Li, E]), its added
  terms' weights times their impacts."""
  terms = query_terms(lexical, tokens)  # [B, Li]
  values = (terms > 0).astype(jnp.float32)
  if token_weights is not None:
    values = values * token_weights.astype(jnp.float32)
  if expansion is not None:
    added, weights = expansion_terms(lexical, expansion, tokens, states, terms)
    terms = jnp.concatenate([terms, added], axis=1)  # [B, Li + X]
    values = jnp.concatenate([values, weights], axis=1)
  scores = _main_scores(lexical, terms, values)
  if lexical.terms.shape[0]:
    scores = scores + _delta_scores(lexical, terms, values)
  return scores


def expansion_terms(
  lexical: LexicalIndex,
  expansion: Expansion,
  tokens: jax.Array,
  states: jax.Array,
  terms: Optional[jax.Array] = None,
) -> tuple[jax.Array, jax.Array]:
  """The terms [B, X] the expansion adds to queries tokens [B, Li] (with
  encoder states [B, Li, E]; terms: their `query_terms`, when known) and
  their weights [B, X], under the index's folding."""
  if states is None:
    raise ValueError("an expansion needs the query's encoder states")
  if terms is None:
    terms = query_terms(lexical, tokens)
  return expansion.select(states, tokens > 0, terms, lexical)


def _main_scores(lexical: LexicalIndex, terms, values) -> jax.Array:
  """[B, N] from the postings of each query token's term: [B, Li, W]."""
  main = lexical.main
  offsets = jnp.arange(main.width)  # [W]
  start = main.start[terms]  # [B, Li]
  count = main.start[terms + 1] - start
  listed = offsets < count[..., None]  # [B, Li, W]
  rows = jnp.where(listed, start[..., None] + offsets, 0)
  impacts = jnp.where(listed, main.impacts[rows], 0.0)
  batch = jnp.arange(terms.shape[0])[:, None, None]
  scores = jnp.zeros((terms.shape[0], lexical.num_documents), jnp.float32)
  return scores.at[batch, main.documents[rows]].add(impacts * values[..., None])


def _delta_scores(lexical: LexicalIndex, terms, values) -> jax.Array:
  """[B, N] from the flat entries: [B, P'] gathers of the query weights."""
  rows = jnp.broadcast_to(jnp.arange(terms.shape[0])[:, None], terms.shape)
  zeros = jnp.zeros((terms.shape[0], lexical.num_terms), jnp.float32)
  weights = zeros.at[rows, terms].add(values)  # [B, num_terms]
  contributions = weights[:, lexical.terms] * lexical.impacts  # [B, P']
  return jax.vmap(
    lambda row: jax.ops.segment_sum(
      row, lexical.documents, num_segments=lexical.num_documents
    )
  )(contributions)
