"""The served index's online updates: `ServedIndex` adds and deletes
documents in the live index of gr/serve/live_state.py (trie, table,
params' docid rows, plan) and persists them in its online logs
(gr/serve/online_logs.py); gr/serve/retriever.py's `Retriever` searches it.

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
    arrays in place (DocidTrie.update_device); when a capacity grows (the
    trie's or the plan's) the arrays are uploaded whole and every bucket
    is compiled BEFORE the new arrays go live;
  - a docid token past the model's embedding rows grows them first
    (gr/serve/online_rows.py: the docid rows doubled, zero rows; the trie
    and plan kept while the trie's arrays hold the new vocabulary size;
    every bucket compiled before the grown state goes live).
  Each of these growths is foreseen and its buckets compiled ahead in a
  background thread (gr/serve/growth_ahead.py), so the add that grows
  takes that search instead of waiting for a compile.

With a pretrained encoder, each docid token an add creates (an atomic
`<d_N>`, a semantic leaf position past c) gets its documents' mean-pooled
encoder output as its row (warm_start's rule, online_rows.RowRule), so the
document is retrievable at once; the rows are logged beside the index
(gr/serve/online_logs.py) and put back on restart. A T5 model's stay zero.

Deletes free what they can reuse. A scheme with a free list (atomic, RQ
with residual tokens: gr/docids/ `reuse_retired`) gives a new document a
deleted document's own token first, and its row is overwritten by the new
document's (zeroed for a T5 model), so add/delete cycles do not grow the
vocabulary or the embedding rows; the index's update log records the reuse
("reused"), so a restart replays it. A new document also takes a deleted
document's slot (trie value, plan document), so the plan's document count
stays bounded; the plan's entries are compacted in place when its padding
runs out (gr/serve/served_plan.py).

Searches never take the update lock: they read the `LiveState`, which
`_publish` swaps whole (under a short dispatch lock) once an update is
applied. An add's trie edits and docid rows are written into the live
device arrays in place (donated buffers) under that lock, so an add costs
O(rows written), not a copy of the embedding table; `params` taken from a
live state before an add are invalid after it (copy them to keep them).
"""

import contextlib
import dataclasses
import gc
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from gr.data import beir
from gr.decode import plan as plan_lib
from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib
from gr.index import wordpiece
from gr.serve import growth_ahead
from gr.serve import heap
from gr.serve import live_state
from gr.serve import online_logs
from gr.serve import online_rows
from gr.serve import serving_config
from gr.serve.live_state import LiveState, shapes
from gr.serve.serving_config import DocumentConflict, UnknownDocument


def _return_freed_memory() -> None:
  """After a growth: collects what the replaced state held (its arrays,
  and its search's executables for the old shapes) and hands the freed
  heap back to the OS (heap.release_freed_memory; elsewhere the collection
  only). Without it, each growth left a few hundred MB of a long-running
  server's RSS behind (scripts/soak_service.py)."""
  gc.collect()
  heap.release_freed_memory()


class ServedIndex(growth_ahead.GrowthAhead, live_state.LiveIndex):
  """A trained model and its mutable index, served: the live state that
  searches read (live_state.LiveIndex), and online add/delete persisted
  under `index_dir`."""

  # An add writes its docid rows into the live embedding in place; False:
  # into a copy of the table (the path before; scripts/bench_online.py
  # times both).
  rows_in_place = True

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
    vectors, sets = self._prepared(new_docs)
    search = self._live.search
    try:
      with self._update_lock:
        return self._add_prepared(new_docs, vectors, sets)
    finally:
      # A growth (rows, trie or plan) always takes a fresh search; once the
      # update is done nothing here holds the state it replaced.
      if self._live.search is not search:
        _return_freed_memory()

  def _add_prepared(
    self,
    new_docs: Mapping[str, beir.Document],
    vectors: Optional[np.ndarray],
    sets: dict,
  ) -> dict[str, tuple[str, ...]]:
    """add_documents' update of the live index, under the update lock."""
    live = self._live
    clashes = [d for d in new_docs if d in live.index.table.docids_of]
    if clashes:
      raise DocumentConflict(f"doc_ids already indexed: {clashes[:5]}")
    table = self._namer.assign(live.index.table, new_docs)
    index = live.index.with_table(table)
    sequences = self._namer.sequences(
      index,
      new_docs,
      trie=self._trie,
      rows=self.model.config.vocab_size,
      limit=self.max_decode_len,
    )
    reused = table.released_from(live.index.table)
    live = self._grown_for(index, sequences)
    rows = self._token_rows(live, index, new_docs, reused, vectors)
    compacted = self._persist(live.index, index, new_docs, rows=rows)
    self.online_documents.update(new_docs)
    self._online_rows.update(rows)
    new_slots = {}
    for doc_id, doc_sequences in sequences.items():
      slot = self._slot_of[doc_id] = self._take_slot(live.slots, doc_id)
      new_slots[slot] = (doc_id, doc_sequences)
      for sequence in doc_sequences:
        self._trie.insert(sequence, slot)
    plan = live.plan
    if self._plan is not None:
      self._plan.remember(sets)
      plan = self._plan.added(plan, index, live.slots, new_slots)
    if compacted:
      self._compact_online_files()
    self._publish(index, rows=rows, reload_vocab=compacted, plan=plan)
    self.titles.update({d: doc.title for d, doc in new_docs.items()})
    self._maybe_prepare_growth()
    return {d: table.docids_of[d] for d in new_docs}

  def _grown_for(
    self, index: index_lib.Index, sequences: Mapping[str, list[list[int]]]
  ) -> LiveState:
    """The live state, first grown (and live) if `sequences` need more
    embedding rows than the model has (online_rows: the docid rows
    doubled; the trie, slots and plan kept where the trie's arrays hold
    the new vocabulary size, else rebuilt for it; every bucket compiled
    before it goes live, or ahead by growth_ahead; searches meanwhile
    read the old state)."""
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
      "docid rows full: %d -> %d embedding rows",
      self.model.config.vocab_size,
      model.config.vocab_size,
    )
    old_config, self.model, ahead = self.model.config, model, None
    if self._trie.holds_vocab(model.config.vocab_size):
      # Only the rows and the search change: the trie, slots and plan
      # stay, so a rows growth compiled ahead (growth_ahead) is reused.
      self._trie.set_vocab_size(model.config.vocab_size)
      live = self._live
      ahead = self._search_ahead(
        "rows", live.index, live.trie_arrays, live.plan
      )
      live = dataclasses.replace(live, params=self._placed(params),
        search=self._search_fn(live.index, function=ahead))  # fmt: skip
    else:
      pending = sum(len(s) for seqs in sequences.values() for s in seqs)
      live = self._fresh_live(self._live.index, self._placed(params), pending)
    self._growth_done()
    self._warm_up_grown(live, ahead is not None, "rows")
    with self._dispatch_lock:
      self._live = live
    live_state.forget_searches(old_config)
    return live

  def _take_slot(self, slots: list[Optional[str]], doc_id: str) -> int:
    """A slot for `doc_id`: a deleted document's (the last freed), else a
    new one at the end. A search still in flight over a state from before
    that delete cannot mistake the new document for the old: Retriever
    keeps only documents its own state's table holds."""
    if self._free_slots:
      slot = self._free_slots.pop()
      slots[slot] = doc_id
      return slot
    slots.append(doc_id)
    return len(slots) - 1

  def _token_rows(
    self,
    live: LiveState,
    index: index_lib.Index,
    new_docs: Mapping[str, beir.Document],
    reused: Sequence[str],
    vectors: Optional[np.ndarray] = None,
  ) -> dict[str, np.ndarray]:
    """Embedding rows of the docid tokens an add hands out: the new ones
    (past `live`'s vocabulary) and the own tokens (last) of the retired
    docids it reuses (`reused`). With a pretrained encoder they come from
    the new documents (`_warm_rows`); otherwise a reused token's row is
    zeroed (as a new token's is), so that the new document inherits
    nothing the model learnt for the deleted one."""
    new_tokens = index.vocab.docid_tokens[len(live.index.vocab.docid_tokens) :]
    own = [docid.split(" ")[-1] for docid in reused]
    rows = self._warm_rows(
      live, index, list(new_tokens) + own, new_docs, vectors
    )
    width = live.params["token_embedder"]["embedding"].shape[1]
    for token in own:
      rows.setdefault(token, np.zeros(width, np.float32))
    return rows

  def _warm_rows(
    self,
    live: LiveState,
    index: index_lib.Index,
    new_tokens: Sequence[str],
    new_docs: Mapping[str, beir.Document],
    vectors: Optional[np.ndarray] = None,
  ) -> dict[str, np.ndarray]:
    """Rows of the new docid tokens from the new documents' embeddings
    `vectors` [n, D] (computed here if None; online_rows.RowRule; models
    with a BERT-family encoder only)."""
    if not online_rows.warm_rows_of(self.model) or not new_tokens:
      return {}
    if self._row_rule is None:
      embedding = np.asarray(live.params["token_embedder"]["embedding"])
      self._row_rule = online_rows.RowRule.of(
        embedding, live.index.table, live.index.vocab
      )
    if vectors is None:
      vectors = self._document_vectors(live.params, new_docs)
    return self._row_rule.rows(
      index.table, index.vocab, new_tokens, dict(zip(new_docs, vectors))
    )

  def _document_vectors(
    self, params: Any, new_docs: Mapping[str, beir.Document]
  ) -> np.ndarray:
    """[n, D] unit mean-pooled encoder output of the new documents' bodies
    (encoder params only: those never change while serving)."""
    encoder = self._document_encoder()
    return encoder.collect(self._dispatch_vectors(params, new_docs))

  def _dispatch_vectors(
    self, params: Any, new_docs: Mapping[str, beir.Document]
  ) -> list:
    """The encoder passes over the new documents' bodies, dispatched
    (DocumentEncoder.dispatch; `collect` reads them)."""
    tokens = vocab_lib.encode_texts(
      self._live.index.vocab,
      [doc.text for doc in new_docs.values()],
      self.input_length,
    )  # [n, Li]
    return self._document_encoder().dispatch(params, tokens)

  def _prepared(
    self, new_docs: Mapping[str, beir.Document]
  ) -> tuple[Optional[np.ndarray], dict]:
    """What an add computes before it takes the update lock, so that other
    updates need not wait for it: the new documents' term sets (frozen
    statistics) and, where every add hands out tokens of its own (atomic,
    RQ with residual tokens, semantic node tokens) to a model that
    warm-starts rows, their encoder vectors [n, D] (else None: computed
    under the lock if needed). The encoder passes are dispatched first and
    run while the host computes the term sets."""
    live = self._live
    scheme = self._namer.scheme(live.index.table)
    encode = online_rows.warm_rows_of(self.model) and getattr(
      scheme, "reuses_tokens", False
    )
    with self._encode_lock if encode else contextlib.nullcontext():
      pending = self._dispatch_vectors(live.params, new_docs) if encode else []
      sets = {}
      if self._plan is not None:
        texts = {d: doc.text for d, doc in new_docs.items()}
        sets = self._plan.sets_of(live.index.vocab, texts)
      if not encode:
        return None, sets
      return self._document_encoder().collect(pending), sets

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
      self._free_slots.append(slot)
      plan = live.plan
      if self._plan is not None:
        plan = self._plan.removed(plan, slot)
        self._plan.forget(doc_id)
      if compacted:
        self._compact_online_files()
      self._publish(index, reload_vocab=compacted, plan=plan)

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
      online_logs.append_online_documents(self.index_dir, new_docs.values())
    if rows:
      online_logs.append_online_rows(self.index_dir, rows)
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
    restart reads the sets it served (run_plan.load_term_sets looks there
    first; a crash before this falls back to the checkpoint's artifact)."""
    online_logs.compact_online_files(
      self.index_dir, self.online_documents, self._online_rows
    )
    if self._plan is not None:
      self._plan.term_sets.save(index_lib.current_version_dir(self.index_dir))

  def _publish(
    self,
    index: index_lib.Index,
    *,
    reload_vocab: bool,
    rows: Optional[Mapping[str, np.ndarray]] = None,
    plan: Optional[plan_lib.LexicalPlan] = None,
  ) -> None:
    """Writes the trie edits and docid `rows` (token -> [D], set by an add)
    into the device arrays and swaps the live state (with `plan`, the
    lexical plan over the edited slots).

    The edits and rows are written into the live arrays in place (donated:
    O(edits), no copy of the embedding), under the dispatch lock, so no
    search dispatches on the old arrays after. Searches dispatched before
    read the old values (the writes wait for them). When a capacity grew
    (the trie's or the plan's), the new arrays are fresh copies: every
    bucket is compiled for them, once, before they go live, while searches
    keep using the old ones.
    """
    if reload_vocab:
      index = self._reload_vocab(index)
    if plan is not None:
      plan = self._replicated(plan)
    plan_grew = plan is not None and shapes(plan) != shapes(self._live.plan)
    with self._dispatch_lock:
      live = self._live
      arrays = self._replicated(
        self._trie.update_device(live.trie_arrays, donate=not plan_grew)
      )
      grew = plan_grew or shapes(arrays) != shapes(live.trie_arrays)
      if not grew:
        params = self._with_rows(
          live.params, index, rows, in_place=self.rows_in_place
        )
        self._live = dataclasses.replace(
          live, index=index, trie_arrays=arrays, params=params, plan=plan
        )
        return
    params = self._with_rows(live.params, index, rows, in_place=False)
    growth = "plan" if plan_grew else "trie"
    ahead = self._search_ahead(growth, index, arrays, plan)
    new = dataclasses.replace(
      live,
      index=index,
      trie_arrays=arrays,
      params=params,
      plan=plan,
      search=self._search_fn(index, fresh=True, function=ahead),
    )
    self._growth_done()
    self._warm_up_grown(new, ahead is not None, growth)
    with self._dispatch_lock:
      self._live = new

  def _warm_up_grown(self, live: LiveState, ahead: bool, growth: str) -> None:
    """Compiles every bucket of a grown state before it goes live, unless
    its search was compiled ahead for these very shapes (then nothing is
    left to compile: the thread warmed the same buckets and scatters)."""
    if ahead:
      logging.info("%s grew: its search was compiled ahead", growth)
      return
    logging.info("%s grew: compiling %d buckets", growth, len(self._buckets))
    self.warm_up(live)

  def _with_rows(
    self,
    params: Any,
    index: index_lib.Index,
    rows: Optional[Mapping[str, np.ndarray]],
    *,
    in_place: bool,
  ) -> Any:
    """`params` with docid `rows` set (online_rows.set_rows; in place: the
    old arrays are invalid after), placed on the mesh."""
    if not rows:
      return params
    params = online_rows.set_rows(params, index.vocab, rows, in_place=in_place)
    return params if self.mesh is None else self._placed(params)

  def _reload_vocab(self, index: index_lib.Index) -> index_lib.Index:
    """`index` with its vocabulary read from the newest version dir.

    Old version dirs are deleted as new ones are saved (compactions); the
    live vocabulary must not point into one.
    """
    version_dir = index_lib.current_version_dir(self.index_dir)
    vocab = wordpiece.load_vocabulary(os.path.join(version_dir, "vocab"))
    return index_lib.Index(index.table, vocab)
