"""The served index: trie, table, params' docid rows and online logs, and
the updates to them (gr/serve/retriever.py's `Retriever` searches it).

Online updates (the "trie_only" strategy: the model is not retrained) go
through `add_documents` / `delete_document`, under one lock, in O(k) for k
documents (amortised; no step touches every document):

  - docids come from the table's own scheme (gr/serve/new_docids.py), and
    only the new ones are checked (DocidTable.extend);
  - the documents (and new docid rows) are appended to the online logs,
    then one record to the index's update log commits the change
    (gr/index/artifact.py `record_update`; now and then it compacts into a
    full version);
  - the host trie is edited and the edits are written into the device
    arrays in place (DocidTrie.update_device); when a capacity grows the
    arrays are uploaded whole and every bucket is compiled again BEFORE the
    new arrays go live;
  - a docid token past the model's embedding rows grows them first
    (gr/serve/online_rows.py: the docid rows doubled, zero rows, the trie
    rebuilt for the new vocabulary size, every bucket compiled before the
    grown state goes live).

With a pretrained encoder, each docid token an add creates (an atomic
`<d_N>`, a semantic leaf position past c) gets its documents' mean-pooled
encoder output as its row (warm_start's rule, online_rows.RowRule), so the
document is retrievable at once; the rows are logged beside the index
(gr/serve/served_run.py) and put back on restart. A T5 model's stay zero.

Searches never take the update lock: they read `LiveState`, swapped whole
(under a short dispatch lock) once an update is applied. Trie values are
"slots": positions in an append-only list of doc_ids, so deleting a
document never renumbers the others.
"""

import dataclasses
import functools
import logging
import os
import threading
from typing import Any, Mapping, Optional, Sequence

import jax
import numpy as np

from gr import batching
from gr import partitioning
from gr.data import beir
from gr.decode import aggregate
from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.index import docid_trie
from gr.index import trie as trie_lib
from gr.index import vocab as vocab_lib
from gr.index import wordpiece
from gr.model import models
from gr.search import retrieval
from gr.serve import new_docids
from gr.serve import online_rows
from gr.serve import served_plan
from gr.serve import served_run
from gr.serve import serving_config
from gr.serve.serving_config import (
  DocumentConflict,
  ServingConfig,
  StoredDocument,
  UnknownDocument,
)


@dataclasses.dataclass(frozen=True)
class LiveState:
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
  search: Any  # the jitted search of the model these params fit
  # The lexical plan (gr/serve/served_plan.py) over these slots, or None
  # (the model alone); with lexical_only, `search` is the term sets' top-k.
  plan: Optional[plan_lib.LexicalPlan] = None
  lexical_only: bool = False

  def found(self, tokens: np.ndarray) -> aggregate.RankedDocuments:
    """This state's search of encoder tokens [B, Li] (dispatched, not
    waited for); the lexical-only search has no docids (all PAD)."""
    if self.plan is None:
      return self.search(self.params, tokens, self.trie_arrays)
    if self.lexical_only:
      documents, scores = self.search(self.plan, tokens)
      empty = np.zeros(documents.shape + (1, 1), np.int32)
      return aggregate.RankedDocuments(
        documents, scores, empty, scores[..., None]
      )
    return self.search(self.params, tokens, self.trie_arrays, self.plan)


@functools.lru_cache(maxsize=8)
def shared_search_fn(
  model_config: models.ModelConfig,
  search: retrieval.SearchConfig,
  mesh: Optional[jax.sharding.Mesh] = None,
  with_plan: bool = False,
):
  """One jitted search per (model config, search config, mesh, plan or
  not) in this process.

  Retrievers of the same model (e.g. one reloaded after a restart in the
  same process) share it, and with it every compiled bucket.
  """
  return retrieval.make_search_fn(
    models.EncoderDecoderModel(model_config), search, mesh, with_plan=with_plan
  )


@functools.lru_cache(maxsize=8)
def shared_lexical_search_fn(
  top_k: int, mesh: Optional[jax.sharding.Mesh] = None
):
  """One jitted lexical-only search (plan weight inf) per top_k and mesh."""
  return retrieval.make_lexical_search_fn(top_k, mesh)


def _shapes(arrays):
  """What a compiled search depends on: tree structure (static fields
  included) and leaf shapes, of trie arrays or a plan."""
  return jax.tree.structure(arrays), [a.shape for a in jax.tree.leaves(arrays)]


DEFAULT_CONFIG = ServingConfig()


class ServedIndex:
  """A trained model and its mutable index, served: the live state that
  searches read, and online add/delete persisted under `index_dir`."""

  def __init__(
    self,
    model: models.EncoderDecoderModel,
    params: Any,
    index: index_lib.Index,
    *,
    input_length: int,
    config: ServingConfig = DEFAULT_CONFIG,
    index_dir: Optional[str] = None,
    titles: Optional[Mapping[str, str]] = None,
    corpus: Optional[served_run.CorpusFile] = None,
    online_documents: Optional[Mapping[str, beir.Document]] = None,
    online_rows: Optional[Mapping[str, np.ndarray]] = None,
    checkpoint_step: Optional[int] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
    checkpoint_rows: Optional[int] = None,
    term_sets: Optional[term_sets_lib.TermSets] = None,
    lexical_weight: float = 0.0,
    trained_doc_ids: Optional[Sequence[str]] = None,
  ):
    """Serves `index` with `model`; updates persist under `index_dir`.

    corpus: where trained documents are read back (`document`).
    online_documents, online_rows: what the online logs of `index_dir`
    hold (kept to rewrite them when the index compacts).
    checkpoint_rows: the checkpoint's embedding rows, where growth starts
    (online_rows.grown_rows); default: the model's.
    term_sets, lexical_weight: the lexical plan (gr/serve/served_plan.py):
    a docid scores log-prob + lexical_weight * its document's lexical score
    (inf: the term sets alone; 0: the model alone, term_sets unused).
    term_sets' rows follow `trained_doc_ids` (default: `index`'s doc_ids);
    online documents get theirs from their text.
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
    self.checkpoint_rows = checkpoint_rows or model.config.vocab_size
    # On a mesh every bucket is a multiple of the 'data' axis.
    self._buckets = tuple(
      sorted({batching.data_multiple(b, mesh) for b in config.buckets})
    )
    self._update_lock = threading.Lock()
    self._dispatch_lock = threading.Lock()  # a search's dispatch vs a swap
    self._namer = new_docids.DocidNamer(model, input_length)
    self._row_rule = None
    self._encoder = None
    self.lexical_weight = float(lexical_weight)
    self._plan = None
    if self.lexical_weight > 0:
      if term_sets is None:
        raise ValueError(
          f"lexical_weight {lexical_weight} needs the run's term sets"
        )
      self._plan = served_plan.ServedPlan(
        term_sets,
        index.doc_ids if trained_doc_ids is None else trained_doc_ids,
        index.vocab,
        self.lexical_weight,
        self.max_decode_len,
      )
      self._plan.remember(
        self._plan.sets_of(
          index.vocab,
          {
            d: doc.text
            for d, doc in self.online_documents.items()
            if d in index.table.docids_of
          },
        )
      )
    self._live = self._fresh_live(index, self._placed(params))

  def _search_fn(self, index: index_lib.Index):
    """The jitted search of the current model (shared in the process): with
    the plan, or the term sets' top-k for weight inf."""
    if self._plan is not None and self._plan.lexical_only:
      return shared_lexical_search_fn(self.config.max_k, self.mesh)
    search = self.config.search_config(self.max_decode_len)
    return shared_search_fn(
      self.model.config,
      retrieval.fit_to_index(search, index),
      self.mesh,
      with_plan=self._plan is not None,
    )

  def _fresh_live(
    self, index: index_lib.Index, params: Any, extra_tokens: int = 0
  ) -> LiveState:
    """A live state over a trie built whole from `index` (slots renumbered
    from its doc_ids) for the current model, with room for `extra_tokens`
    more docid tokens."""
    self._trie = self._build_trie(index, extra_tokens)
    slots = list(index.doc_ids)
    self._slot_of = {doc_id: slot for slot, doc_id in enumerate(slots)}
    arrays = self._replicated(self._trie.to_device())
    plan = None
    if self._plan is not None:
      plan = self._replicated(self._plan.build(index, slots))
    return LiveState(
      index,
      arrays,
      slots,
      params,
      self._search_fn(index),
      plan,
      self._plan is not None and self._plan.lexical_only,
    )

  def _placed(self, params: Any) -> Any:
    """params on the mesh by training's logical rules (as given without)."""
    specs = partitioning.param_specs(self.model, self.mesh)
    return partitioning.place(params, specs, self.mesh)

  def _replicated(self, arrays):
    """Trie arrays or a plan on every device of the mesh (as given
    without)."""
    specs = jax.tree.map(lambda _: partitioning.REPLICATED, arrays)
    return partitioning.place(arrays, specs, self.mesh)

  def _build_trie(
    self, index: index_lib.Index, extra_tokens: int = 0
  ) -> docid_trie.DocidTrie:
    """Host trie with values = slots, bulk-built once, with room to grow.

    Node capacity is twice the tokens of all docids (and `extra_tokens`). Each level is twice
    as wide as its widest node and at least as wide as the scheme's tokens
    (+ EOS, up to 64), and so is one level more, for docids that grow a
    level (naive numbers at 10^k): a node that only held EOS may branch over
    every token later. Widths stay per level, so one wide level (text
    docids) does not widen the others. Adding documents online then rarely
    changes the device shapes (each change compiles every bucket again).
    """
    sequences, _ = index.docid_sequences()
    trie = index.build_trie(
      capacity=2 * (sum(len(s) for s in sequences) + extra_tokens),
      vocab_size=self.model.config.vocab_size,
    )
    tokens = min(len(index.table.reserved_tokens) + 1, 64)
    widths = [max(2 * w, tokens) for w in trie.level_widths] + [tokens]
    trie.reserve_level_widths(widths)
    return trie

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

  def warm_up(self, live: Optional[LiveState] = None) -> None:
    """Compiles (or checks compiled) every bucket for `live`'s shapes; with
    None, for the live state's and the document encoder of online adds."""
    if live is None:
      live = self._live
      if online_rows.warm_rows_of(self.model) and self.index_dir is not None:
        self._document_encoder().warm_up(live.params)
    for bucket in self._buckets:
      tokens = np.zeros((bucket, self.input_length), np.int32)
      jax.block_until_ready(live.found(tokens))

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
      added_at=online.metadata.get(serving_config.ADDED_AT) if online else None,
    )

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
        is longer than the compiled decode length, or cannot be encoded.
        A docid that needs a vocabulary id beyond the model's embedding rows
        grows them first (`_grown_for`).
    """
    now = serving_config.now()
    new_docs = {
      doc.doc_id: serving_config.stamped(doc, now) for doc in documents
    }
    if len(new_docs) != len(documents):
      raise DocumentConflict("a doc_id appears twice in the request")
    with self._update_lock:
      live = self._live
      clashes = [d for d in new_docs if d in live.index.table.docids_of]
      if clashes:
        raise DocumentConflict(f"doc_ids already indexed: {clashes[:5]}")
      table = self._namer.assign(live.index.table, new_docs)
      sets = (
        self._plan.sets_of(
          live.index.vocab, {d: doc.text for d, doc in new_docs.items()}
        )
        if self._plan is not None
        else {}
      )
      index = live.index.with_table(table)
      sequences = self._namer.sequences(
        index,
        new_docs,
        trie=self._trie,
        rows=self.model.config.vocab_size,
        limit=self.max_decode_len,
      )
      live = self._grown_for(index, sequences)
      new_tokens = index.vocab.docid_tokens[
        len(live.index.vocab.docid_tokens) :
      ]
      rows = self._warm_rows(live, index, new_tokens, new_docs)
      compacted = self._persist(live.index, index, new_docs, rows=rows)
      self.online_documents.update(new_docs)
      self._online_rows.update(rows)
      new_slots = {}
      for doc_id, doc_sequences in sequences.items():
        slot = self._slot_of[doc_id] = len(live.slots)
        live.slots.append(doc_id)
        new_slots[slot] = (doc_id, doc_sequences)
        for sequence in doc_sequences:
          self._trie.insert(sequence, slot)
      plan = live.plan
      if self._plan is not None:
        self._plan.remember(sets)
        plan = self._plan.added(plan, index, live.slots, new_slots)
      if compacted:
        self._compact_online_files()
      self._publish(
        index,
        online_rows.set_rows(live.params, index.vocab, rows),
        reload_vocab=compacted,
        plan=plan,
      )
      self.titles.update({d: doc.title for d, doc in new_docs.items()})
      return {d: table.docids_of[d] for d in new_docs}

  def _grown_for(
    self, index: index_lib.Index, sequences: Mapping[str, list[list[int]]]
  ) -> LiveState:
    """The live state, first grown (and live) if `sequences` need more
    embedding rows than the model has (online_rows: the docid rows doubled,
    the trie rebuilt for the new vocabulary size, every bucket compiled
    before it goes live; searches meanwhile read the old state)."""
    needed = 1 + max(max(s) for seqs in sequences.values() for s in seqs)
    model, params = online_rows.grown_model(
      self.model,
      self._live.params,
      start_rows=self.checkpoint_rows,
      base_size=index.vocab.base_size,
      needed=needed,
    )
    if model is self.model:
      return self._live
    logging.info(
      "docid rows full: %d -> %d embedding rows, compiling %d buckets",
      self.model.config.vocab_size,
      model.config.vocab_size,
      len(self._buckets),
    )
    self.model = model
    pending = sum(len(s) for seqs in sequences.values() for s in seqs)
    live = self._fresh_live(self._live.index, self._placed(params), pending)
    self.warm_up(live)
    with self._dispatch_lock:
      self._live = live
    return live

  def _document_encoder(self) -> online_rows.DocumentEncoder:
    if self._encoder is None:
      self._encoder = online_rows.DocumentEncoder(self.model, self.input_length)
    return self._encoder

  def _warm_rows(
    self,
    live: LiveState,
    index: index_lib.Index,
    new_tokens: Sequence[str],
    new_docs: Mapping[str, beir.Document],
  ) -> dict[str, np.ndarray]:
    """Rows of the new docid tokens from the new documents' embeddings
    (online_rows.RowRule; models with a BERT-family encoder only)."""
    if not online_rows.warm_rows_of(self.model) or not new_tokens:
      return {}
    if self._row_rule is None:
      embedding = np.asarray(live.params["token_embedder"]["embedding"])
      self._row_rule = online_rows.RowRule.of(
        embedding, live.index.table, live.index.vocab
      )
    tokens = vocab_lib.encode_texts(
      index.vocab, [doc.text for doc in new_docs.values()], self.input_length
    )
    vectors = self._document_encoder().vectors(live.params, tokens)
    return self._row_rule.rows(
      index.table, index.vocab, new_tokens, dict(zip(new_docs, vectors))
    )

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
      slot = self._slot_of.pop(doc_id)
      live.slots[slot] = None
      plan = live.plan
      if self._plan is not None:
        plan = self._plan.removed(plan, slot)
        self._plan.forget(doc_id)
      if compacted:
        self._compact_online_files()
      self._publish(index, live.params, reload_vocab=compacted, plan=plan)

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
    """Rewrites the online logs with what is live (after a compaction),
    and puts the checkpoint's term sets in the new version dir, so that a
    restart reads the sets it served (served_run.load_term_sets looks there
    first; a crash before this falls back to the checkpoint's artifact)."""
    served_run.compact_online_files(
      self.index_dir, self.online_documents, self._online_rows
    )
    if self._plan is not None:
      self._plan.term_sets.save(index_lib.current_version_dir(self.index_dir))

  def _publish(
    self,
    index: index_lib.Index,
    params: Any,
    *,
    reload_vocab: bool,
    plan: Optional[plan_lib.LexicalPlan] = None,
  ) -> None:
    """Writes the trie edits into the device arrays and swaps the live state
    (with `params`: docid rows set by an add may change them; with `plan`,
    the lexical plan over the edited slots).

    The edits are scattered into the live arrays in place (donated), under
    the dispatch lock, so no search reads them half-way or after. When a
    capacity grew (the trie's or the plan's), the new arrays are a fresh
    copy: every bucket is compiled for them, once, before they go live,
    while searches use the old ones.
    """
    if reload_vocab:
      index = self._reload_vocab(index)
    if params is not self._live.params and self.mesh is not None:
      params = self._placed(params)
    if plan is not None:
      plan = self._replicated(plan)
    plan_grew = plan is not None and _shapes(plan) != _shapes(self._live.plan)
    with self._dispatch_lock:
      live = self._live
      arrays = self._replicated(
        self._trie.update_device(live.trie_arrays, donate=not plan_grew)
      )
      new = dataclasses.replace(
        live, index=index, trie_arrays=arrays, params=params, plan=plan
      )
      if not plan_grew and _shapes(arrays) == _shapes(live.trie_arrays):
        self._live = new
        return
    logging.info(
      "trie or plan capacity grew: compiling %d buckets", len(self._buckets)
    )
    self.warm_up(new)
    with self._dispatch_lock:
      self._live = new

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
