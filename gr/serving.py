"""The docid decoding service's core: load a trained run once, retrieve fast.

`Retriever` loads a checkpoint's params, its index artifact (DocidTable and
vocabulary, sha256-verified) and the model config once, and answers
`retrieve(queries, k)` with one jitted constrained beam search compiled for
a few bucket batch shapes (e.g. 1, 4, 16, 32): a batch of n queries is padded
to the smallest bucket >= n, so traffic never triggers a compilation.

Online updates (the "trie_only" strategy: the model is not retrained) go
through `add_documents` / `delete_document`: docids come from the table's
own scheme (`assign_new`), the host trie is edited and re-uploaded (same
array shapes unless a capacity doubles; then every bucket is compiled again
BEFORE the new arrays go live), and the table is persisted atomically as a
new version of the served index directory, all under one lock.

With a pretrained encoder (gr/bert_network.py), a new document is
retrievable at once: each docid token the add creates (an atomic `<d_N>`,
a semantic leaf position past c) gets as its embedding row the new
documents' own embedding, the model's mean-pooled encoder output
(gr/warm_start.py `new_docid_rows`, the rule the initial docid rows were
warm-started with), scaled to the existing docid rows' norm; a semantic
docid is routed into the existing tree, so its other tokens are trained
centroids. Those rows are saved in <run>/index/online_rows.npz and put
back into the checkpoint's params on restart. A T5 model keeps its rows
(the checkpoint's padding rows) as before.

Files of a run:

  <run>/model/                 orbax checkpoints; <step>/index_artifact/ is
                               the index the params were trained with
  <run>/model_config.json      model config fields, input_length and the
                               corpus path (titles), written by
                               gr/run_config.py's `save_model_config`; looked
                               up inside <run>/model/ first
  <run>/index/                 the served index (gr/index.py versions): seeded
                               from the checkpoint's artifact if absent, and
                               refused unless it descends from that artifact
  <run>/index/online_documents.jsonl  documents added online (BEIR corpus
                               lines), input for a later retraining run
  <run>/index/online_rows.npz  embedding rows of docid tokens created online
                               (pretrained-encoder models): tokens [n], rows
                               [n, D]
  <run>/index/.serving.lock    held while a Retriever serves the directory

Trie values are "slots": positions in an append-only list of doc_ids, so
deleting a document never renumbers the others.

The micro-batcher is not here: gr/microbatch.py's `MicroBatcher`, used by
the HTTP service (gr/web/app.py), gathers concurrent requests (up to a
maximum batch or a few milliseconds) into one `Retriever.retrieve` call on a
worker thread.
"""

import dataclasses
import fcntl
import functools
import io
import logging
import os
import threading
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr import atomic_io
from gr import checkpoints
from gr import docids as docids_lib
from gr import index as index_lib
from gr import models
from gr import pretrained
from gr import retrieval
from gr import run_config
from gr import trie as trie_lib
from gr import vocab as vocab_lib
from gr import warm_start
from gr.data import beir

ONLINE_DOCUMENTS_FILE = "online_documents.jsonl"
ONLINE_ROWS_FILE = "online_rows.npz"
LOCK_FILE = ".serving.lock"


class ServingError(Exception):
  """Base class of the service's errors."""


class RunLoadError(ServingError):
  """A run cannot be served: missing, corrupt or mismatched files."""


class DocumentConflict(ServingError):
  """An update cannot be applied (duplicate id, no room, unencodable)."""


class UnknownDocument(ServingError):
  """A doc_id that is not in the index."""


@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """How queries are decoded and batched.

  Attributes:
    max_k: most results a request may ask for (the compiled top_k).
    beam_size: beams of the search; None means max_k (at least max_k).
    buckets: batch shapes compiled; the largest is the maximum batch.
    max_wait_ms: how long the micro-batcher waits to fill a batch.
    decode_headroom: tokens beyond the longest docid that the decoder may
      run, so that longer docids added online can still be found.
    length_penalty_alpha, aggregation: as in retrieval.SearchConfig.
  """

  max_k: int = 10
  beam_size: Optional[int] = None
  buckets: tuple[int, ...] = (1, 4, 16, 32)
  max_wait_ms: float = 2.0
  decode_headroom: int = 2
  length_penalty_alpha: float = 0.0
  aggregation: str = "max"

  def __post_init__(self):
    buckets = tuple(sorted(set(int(b) for b in self.buckets)))
    object.__setattr__(self, "buckets", buckets)
    if not buckets or buckets[0] < 1:
      raise ValueError(f"ServingConfig.buckets must be positive, got {buckets}")
    if self.max_k < 1 or (self.beam_size or self.max_k) < self.max_k:
      raise ValueError(
        f"ServingConfig: need 1 <= max_k ({self.max_k}) <= "
        f"beam_size ({self.beam_size})"
      )
    if self.max_wait_ms < 0 or self.decode_headroom < 0:
      raise ValueError(
        "ServingConfig: max_wait_ms and decode_headroom must be >= 0"
      )

  @property
  def max_batch(self) -> int:
    return self.buckets[-1]

  def search_config(self, max_decode_len: int) -> retrieval.SearchConfig:
    return retrieval.SearchConfig(
      beam_size=self.beam_size or self.max_k,
      top_k=self.max_k,
      max_decode_len=max_decode_len,
      length_penalty_alpha=self.length_penalty_alpha,
      aggregation=self.aggregation,
    )


@dataclasses.dataclass(frozen=True)
class Hit:
  """One retrieved document: its id, best docid, log-prob and title.

  matched_docids: the document's docids that the search found, best first
  (docid is the first); with one docid per document, just that one.
  """

  doc_id: str
  docid: str
  score: float
  title: Optional[str] = None
  matched_docids: tuple[str, ...] = ()


# ------------------------------------------------------------- loading --


def check_params(
  model: models.EncoderDecoderModel, params: Any, source: str
) -> None:
  """Raises RunLoadError unless `params` has the shapes `model` expects."""
  expected = dict(jax.tree_util.tree_flatten_with_path(model.param_shapes())[0])
  found = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in sorted(set(expected) | set(found), key=str):
    want, got = expected.get(path), found.get(path)
    if want is None or got is None or tuple(want.shape) != tuple(got.shape):
      raise RunLoadError(
        f"{source}: params do not fit the model config at "
        f"{jax.tree_util.keystr(path)}: expected "
        f"{None if want is None else tuple(want.shape)}, found "
        f"{None if got is None else tuple(got.shape)}"
      )


def check_descends(
  served: index_lib.Index, trained: index_lib.Index, served_dir: str
) -> None:
  """Raises RunLoadError unless `served` is `trained` plus online updates.

  Same scheme and base vocabulary (sentencepiece model or WordPiece
  tokenizer), docid tokens extended at the end, and every trained document
  either unchanged or removed (retired).
  """

  def refuse(reason: str):
    raise RunLoadError(
      f"{served_dir}: this index does not descend from the checkpoint's "
      f"index artifact ({reason}); serve a fresh --index_dir (it is seeded "
      "from the artifact)"
    )

  if served.table.scheme != trained.table.scheme:
    refuse(f"scheme {served.table.scheme!r} != {trained.table.scheme!r}")
  if served.vocab.base_fingerprint != trained.vocab.base_fingerprint:
    refuse("different tokenizer (sentencepiece model or WordPiece)")
  tokens = trained.vocab.docid_tokens
  if served.vocab.docid_tokens[: len(tokens)] != tokens:
    refuse("docid tokens are not an extension of the trained ones")
  retired = served.table.retired_docids
  for doc_id, docids in trained.table.docids.items():
    now = served.table.docids.get(doc_id)
    if now != docids and not set(docids) <= retired:
      refuse(f"document {doc_id!r} has docids {now}, trained with {docids}")


def served_index(trained: index_lib.Index, index_dir: str) -> index_lib.Index:
  """The index under `index_dir`, seeded from `trained` if it has none."""
  if not os.path.exists(os.path.join(index_dir, index_lib.CURRENT_FILE)):
    index_lib.save_index(trained, index_dir)
  try:
    served = index_lib.load_index(index_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(f"{index_dir}: corrupt served index: {e}") from e
  check_descends(served, trained, index_dir)
  return served


def load_checkpoint(checkpoint_dir: str, step: Optional[int] = None):
  """(model, params, trained index, RunConfig, step) of a checkpoint.

  Raises:
    RunLoadError: missing model config, params that do not fit it, or an
      index artifact that is missing or fails its checksums.
  """
  try:
    run = run_config.load_model_config(
      run_config.find_model_config(checkpoint_dir)
    )
    artifact = checkpoints.load_artifact(checkpoint_dir, step)
    step = int(artifact.parent.parent.name)  # <model_dir>/<step>/<item>/files
    trained = index_lib.load_index_version(os.fspath(artifact))
    params = checkpoints.restore_params(checkpoint_dir, step)
  except (ValueError, OSError) as e:
    raise RunLoadError(f"{checkpoint_dir}: cannot load checkpoint: {e}") from e
  model = models.EncoderDecoderModel(run.model)
  check_params(model, params, checkpoint_dir)
  if trained.vocab.vocab_size > run.model.vocab_size:
    raise RunLoadError(
      f"{checkpoint_dir}: index vocabulary has {trained.vocab.vocab_size} "
      f"ids but the model only {run.model.vocab_size} embedding rows"
    )
  return model, params, trained, run, step


# ----------------------------------------------- online documents file --


def read_online_documents(index_dir: str) -> dict[str, beir.Document]:
  """Documents added online to `index_dir` (empty if none)."""
  path = os.path.join(index_dir, ONLINE_DOCUMENTS_FILE)
  if not os.path.exists(path):
    return {}
  return beir.read_corpus(path)


def write_online_documents(
  index_dir: str, documents: Mapping[str, beir.Document]
) -> None:
  beir.write_corpus(os.path.join(index_dir, ONLINE_DOCUMENTS_FILE), documents)


def read_online_rows(index_dir: str) -> dict[str, np.ndarray]:
  """Docid token -> embedding row [D] set online in `index_dir` (maybe none)."""
  path = os.path.join(index_dir, ONLINE_ROWS_FILE)
  if not os.path.exists(path):
    return {}
  with np.load(path) as saved:
    return dict(zip(saved["tokens"].tolist(), saved["rows"]))


def write_online_rows(index_dir: str, rows: Mapping[str, np.ndarray]) -> None:
  buffer = io.BytesIO()
  np.savez(
    buffer,
    tokens=np.array(list(rows), dtype=str),
    rows=np.stack(list(rows.values())).astype(np.float32),
  )
  atomic_io.write_bytes(
    os.path.join(index_dir, ONLINE_ROWS_FILE), buffer.getvalue()
  )


# ------------------------------------------------------ docid token rows --


def with_docid_rows(params: Any, vocab, rows: Mapping[str, np.ndarray]) -> Any:
  """`params` with the token embedding rows of docid tokens replaced."""
  if not rows:
    return params
  old = params["token_embedder"]["embedding"]
  embedding = np.array(old)
  for token, row in rows.items():
    embedding[vocab.docid_token_id(token)] = row
  return {
    **params,
    "token_embedder": {
      **params["token_embedder"],
      "embedding": jnp.asarray(embedding, old.dtype),
    },
  }


def warm_docid_rows(
  model: models.EncoderDecoderModel,
  params: Any,
  index: index_lib.Index,
  new_tokens: Sequence[str],
  documents: Mapping[str, beir.Document],
  *,
  input_length: int,
) -> dict[str, np.ndarray]:
  """Rows for `new_tokens` from `documents`' embeddings under `params`.

  Pretrained-encoder models only (warm_start.new_docid_rows over the unit
  mean-pooled encoder output of each body); {} for a T5 model.
  """
  if not pretrained.is_pretrained(model) or not new_tokens or not documents:
    return {}
  rows = pretrained.input_rows(
    index.vocab, [doc.text for doc in documents.values()], input_length
  )
  vectors = pretrained.pooled_vectors(model, params, rows)  # [n, width]
  embedding = warm_start.new_docid_rows(
    np.asarray(params["token_embedder"]["embedding"]),
    index.table,
    index.vocab,
    new_tokens,
    dict(zip(documents, vectors)),
  )
  return {t: embedding[index.vocab.docid_token_id(t)] for t in new_tokens}


def restore_online_rows(
  model: models.EncoderDecoderModel,
  params: Any,
  trained: index_lib.Index,
  served: index_lib.Index,
  index_dir: str,
  online: Mapping[str, beir.Document],
  *,
  input_length: int,
) -> Any:
  """The checkpoint's params with the rows of docid tokens added online.

  Saved rows are used as they are; a token without one (a lost file)
  gets the warm-start rule over the online documents that use it.
  """
  new_tokens = served.vocab.docid_tokens[len(trained.vocab.docid_tokens) :]
  if not pretrained.is_pretrained(model) or not new_tokens:
    return params
  saved = read_online_rows(index_dir)
  params = with_docid_rows(
    params, served.vocab, {t: saved[t] for t in new_tokens if t in saved}
  )
  missing = {t for t in new_tokens if t not in saved}
  if not missing:
    return params
  users = {
    d: doc
    for d, doc in online.items()
    if missing & {w for docid in served.table.docids[d] for w in docid.split()}
  }
  logging.warning(
    "%s: no saved rows for %d online docid tokens; "
    "recomputing them from %d documents",
    index_dir,
    len(missing),
    len(users),
  )
  return with_docid_rows(
    params,
    served.vocab,
    warm_docid_rows(
      model, params, served, sorted(missing), users, input_length=input_length
    ),
  )


def _hold_lock(index_dir: str):
  """An open file holding an exclusive flock on the index dir's lock file."""
  handle = open(os.path.join(index_dir, LOCK_FILE), "a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise RunLoadError(
      f"{index_dir} is already served by another Retriever "
      f"(lock {LOCK_FILE} is held)"
    ) from None
  return handle


# ------------------------------------------------------------ retriever --


@functools.lru_cache(maxsize=8)
def shared_search_fn(
  model_config: models.ModelConfig, search: retrieval.SearchConfig
):
  """One jitted search per (model config, search config) in this process.

  Retrievers of the same model (e.g. one reloaded after a restart in the
  same process) share it, and with it every compiled bucket.
  """
  return retrieval.make_search_fn(
    models.EncoderDecoderModel(model_config), search
  )


def _matched_docids(
  index: index_lib.Index, doc_id: str, found: np.ndarray
) -> tuple[str, ...]:
  """The docid strings of `doc_id` whose tokens are the rows of `found`.

  Args:
    found: [D, L] EOS-terminated docid tokens, best first; all-PAD rows are
      empty slots.

  Returns:
    Their docids, best first (the document's first docid if none match).
  """
  by_tokens = {
    tuple(index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]): docid
    for docid in index.table.docids[doc_id]
  }
  matched = []
  for row in found.tolist():
    tokens = tuple(
      row[: row.index(vocab_lib.EOS_ID) + 1] if vocab_lib.EOS_ID in row else row
    )
    if tokens in by_tokens:
      matched.append(by_tokens[tokens])
  return tuple(matched) or tuple(index.table.docids[doc_id][:1])


@dataclasses.dataclass(frozen=True)
class _Live:
  """What a search reads, swapped as a whole on every update."""

  index: index_lib.Index
  trie_arrays: trie_lib.TrieArrays
  slots: tuple[Optional[str], ...]  # trie value -> doc_id (None: deleted)
  params: Any  # the model's; docid rows set online change it


class Retriever:
  """A trained model and its index, loaded once; batched `retrieve`."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params: Any,
    index: index_lib.Index,
    *,
    input_length: int,
    config: ServingConfig = ServingConfig(),
    index_dir: Optional[str] = None,
    titles: Optional[Mapping[str, str]] = None,
    online_documents: Optional[Mapping[str, beir.Document]] = None,
    checkpoint_step: Optional[int] = None,
  ):
    """Serves `index` with `model`; updates persist under `index_dir`."""
    self.model, self.config = model, config
    self.input_length, self.index_dir = input_length, index_dir
    self.checkpoint_step = checkpoint_step
    self.titles = dict(titles or {})
    self.online_documents = dict(online_documents or {})
    self.titles.update(
      {d: doc.title for d, doc in self.online_documents.items()}
    )
    self.max_decode_len = index.max_docid_length() + config.decode_headroom
    self._search = shared_search_fn(
      model.config,
      retrieval.fit_to_index(config.search_config(self.max_decode_len), index),
    )
    self._update_lock = threading.Lock()
    self._scheme = None
    self._trie = self._build_trie(index)
    self._live = _Live(
      index, self._trie.to_device(), tuple(index.doc_ids), params
    )
    self._lock_handle = _hold_lock(index_dir) if index_dir else None

  @classmethod
  def from_checkpoint(
    cls,
    checkpoint_dir: str,
    *,
    index_dir: Optional[str] = None,
    step: Optional[int] = None,
    config: ServingConfig = ServingConfig(),
    corpus_path: Optional[str] = None,
  ) -> "Retriever":
    """Loads a run: <run>/model checkpoints, served index <run>/index.

    Args:
      checkpoint_dir: the orbax model_dir (e.g. workdir/model).
      index_dir: served (mutable) index; default: <checkpoint_dir>/../index.
      step: checkpoint step; the latest if None.
      config: decoding and batching settings.
      corpus_path: BEIR corpus.jsonl to take titles from; default: the one
        model_config.json names, if it exists.
    """
    model, params, trained, run, step = load_checkpoint(checkpoint_dir, step)
    index_dir = index_dir or os.path.join(
      os.path.dirname(os.path.abspath(checkpoint_dir)), "index"
    )
    index = served_index(trained, index_dir)
    online = {
      d: doc
      for d, doc in read_online_documents(index_dir).items()
      if d in index.table.docids
    }
    params = restore_online_rows(
      model,
      params,
      trained,
      index,
      index_dir,
      online,
      input_length=run.input_length,
    )
    titles = {}
    corpus_path = corpus_path or run.corpus_path
    if corpus_path and os.path.exists(corpus_path):
      titles = {doc.doc_id: doc.title for doc in beir.iter_corpus(corpus_path)}
    return cls(
      model,
      params,
      index,
      input_length=run.input_length,
      config=config,
      index_dir=index_dir,
      titles=titles,
      online_documents=online,
      checkpoint_step=step,
    )

  def _build_trie(self, index: index_lib.Index) -> trie_lib.DocidTrie:
    """Host trie with values = slots, and room to grow before doubling.

    Node capacity is twice the tokens of all docids, and the fan-out
    capacity twice the widest node (or the scheme's token count, up to 64),
    so that adding documents online rarely changes the device shapes (each
    change compiles every bucket again).
    """
    sequences, values = index.docid_sequences()
    build = functools.partial(
      trie_lib.DocidTrie.build,
      sequences,
      values,
      eos_id=vocab_lib.EOS_ID,
      capacity=2 * sum(len(s) for s in sequences),
      vocab_size=self.model.config.vocab_size,
    )
    fanout = build().to_device().max_children
    # A node's children are docid tokens (+ EOS); 64 bounds the gather width.
    tokens = min(len(index.table.reserved_tokens) + 1, 64)
    return build(fanout_capacity=max(2 * fanout, tokens))

  # -- facts --

  @property
  def index(self) -> index_lib.Index:
    return self._live.index

  @property
  def params(self) -> Any:
    return self._live.params

  @property
  def num_docs(self) -> int:
    return self._live.index.table.num_docs

  @property
  def index_version(self) -> int:
    return self._live.index.table.version

  @property
  def max_k(self) -> int:
    return self.config.max_k

  @property
  def max_batch(self) -> int:
    return self.config.max_batch

  def compiled_count(self) -> int:
    """How many shapes the search function has compiled so far."""
    return self._search._cache_size()  # pylint: disable=protected-access

  # -- search --

  def warm_up(self, trie_arrays: Optional[trie_lib.TrieArrays] = None) -> None:
    """Compiles (or checks compiled) every bucket for `trie_arrays`' shapes."""
    arrays = trie_arrays if trie_arrays is not None else self._live.trie_arrays
    for bucket in self.config.buckets:
      tokens = np.zeros((bucket, self.input_length), np.int32)
      jax.block_until_ready(self._search(self._live.params, tokens, arrays))

  def bucket_for(self, n: int) -> int:
    """Smallest bucket holding n queries (n <= max_batch)."""
    return next(b for b in self.config.buckets if b >= n)

  def retrieve(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
    """Top-k documents of each query, best first.

    Args:
      queries: non-empty query strings, any number (split into buckets).
      k: 1 <= k <= max_k.

    Returns:
      Per query up to k Hits (fewer when the index has fewer documents).
    """
    if not 1 <= k <= self.max_k:
      raise ValueError(f"k={k} is outside [1, {self.max_k}]")
    if any(not isinstance(q, str) or not q.strip() for q in queries):
      raise ValueError("queries must be non-empty strings")
    live = self._live
    tokens = retrieval.encode_queries(
      live.index.vocab, queries, self.input_length
    )
    results = []
    for start in range(0, len(queries), self.max_batch):
      chunk = tokens[start : start + self.max_batch]  # [n, Li]
      found = self._search_padded(chunk, live)
      results.extend(self._hits(live, *row, k) for row in zip(*found))
    return results

  def _search_padded(
    self, tokens: np.ndarray, live: _Live
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[n, Li] -> (slots, scores [n, max_k], docids [n, max_k, D, L]).

    Padded to a bucket; docids are each slot's docid tokens found, best
    first (all PAD rows after the last).
    """
    n = tokens.shape[0]
    padded = np.zeros((self.bucket_for(n), tokens.shape[1]), np.int32)
    padded[:n] = tokens  # --> [bucket, Li]
    found = self._search(live.params, padded, live.trie_arrays)
    return (
      np.asarray(found.documents)[:n],
      np.asarray(found.scores)[:n],
      np.asarray(found.docids)[:n],
    )

  def _hits(
    self,
    live: _Live,
    slots: np.ndarray,
    scores: np.ndarray,
    docids: np.ndarray,
    k: int,
  ) -> list[Hit]:
    """Hits of one query: slots, scores [max_k], docids [max_k, D, L]."""
    hits = []
    for slot, score, found in zip(slots, scores, docids):
      doc_id = live.slots[slot] if slot >= 0 else None
      if doc_id is None or not np.isfinite(score):
        continue
      matched = _matched_docids(live.index, doc_id, found)
      hits.append(
        Hit(doc_id, matched[0], float(score), self.titles.get(doc_id), matched)
      )
      if len(hits) == k:
        break
    return hits

  # -- online updates --

  def add_documents(
    self, documents: Sequence[beir.Document]
  ) -> dict[str, tuple[str, ...]]:
    """Names new documents with the table's scheme, serves and persists them.

    With a pretrained encoder, the docid tokens this creates get their rows
    from the new documents' embeddings (module docstring) before they go
    live, so the documents are retrievable at once.

    Returns:
      doc_id -> its new docids.

    Raises:
      DocumentConflict: a doc_id is already indexed (or repeated), a docid
        needs a vocabulary id beyond the model's embedding rows (atomic
        docids: the model is not retrained online), or is longer than the
        compiled decode length, or cannot be encoded.
    """
    new_docs = {doc.doc_id: doc for doc in documents}
    if len(new_docs) != len(documents):
      raise DocumentConflict("a doc_id appears twice in the request")
    with self._update_lock:
      live = self._live
      clashes = [d for d in new_docs if d in live.index.table.docids]
      if clashes:
        raise DocumentConflict(f"doc_ids already indexed: {clashes[:5]}")
      table = self._assign(live.index.table, new_docs)
      index = live.index.with_table(table)
      sequences = self._new_sequences(index, new_docs)
      new_tokens = index.vocab.docid_tokens[
        len(live.index.vocab.docid_tokens) :
      ]
      rows = warm_docid_rows(
        self.model,
        live.params,
        index,
        new_tokens,
        new_docs,
        input_length=self.input_length,
      )
      online = {**self.online_documents, **new_docs}
      self._persist(index, online, write_documents_first=True, rows=rows)
      self.online_documents = online
      for slot, doc_sequences in enumerate(
        sequences.values(), start=len(live.slots)
      ):
        for sequence in doc_sequences:
          self._trie.insert(sequence, slot)
      self._publish(
        index,
        live.slots + tuple(new_docs),
        with_docid_rows(live.params, index.vocab, rows),
      )
      self.titles.update({d: doc.title for d, doc in new_docs.items()})
      return {d: table.docids[d] for d in new_docs}

  def _assign(
    self, table: docids_lib.DocidTable, new_docs: Mapping[str, beir.Document]
  ) -> docids_lib.DocidTable:
    try:
      return self._docid_scheme(table).assign_new(table, new_docs)
    except (ValueError, KeyError) as e:
      raise DocumentConflict(f"cannot assign docids: {e}") from e

  def _docid_scheme(self, table: docids_lib.DocidTable):
    """The table's scheme, made once (schemes with an embedder share one)."""
    if self._scheme is None:
      cls = docids_lib.SCHEMES[table.scheme]
      extra = {}
      if "embedder" in {f.name for f in dataclasses.fields(cls)}:
        from gr import embed  # pylint: disable=g-import-not-at-top

        if pretrained.is_pretrained(self.model):
          # The space its tree was clustered in (indexing.assign_docids).
          extra["embedder"] = embed.Embedder.load(
            self.model.config.encoder_dir, max_length=self.input_length
          )
        else:
          extra["embedder"] = embed.Embedder.load()
      self._scheme = docids_lib.scheme_for_table(table, **extra)
    return self._scheme

  def _new_sequences(
    self, index: index_lib.Index, new_docs: Mapping[str, Any]
  ) -> dict[str, list[list[int]]]:
    """Token ids (+EOS) of each new document's docids, checked to fit."""
    rows, limit = self.model.config.vocab_size, self.max_decode_len
    out, seen = {}, set()
    for doc_id in new_docs:
      out[doc_id] = []
      for docid in index.table.docids[doc_id]:
        try:
          sequence = index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]
        except ValueError as e:
          raise DocumentConflict(f"{doc_id!r}: {e}") from e
        if max(sequence) >= rows:
          raise DocumentConflict(
            f"{doc_id!r}: docid {docid!r} needs vocabulary id "
            f"{max(sequence)} but the model has {rows} embedding rows; "
            "retrain (update_index) to add more documents of this scheme"
          )
        if len(sequence) > limit:
          raise DocumentConflict(
            f"{doc_id!r}: docid {docid!r} has {len(sequence)} tokens, more "
            f"than the served decode length {limit}; restart the server"
          )
        if tuple(sequence) in seen or self._trie.contains(sequence):
          raise DocumentConflict(
            f"{doc_id!r}: docid {docid!r} encodes to the "
            "same tokens as an existing docid"
          )
        seen.add(tuple(sequence))
        out[doc_id].append(sequence)
    return out

  def delete_document(self, doc_id: str) -> None:
    """Removes a document from search, the table and disk.

    Raises:
      UnknownDocument: `doc_id` is not indexed.
    """
    with self._update_lock:
      live = self._live
      if doc_id not in live.index.table.docids:
        raise UnknownDocument(f"no document {doc_id!r} in the index")
      table = live.index.table.remove([doc_id])
      index = index_lib.Index(table, live.index.vocab)
      online = {
        d: doc for d, doc in self.online_documents.items() if d != doc_id
      }
      self._persist(index, online, write_documents_first=False)
      self.online_documents = online
      for docid in live.index.table.docids[doc_id]:
        self._trie.delete(
          live.index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]
        )
      slots = tuple(None if d == doc_id else d for d in live.slots)
      self._publish(index, slots)

  def _persist(
    self,
    index: index_lib.Index,
    online: Mapping[str, beir.Document],
    *,
    write_documents_first: bool,
    rows: Optional[Mapping[str, np.ndarray]] = None,
  ) -> None:
    """Writes the online documents, new docid rows and a new index version
    (if on disk).

    Adds write the documents and rows first and deletes last, so a crash in
    between leaves at worst a document (or row) on file that the table
    lacks (ignored).
    """
    if self.index_dir is None:
      return
    if write_documents_first:
      write_online_documents(self.index_dir, online)
    if rows:
      write_online_rows(
        self.index_dir, {**read_online_rows(self.index_dir), **rows}
      )
    index_lib.save_index(index, self.index_dir)
    if not write_documents_first:
      write_online_documents(self.index_dir, online)

  def _publish(
    self,
    index: index_lib.Index,
    slots: tuple[Optional[str], ...],
    params: Optional[Any] = None,
  ) -> None:
    """Uploads the trie; compiles new shapes first; then swaps atomically
    (with `params`, if given: docid rows set by an add)."""
    arrays = self._trie.to_device()
    old = self._live.trie_arrays
    if jax.tree.structure(arrays) != jax.tree.structure(old) or any(
      a.shape != b.shape
      for a, b in zip(jax.tree.leaves(arrays), jax.tree.leaves(old))
    ):
      logging.info(
        "trie capacity grew: compiling %d buckets", len(self.config.buckets)
      )
      self.warm_up(arrays)
    if self.index_dir is not None:
      index = self._reload_vocab(index)
    self._live = _Live(
      index, arrays, slots, self._live.params if params is None else params
    )

  def _reload_vocab(self, index: index_lib.Index) -> index_lib.Index:
    """`index` with its vocabulary read from the newest version dir.

    Old version dirs are deleted as new ones are saved; the live vocabulary
    must not point into one.
    """
    version_dir = index_lib.current_version_dir(self.index_dir)
    vocab = vocab_lib.load_vocabulary(os.path.join(version_dir, "vocab"))
    return index_lib.Index(index.table, vocab)

  def wait_for_updates(self) -> None:
    """Returns once no update is being applied or persisted."""
    with self._update_lock:
      pass

  def close(self) -> None:
    """Waits for updates to finish and releases the index dir lock."""
    self.wait_for_updates()
    if self._lock_handle is not None:
      self._lock_handle.close()
      self._lock_handle = None
