"""Start a BERT encoder + T5 decoder where dense retrieval already is.

`pretrained_params` loads the encoder's weights, copies its word embeddings
into the decoder's (row for row: the vocabularies share word pieces, see
gr/index/wordpiece.py) and, with warm start on, shapes the decoder so that at
step 0 it scores a docid token by the cosine between the query's and the
token's embeddings:

* decoder layer 0's cross-attention has zero query weights, so it attends
  uniformly over the input tokens: mean pooling of the encoder states, as
  sentence-transformers pools; its value and output kernels are identities;
* every other residual branch (self-attention, MLPs, later cross-attention)
  has a zero output kernel, and the BOS embedding is zero, so the pooled
  vector reaches the final RMSNorm unchanged;
* the final RMSNorm's scale is 1 / temperature and the logits are tied to
  the embeddings, so logit = cos(query, token vector) / temperature when the
  token's row is a unit vector.

Docid token rows come from `docid_token_vectors`: a token's vector is the
mean embedding of the documents whose docids contain it (normalised). For
an atomic docid that is its document's embedding; for a semantic docid
token at depth i, the centroid of its k-means cluster (averaged over the
clusters sharing the token); text docids are word pieces and keep the
encoder's word embeddings.

`new_docid_rows` applies the same rule to documents added later (online in
gr/serve/retriever.py, by gr/continual/update.py's updates): their new docid tokens' rows
start as their documents' embeddings under the model's current encoder.

Residual-quantisation docids (gr/docids/rq.py, RIPOR) differ in three ways
(their scheme's exact rows, gr/docids/token_rows.py): a code token's row is its codebook vector as is (not
normalised: the codebooks live in the space of the unit document vectors,
so the rows of a docid sum to its document's reconstruction, and atomic's
unit rows are the one-level case), a disambiguating `<qx_j>` row is zero,
and no token carries the end direction. The decoder is made to output the
query's vector at every step, not only the first: the cross-attention's
output kernel is the identity times QUERY_GAIN, so the pooled query
dominates the previous docid token's row in the residual stream
(pooled * gain + row, then the final RMSNorm removes the scale; the
direction is off by about |row| / (gain |pooled|)). A docid's summed raw
logits (SearchConfig.score_mode 'logits') are then about
cos(query, reconstruction) / temperature.
"""

import functools
from typing import Any, Collection, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr.docids import token_rows
from gr.model import bert
from gr.model import bert_network
from gr.index import vocab as vocab_lib

Params = Any


def docid_token_vectors(
  table,
  vocab,
  doc_vectors: np.ndarray,
) -> dict[int, np.ndarray]:
  """Reserved-token id -> vector, by the table's scheme
  (gr/docids/token_rows.py: the unit mean of its documents' vectors, or
  the scheme's exact rows).

  Args:
    table: the DocidTable; doc_vectors[i] belongs to table.doc_ids[i].
    vocab: the vocabulary holding the table's reserved tokens.
    doc_vectors: [num_docs, width] document embeddings.
  """
  return {
    vocab.docid_token_id(token): vector
    for token, vector in token_rows.token_vectors(table, doc_vectors).items()
  }


# Tokens that end a docid carry END_WEIGHT * u and the EOS row is
# EOS_WEIGHT * u, for one unit direction u: after such a token, EOS wins
# (log p(EOS) ~ 0, so a docid's score is its first-step score), while at
# step 0 the shared component adds the same constant to every end token's
# logit, which leaves the ranking exactly the cosine ranking.
END_WEIGHT = 1.0
EOS_WEIGHT = 10.0
DEFAULT_TEMPERATURE = 0.05  # the step-0 softmax temperature over cosines
# RQ docids: the pooled query's weight against the previous token's row in
# the decoder's residual stream (see the module docstring).
QUERY_GAIN = 1000.0


def end_ids_of(table, vocab) -> set[int]:
  """The tokens that get the end direction: `end_token_ids`, none for a
  scheme with exact rows (RQ: their step scores are summed as is; EOS adds
  nothing)."""
  return set() if token_rows.exact_rows(table) else end_token_ids(table, vocab)


def query_gain_of(table) -> float:
  """`shape_decoder`'s query_gain for the table's scheme (QUERY_GAIN for
  exact rows, which are summed over every step)."""
  return QUERY_GAIN if token_rows.exact_rows(table) else 1.0


def end_direction(width: int, seed: int = 0) -> np.ndarray:
  """The fixed unit direction u [width] of END_WEIGHT / EOS_WEIGHT."""
  u = np.random.default_rng(seed).normal(size=width).astype(np.float32)
  return u / np.linalg.norm(u)


def end_token_ids(table, vocab) -> set[int]:
  """Ids of reserved tokens that end some docid (the last token)."""
  reserved = set(vocab.docid_tokens)
  return {
    vocab.docid_token_id(docid.split()[-1])
    for docid, _ in table.all_docids()
    if docid.split()[-1] in reserved
  }


def new_docid_rows(
  embedding: np.ndarray,
  table,
  vocab,
  new_tokens: Sequence[str],
  doc_vectors: Mapping[str, np.ndarray],
) -> np.ndarray:
  """`embedding` [V, D] with the rows of `new_tokens` set from new documents.

  The `docid_token_vectors` rule over the documents of `doc_vectors` only
  (doc_id -> [D] embedding, e.g. the documents just added), by
  `new_token_rows` with the statistics of the existing docid rows
  (`row_statistics`): a new token's row is the normalised mean of the
  vectors of those documents whose docids contain it (for an atomic
  token, its document's vector), scaled to the mean norm of the other docid
  rows (1 if there are none), plus, for tokens that end a docid, the
  existing end tokens' shared component along the EOS row, so EOS still
  wins after them. A scheme with exact rows (RQ) gives its own vectors as
  they are (a `<qr_i>` its residual, a `<qx_j>` zero).

  Args:
    embedding: the tied token embedding [V, D] (V >= every new token's id).
    table: the DocidTable that holds the documents of `doc_vectors`.
    vocab: the vocabulary with `new_tokens` among its docid tokens.
    new_tokens: the docid tokens whose rows are set.
    doc_vectors: doc_id -> [D] vector (normalised here).

  Returns:
    A float32 copy of `embedding`; new tokens no document uses keep theirs.
  """
  rows = np.array(embedding, np.float32)
  new_ids = {vocab.docid_token_id(t) for t in new_tokens}
  old_ids = {
    i
    for i in map(vocab.docid_token_id, vocab.docid_tokens)
    if i not in new_ids and i < len(rows)
  }
  scale, shared = row_statistics(rows, table, vocab, old_ids)
  for token, row in new_token_rows(
    table, vocab, new_tokens, doc_vectors, scale=scale, shared=shared
  ).items():
    rows[vocab.docid_token_id(token)] = row
  return rows


def row_statistics(
  rows: np.ndarray, table, vocab, ids: Optional[Collection[int]] = None
) -> tuple[float, np.ndarray | float]:
  """(scale, shared) of `new_token_rows` over the docid rows `ids` of
  `rows` [V, D] (default: every docid token's below V): their mean norm
  less the end component, and the end tokens' mean component along EOS."""
  if ids is None:
    ids = {
      i for i in map(vocab.docid_token_id, vocab.docid_tokens) if i < len(rows)
    }
  shared = _end_component(rows, end_token_ids(table, vocab) & set(ids))
  ids = sorted(ids)
  scale = (
    float(np.linalg.norm(rows[ids] - shared, axis=1).mean()) if ids else 1.0
  )
  return scale, shared


def new_token_rows(
  table,
  vocab,
  new_tokens: Sequence[str],
  doc_vectors: Mapping[str, np.ndarray],
  *,
  scale: float,
  shared: np.ndarray | float,
) -> dict[str, np.ndarray]:
  """token -> row [D] of each of `new_tokens` that a document of
  `doc_vectors` (doc_id -> [D], all in `table`) uses: the scheme's vector
  (gr/docids/token_rows.py) over those documents; for mean rows scaled by
  `scale`, plus `shared` on tokens that end a docid (`row_statistics`)."""
  if token_rows.exact_rows(table):
    wanted = set(new_tokens)
    used = {
      t for d in doc_vectors for s in table.docids_of[d] for t in s.split()
    }
    vectors = token_rows.token_vectors(table, None, wanted & used)
    return {t: np.asarray(v, np.float32) for t, v in vectors.items()}
  if not new_tokens or not doc_vectors:
    return {}
  docs = _Documents(table, doc_vectors)
  vectors = np.stack([doc_vectors[d] for d in docs.doc_ids]).astype(np.float32)
  vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
  end_ids = end_token_ids(docs, vocab)
  out = {}
  for token, vector in token_rows.token_vectors(
    docs, vectors, set(new_tokens)
  ).items():
    end = vocab.docid_token_id(token) in end_ids
    out[token] = (scale * vector + (shared if end else 0.0)).astype(np.float32)
  return out


class _Documents:
  """The DocidTable surface the mean-rows rule reads (scheme, doc_ids,
  docids_of, all_docids), over some of a table's documents: O(k), where a
  DocidTable would validate every reserved token."""

  def __init__(self, table, doc_ids):
    self.scheme = table.scheme
    self.docids_of = {d: table.docids_of[d] for d in doc_ids}
    self.doc_ids = tuple(self.docids_of)

  def all_docids(self) -> list[tuple[str, str]]:
    return [(s, d) for d, ids in self.docids_of.items() for s in ids]


def _end_component(rows: np.ndarray, end_ids: set[int]) -> np.ndarray | float:
  """The existing end tokens' mean component along the EOS row [D] (the
  warm start's END_WEIGHT * u, as training left it); 0 if EOS is zero."""
  eos = rows[vocab_lib.EOS_ID]
  ids = [i for i in end_ids if i < len(rows)]
  if not ids or not np.linalg.norm(eos):
    return 0.0
  direction = eos / np.linalg.norm(eos)
  return float(rows[ids].mean(axis=0) @ direction) * direction


def _identity(width: int, heads: int, head_dim: int):
  eye = np.eye(width, dtype=np.float32)
  return eye.reshape(width, heads, head_dim), eye.reshape(
    heads, head_dim, width
  )


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree[key]
  if tuple(tree[path[-1]].shape) != tuple(np.shape(value)):
    raise ValueError(
      f"{'/'.join(path)}: shape {tree[path[-1]].shape} != {np.shape(value)}"
    )
  tree[path[-1]] = jnp.asarray(value, tree[path[-1]].dtype)


def _zero(tree: dict, path: tuple[str, ...]) -> None:
  node = tree
  for key in path:
    node = node[key]
  _set(tree, path, np.zeros(node.shape, np.float32))


def shape_decoder(
  params: Params,
  config: bert_network.BertT5Config,
  *,
  temperature: float,
  query_gain: float = 1.0,
) -> Params:
  """The decoder surgery above (needs decoder width == encoder width);
  query_gain scales layer 0's cross-attention output (QUERY_GAIN for RQ
  docids, so that every step outputs the query's direction)."""
  dec = config.decoder
  width = config.encoder_width
  if dec.emb_dim != width or dec.num_heads * dec.head_dim != width:
    raise ValueError(
      f"warm start needs decoder emb_dim == num_heads * head_dim == the "
      f"encoder width ({width}); got {dec.emb_dim}, {dec.num_heads} x "
      f"{dec.head_dim}"
    )
  if not dec.logits_via_embedding:
    raise ValueError("warm start needs tied logits (logits_via_embedding)")
  params = jax.tree.map(lambda x: x, params)  # a copy we may edit
  value, out = _identity(width, dec.num_heads, dec.head_dim)
  cross = ('decoder', 'layers_0', 'encoder_decoder_attention')
  _zero(params, cross + ('query', 'kernel'))
  _set(params, cross + ('value', 'kernel'), value)
  _set(params, cross + ('out', 'kernel'), out * np.float32(query_gain))
  for i in range(dec.num_decoder_layers):
    layer = ('decoder', f'layers_{i}')
    _zero(params, layer + ('self_attention', 'out', 'kernel'))
    _zero(params, layer + ('mlp', 'wo', 'kernel'))
    if i:
      _zero(params, layer + ('encoder_decoder_attention', 'out', 'kernel'))
  _set(
    params,
    ('decoder', 'decoder_norm', 'scale'),
    np.full((dec.emb_dim,), 1.0 / temperature, np.float32),
  )
  return params


@functools.lru_cache(maxsize=8)
def _init_fn(model, input_length: int, target_length: int):
  """model.init_params jitted once per model and lengths (run_experiment
  initialises twice; op by op it took 17 s for a tiny BERT on CPU)."""
  return jax.jit(
    functools.partial(
      model.init_params, input_length=input_length, target_length=target_length
    )
  )


def pretrained_params(
  model,
  encoder_params: Params,
  rng: jax.Array,
  *,
  input_length: int,
  target_length: int,
  docid_vectors: Mapping[int, np.ndarray] | None = None,
  end_ids: Sequence[int] = (),
  eos_id: int = 1,
  warm_start: bool = True,
  temperature: float = 0.05,
  query_gain: float = 1.0,
) -> Params:
  """Params with the pretrained encoder, its word embeddings in the decoder,
  and (warm_start) the dense-retrieval decoder with docid rows set.

  Args:
    model: an EncoderDecoderModel over a BertT5Config.
    encoder_params: gr.model.bert params of the pretrained encoder.
    rng: for the freshly initialised parts.
    docid_vectors: token id -> [width] vector for docid rows (warm start).
    end_ids: docid tokens that end a docid (`end_token_ids`): they and the
      EOS row get the end direction (END_WEIGHT, EOS_WEIGHT).
    eos_id: the vocabulary's EOS id.
    warm_start: False keeps the random decoder (the ablation).
    temperature: the step-0 softmax temperature over cosines.
    query_gain: `shape_decoder`'s (`query_gain_of` the table).
  """
  params = dict(_init_fn(model, input_length, target_length)(rng))
  params['encoder'] = jax.tree.map(jnp.asarray, encoder_params)
  words = np.asarray(encoder_params['word_embeddings']['embedding'])
  words = words[: model.config.encoder.vocab_size]  # not the padding rows
  table = np.zeros(params['token_embedder']['embedding'].shape, np.float32)
  if not warm_start:
    table = np.asarray(params['token_embedder']['embedding']).copy()
  table[: len(words)] = words
  table[0] = 0.0  # BOS = PAD: the residual stream starts at zero
  if warm_start:
    u = end_direction(table.shape[1])
    for token_id, vector in (docid_vectors or {}).items():
      table[token_id] = vector + (END_WEIGHT * u if token_id in end_ids else 0)
    if end_ids:
      table[eos_id] = EOS_WEIGHT * u
    params = shape_decoder(
      params, model.config, temperature=temperature, query_gain=query_gain
    )
  params['token_embedder'] = {'embedding': jnp.asarray(table)}
  return params


def load_encoder(path: str) -> tuple[bert.BertConfig, Params]:
  """(config, params) of a HF BERT-family folder."""
  config = bert.BertConfig.from_folder(path)
  return config, bert.load_params(path, config)
