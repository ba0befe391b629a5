"""The docid decoding service's core: load a trained run once, retrieve fast.

`Retriever` serves a run loaded by gr/serve/served_run.py (checkpoint params, the
sha256-verified index artifact, the model config) and answers
`retrieve(queries, k)` with one jitted constrained beam search compiled for
a few bucket batch shapes (e.g. 1, 4, 16, 32): a batch of n queries is padded
to the smallest bucket >= n, so traffic never triggers a compilation.

Online updates (the "trie_only" strategy: the model is not retrained) go
through `add_documents` / `delete_document`, under one lock, in O(k) for k
documents (amortised; no step touches every document):

  - docids come from the table's own scheme (`assign_new`), and only the
    new ones are checked (gr/docids/base.py DocidTable.extend);
  - the documents (and new docid rows) are appended to the online logs,
    then one record to the index's update log commits the change
    (gr/index/artifact.py `record_update`; now and then it compacts into a full
    version);
  - the host trie is edited and the edits are written into the device
    arrays in place (DocidTrie.update_device); when a capacity grows the
    arrays are uploaded whole and every bucket is compiled again BEFORE the
    new arrays go live.

With a pretrained encoder (gr/model/bert_network.py), a new document is
retrievable at once: each docid token the add creates (an atomic `<d_N>`,
a semantic leaf position past c) gets as its embedding row the new
documents' own embedding, the model's mean-pooled encoder output
(gr/model/warm_start.py `new_docid_rows`, the rule the initial docid rows were
warm-started with), scaled to the existing docid rows' norm; a semantic
docid is routed into the existing tree, so its other tokens are trained
centroids. Those rows are logged beside the index (gr/serve/served_run.py) and
put back into the checkpoint's params on restart. A T5 model keeps its
rows (the checkpoint's padding rows) as before.

Trie values are "slots": positions in an append-only list of doc_ids, so
deleting a document never renumbers the others.

The HTTP service (gr/serve/app.py) batches concurrent requests with
gr/serve/microbatch.py's `MicroBatcher` (up to a maximum batch or a few
milliseconds) into one `Retriever.retrieve` call on a worker thread.
"""

import dataclasses
import datetime
import functools
import logging
import os
import threading
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from gr import batching
from gr import docids as docids_lib
from gr.index import artifact as index_lib
from gr.train import indexing
from gr.model import models
from gr import partitioning
from gr.model import family
from gr.search import retrieval
from gr.serve import served_run
from gr.index import trie as trie_lib
from gr.index import vocab as vocab_lib
from gr.index import wordpiece
from gr.data import beir
from gr.serve.served_run import (  # noqa: F401 (re-exported: the service's API)
  ONLINE_DOCUMENTS_FILE,
  ONLINE_ROWS_FILE,
  RunLoadError,
  ServingError,
  load_checkpoint,
  read_online_documents,
  read_online_rows,
)


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


@dataclasses.dataclass(frozen=True)
class StoredDocument:
  """What the index holds for one doc_id.

  text: None for a trained document whose corpus is not at hand.
  added_at: when it was added online (ISO 8601, UTC); None if trained.
  """

  doc_id: str
  docids: tuple[str, ...]
  title: Optional[str]
  text: Optional[str]
  online: bool
  added_at: Optional[str] = None


ADDED_AT = "added_at"  # the online documents log's field: when, ISO 8601


def _stamped(document: beir.Document, now: str) -> beir.Document:
  """`document` with its time of adding in its metadata (kept if set)."""
  if ADDED_AT in document.metadata:
    return document
  return dataclasses.replace(
    document, metadata={**document.metadata, ADDED_AT: now}
  )


# ------------------------------------------------------------ retriever --


@functools.lru_cache(maxsize=8)
def shared_search_fn(
  model_config: models.ModelConfig,
  search: retrieval.SearchConfig,
  mesh: Optional[jax.sharding.Mesh] = None,
):
  """One jitted search per (model config, search config, mesh) in this
  process.

  Retrievers of the same model (e.g. one reloaded after a restart in the
  same process) share it, and with it every compiled bucket.
  """
  return retrieval.make_search_fn(
    models.EncoderDecoderModel(model_config), search, mesh
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
  docids = index.table.docids_of[doc_id]
  if len(docids) == 1:
    return docids  # the only docid that can reach this document
  by_tokens = {
    tuple(index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]): docid
    for docid in docids
  }
  matched = []
  for row in found.tolist():
    tokens = tuple(
      row[: row.index(vocab_lib.EOS_ID) + 1] if vocab_lib.EOS_ID in row else row
    )
    if tokens in by_tokens:
      matched.append(by_tokens[tokens])
  return tuple(matched) or docids[:1]


@dataclasses.dataclass(frozen=True)
class _Live:
  """What a search reads, swapped as a whole on every update.

  `slots` (trie value -> doc_id, None once deleted) is one list shared by
  every version, appended to and cleared in place under the update lock: a
  search over older trie arrays never meets a slot past its own, and a
  slot cleared under it is a document being deleted.
  """

  index: index_lib.Index
  trie_arrays: trie_lib.TrieArrays
  slots: list[Optional[str]]
  params: Any  # the model's; docid rows set online change it


class Retriever:
  """The served index: a trained model and its mutable index, loaded once
  from a run (verified), bucketed batched `retrieve`, online add/delete
  persisted under its index dir. For evaluation over a fixed index, see
  gr/search/retrieval.py's `Searcher`; both run `retrieval.make_search_fn`."""

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
    corpus: Optional[served_run.CorpusFile] = None,
    online_documents: Optional[Mapping[str, beir.Document]] = None,
    online_rows: Optional[Mapping[str, np.ndarray]] = None,
    checkpoint_step: Optional[int] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
  ):
    """Serves `index` with `model`; updates persist under `index_dir`.

    corpus: where trained documents are read back (`document`).
    online_documents, online_rows: what the online logs of `index_dir`
    hold (kept to rewrite them when the index compacts).
    """
    self._lock_handle = served_run.hold_lock(index_dir) if index_dir else None
    if index_dir:
      served_run.repair_online_logs(index_dir)
    self.model, self.config = model, config
    self.input_length, self.index_dir = input_length, index_dir
    self.checkpoint_step = checkpoint_step
    self.titles, self.corpus = dict(titles or {}), corpus
    self.online_documents = dict(online_documents or {})
    self._online_rows = dict(online_rows or {})
    self.titles.update(
      {d: doc.title for d, doc in self.online_documents.items()}
    )
    self.max_decode_len = index.max_docid_length() + config.decode_headroom
    self.mesh = mesh
    self._search = shared_search_fn(
      model.config,
      retrieval.fit_to_index(config.search_config(self.max_decode_len), index),
      mesh,
    )
    # On a mesh every bucket is a multiple of the 'data' axis.
    self._buckets = tuple(
      sorted({batching.data_multiple(b, mesh) for b in config.buckets})
    )
    self._update_lock = threading.Lock()
    self._dispatch_lock = threading.Lock()  # a search's dispatch vs a swap
    self._scheme = None
    self._trie = self._build_trie(index)
    slots = list(index.doc_ids)
    self._slot_of = {doc_id: slot for slot, doc_id in enumerate(slots)}
    self._live = _Live(
      index,
      self._replicated(self._trie.to_device()),
      slots,
      self._placed(params),
    )

  def _placed(self, params: Any) -> Any:
    """params on the mesh by training's logical rules (as given without)."""
    specs = retrieval.param_specs(self.model, self.mesh)
    return partitioning.place(params, specs, self.mesh)

  def _replicated(self, arrays: trie_lib.TrieArrays) -> trie_lib.TrieArrays:
    """The trie arrays on every device of the mesh (as given without)."""
    specs = jax.tree.map(lambda _: retrieval.REPLICATED, arrays)
    return partitioning.place(arrays, specs, self.mesh)

  @classmethod
  def from_checkpoint(
    cls,
    checkpoint_dir: str,
    *,
    index_dir: Optional[str] = None,
    step: Optional[int] = None,
    config: ServingConfig = ServingConfig(),
    corpus_path: Optional[str] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
  ) -> "Retriever":
    """Loads a run: <run>/model checkpoints, served index <run>/index.

    Args:
      checkpoint_dir: the orbax model_dir (e.g. workdir/model).
      index_dir: served (mutable) index; default: <checkpoint_dir>/../index.
      step: checkpoint step; the latest if None.
      config: decoding and batching settings.
      corpus_path: BEIR corpus.jsonl to take titles from; default: the one
        model_config.json names, if it exists.
      mesh: shard each batch over its 'data' axis and the params by
        training's logical rules; one device if None.
    """
    run = served_run.load_run(
      checkpoint_dir, index_dir=index_dir, step=step, corpus_path=corpus_path
    )
    return cls(
      run.model,
      run.params,
      run.index,
      input_length=run.input_length,
      config=config,
      index_dir=run.index_dir,
      titles=run.titles,
      corpus=run.corpus,
      online_documents=run.online_documents,
      online_rows=run.online_rows,
      checkpoint_step=run.step,
      mesh=mesh,
    )

  def _build_trie(self, index: index_lib.Index) -> trie_lib.DocidTrie:
    """Host trie with values = slots, bulk-built once, with room to grow.

    Node capacity is twice the tokens of all docids. Each level is twice
    as wide as its widest node and at least as wide as the scheme's tokens
    (+ EOS, up to 64), and so is one level more, for docids that grow a
    level (naive numbers at 10^k): a node that only held EOS may branch over
    every token later. Widths stay per level, so one wide level (text
    docids) does not widen the others. Adding documents online then rarely
    changes the device shapes (each change compiles every bucket again).
    """
    sequences, _ = index.docid_sequences()
    trie = index.build_trie(
      capacity=2 * sum(len(s) for s in sequences),
      vocab_size=self.model.config.vocab_size,
    )
    tokens = min(len(index.table.reserved_tokens) + 1, 64)
    widths = [max(2 * w, tokens) for w in trie.level_widths] + [tokens]
    trie.reserve_level_widths(widths)
    return trie

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
    for bucket in self._buckets:
      tokens = np.zeros((bucket, self.input_length), np.int32)
      jax.block_until_ready(self._search(self._live.params, tokens, arrays))

  def bucket_for(self, n: int) -> int:
    """Smallest bucket holding n queries (n <= max_batch)."""
    return next(b for b in self._buckets if b >= n)

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
    tokens = vocab_lib.encode_texts(
      self._live.index.vocab, queries, self.input_length
    )
    results = []
    for start in range(0, len(queries), self.max_batch):
      chunk = tokens[start : start + self.max_batch]  # [n, Li]
      live, found = self._search_padded(chunk)
      results.extend(self._hits(live, *row, k) for row in zip(*found))
    return results

  def _search_padded(
    self, tokens: np.ndarray
  ) -> tuple[_Live, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[n, Li] -> (the live state searched, (slots, scores [n, max_k],
    docids [n, max_k, D, L])).

    Padded to a bucket; docids are each slot's docid tokens found, best
    first (all PAD rows after the last). The search is dispatched under the
    dispatch lock, so an update cannot donate the trie arrays it reads.
    """
    n = tokens.shape[0]
    padded = batching.pad_rows(tokens, self.bucket_for(n))  # [bucket, Li]
    with self._dispatch_lock:
      live = self._live
      found = self._search(live.params, padded, live.trie_arrays)
    return live, (
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

  def document(self, doc_id: str) -> StoredDocument:
    """What the index holds for `doc_id`: its docids, title and text, and
    when it was added online.

    Raises:
      UnknownDocument: `doc_id` is not indexed.
    """
    docids = self._live.index.table.docids_of.get(doc_id)
    if docids is None:
      raise UnknownDocument(f"no document {doc_id!r} in the index")
    online = self.online_documents.get(doc_id)
    stored = online or (self.corpus.get(doc_id) if self.corpus else None)
    return StoredDocument(
      doc_id,
      tuple(docids),
      stored.title if stored else self.titles.get(doc_id),
      stored.text if stored else None,
      online=online is not None,
      added_at=online.metadata.get(ADDED_AT) if online else None,
    )

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
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    new_docs = {doc.doc_id: _stamped(doc, now) for doc in documents}
    if len(new_docs) != len(documents):
      raise DocumentConflict("a doc_id appears twice in the request")
    with self._update_lock:
      live = self._live
      clashes = [d for d in new_docs if d in live.index.table.docids_of]
      if clashes:
        raise DocumentConflict(f"doc_ids already indexed: {clashes[:5]}")
      table = self._assign(live.index.table, new_docs)
      index = live.index.with_table(table)
      sequences = self._new_sequences(index, new_docs)
      new_tokens = index.vocab.docid_tokens[
        len(live.index.vocab.docid_tokens) :
      ]
      rows = served_run.warm_docid_rows(
        self.model,
        live.params,
        index,
        new_tokens,
        new_docs,
        input_length=self.input_length,
      )
      compacted = self._persist(live.index, index, new_docs, rows=rows)
      self.online_documents.update(new_docs)
      self._online_rows.update(rows)
      for doc_id, doc_sequences in sequences.items():
        slot = self._slot_of[doc_id] = len(live.slots)
        live.slots.append(doc_id)
        for sequence in doc_sequences:
          self._trie.insert(sequence, slot)
      if compacted:
        self._compact_online_files()
      self._publish(
        index,
        served_run.with_docid_rows(live.params, index.vocab, rows),
        reload_vocab=compacted,
      )
      self.titles.update({d: doc.title for d, doc in new_docs.items()})
      return {d: table.docids_of[d] for d in new_docs}

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
      scheme = docids_lib.scheme_for_table(table)
      if indexing.needs_embedder(scheme):
        scheme = docids_lib.scheme_for_table(table, embedder=self._embedder())
      self._scheme = scheme
    return self._scheme

  def _embedder(self):
    """The embedder new documents are placed with: the run's encoder (the
    space its tree was clustered in, indexing.assign_docids), else MiniLM."""
    from gr.model import embed  # pylint: disable=g-import-not-at-top

    encoder_dir = family.family_of(self.model).encoder_dir(self.model)
    if encoder_dir:
      return embed.Embedder.load(encoder_dir, max_length=self.input_length)
    return embed.Embedder.load()

  def _new_sequences(
    self, index: index_lib.Index, new_docs: Mapping[str, Any]
  ) -> dict[str, list[list[int]]]:
    """Token ids (+EOS) of each new document's docids, checked to fit."""
    rows, limit = self.model.config.vocab_size, self.max_decode_len
    out, seen = {}, set()
    for doc_id in new_docs:
      out[doc_id] = []
      for docid in index.table.docids_of[doc_id]:
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
      if doc_id not in live.index.table.docids_of:
        raise UnknownDocument(f"no document {doc_id!r} in the index")
      index = index_lib.Index(
        live.index.table.remove([doc_id]), live.index.vocab
      )
      compacted = self._persist(live.index, index, {}, removed=doc_id)
      self.online_documents.pop(doc_id, None)
      for docid in live.index.table.docids_of[doc_id]:
        self._trie.delete(
          live.index.vocab.encode_docid(docid) + [vocab_lib.EOS_ID]
        )
      live.slots[self._slot_of.pop(doc_id)] = None
      if compacted:
        self._compact_online_files()
      self._publish(index, live.params, reload_vocab=compacted)

  def _persist(
    self,
    before: index_lib.Index,
    after: index_lib.Index,
    new_docs: Mapping[str, beir.Document],
    *,
    rows: Optional[Mapping[str, np.ndarray]] = None,
    removed: Optional[str] = None,
  ) -> bool:
    """Logs an update (if on disk); True if the index compacted.

    An add appends its documents and rows before the index's update record
    (the commit point), so a crash in between leaves at worst lines that
    no table entry uses (ignored).
    """
    if self.index_dir is None:
      return False
    if new_docs:
      served_run.append_online_documents(self.index_dir, new_docs.values())
    if rows:
      served_run.append_online_rows(self.index_dir, rows)
    return index_lib.record_update(
      self.index_dir,
      before,
      after,
      added=new_docs,
      removed=[removed] if removed else [],
    )

  def _compact_online_files(self) -> None:
    """Rewrites the online logs with what is live (after a compaction)."""
    served_run.compact_online_files(
      self.index_dir, self.online_documents, self._online_rows
    )

  def _publish(
    self, index: index_lib.Index, params: Any, *, reload_vocab: bool
  ) -> None:
    """Writes the trie edits into the device arrays and swaps the live state
    (with `params`: docid rows set by an add may change them).

    The edits are scattered into the live arrays in place (donated), under
    the dispatch lock, so no search reads them half-way or after. When a
    capacity grew, the new arrays are a fresh upload: every bucket is
    compiled for them before they go live, while searches use the old ones.
    """
    if reload_vocab:
      index = self._reload_vocab(index)
    if params is not self._live.params:
      params = self._placed(params)
    with self._dispatch_lock:
      old = self._live.trie_arrays
      arrays = self._replicated(self._trie.update_device(old))
      if _shapes(arrays) == _shapes(old):
        self._live = _Live(index, arrays, self._live.slots, params)
        return
    logging.info("trie capacity grew: compiling %d buckets", len(self._buckets))
    self.warm_up(arrays)
    with self._dispatch_lock:
      self._live = _Live(index, arrays, self._live.slots, params)

  def _reload_vocab(self, index: index_lib.Index) -> index_lib.Index:
    """`index` with its vocabulary read from the newest version dir.

    Old version dirs are deleted as new ones are saved (compactions); the
    live vocabulary must not point into one.
    """
    version_dir = index_lib.current_version_dir(self.index_dir)
    vocab = wordpiece.load_vocabulary(os.path.join(version_dir, "vocab"))
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


def _shapes(arrays: trie_lib.TrieArrays):
  """What a compiled search depends on: tree structure and leaf shapes."""
  return jax.tree.structure(arrays), [a.shape for a in jax.tree.leaves(arrays)]
