"""A served model and index as searches see them: `LiveState` (what one
search reads, swapped whole on every update), the jitted searches shared in
the process, and `LiveIndex`, which builds the live state (trie with values
= slots, params and plan placed on the mesh), warms up its buckets and
answers reads. The updates to it are gr/serve/served_index.py's
`ServedIndex`; gr/serve/retriever.py's `Retriever` searches it.

Searches never take the update lock: they read `LiveState`, swapped whole
(under a short dispatch lock) once an update is applied. Trie values are
"slots": positions in an append-only list of doc_ids, so deleting a
document never renumbers the others.
"""

import concurrent.futures
import dataclasses
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
from gr.model import lexical as lexical_lib
from gr.model import models
from gr.search import retrieval
from gr.serve import heap
from gr.serve import new_docids
from gr.serve import online_logs
from gr.serve import online_rows
from gr.serve import served_plan
from gr.serve import served_run
from gr.serve import serving_config
from gr.serve.serving_config import (
  ServingConfig,
  StoredDocument,
  UnknownDocument,
)


@dataclasses.dataclass(frozen=True)
class LiveState:
  """What a search reads, swapped as a whole on every update.

  `slots` (trie value -> doc_id, None once deleted) is one list shared by
  every version, appended to, cleared and reused in place under the update
  lock: a search over older trie arrays never meets a slot past its own, a
  slot cleared under it is a document being deleted, and a slot reused
  under it names a document its `index` does not hold (skipped).
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
      documents, scores = self.search(self.params, self.plan, tokens)
      empty = np.zeros(documents.shape + (1, 1), np.int32)
      return aggregate.RankedDocuments(
        documents, scores, empty, scores[..., None]
      )
    return self.search(self.params, tokens, self.trie_arrays, self.plan)


class _SearchRegistry:
  """The jitted searches of this process, by key, the last `size` used.

  Retrievers of the same model (e.g. one reloaded after a restart in the
  same process) share one, and with it every compiled bucket. A growth
  replaces it (a fresh one, or one compiled ahead: `make(..., function)`),
  and a rows growth `forget`s the old model's, so the executables compiled
  for the old shapes are freed once no live state holds them (a
  long-lived server would otherwise keep every generation's).
  """

  def __init__(self, size: int = 8):
    self._size = size
    self._functions: dict = {}
    self._lock = threading.Lock()

  def make(self, key: tuple, fresh: bool = False, function=None):
    """The search of `key`: the shared one, else (or if `fresh`) a new one,
    or `function` (built for `key`) in its place."""
    with self._lock:
      if function is None and not fresh:
        function = self._functions.pop(key, None)
      if function is None:
        function = build_search(key)
      self._functions.pop(key, None)
      self._functions[key] = function  # the most recently used last
      while len(self._functions) > self._size:
        self._functions.pop(next(iter(self._functions)))
      return function

  def forget(self, model_config: models.ModelConfig) -> None:
    """Drops every search of `model_config` (a grown model replaced it);
    every key is (kind, model config, ...)."""
    with self._lock:
      for key in [k for k in self._functions if k[1] == model_config]:
        del self._functions[key]


_SEARCHES = _SearchRegistry()


def build_search(key: tuple):
  """A new jitted search for `key`: ("search", model config, search
  config, mesh, with_plan), or ("lexical", model config, top_k, mesh) for
  the term sets' top-k (plan weight inf)."""
  kind, model_config, *rest = key
  model = models.EncoderDecoderModel(model_config)
  if kind == "lexical":
    top_k, mesh = rest
    return retrieval.make_lexical_search_fn(model, top_k, mesh)
  search, mesh, with_plan = rest
  return retrieval.make_search_fn(model, search, mesh, with_plan=with_plan)


def forget_searches(model_config: models.ModelConfig) -> None:
  """Frees the shared searches of a model a grown one replaced."""
  _SEARCHES.forget(model_config)


def shapes(arrays):
  """What a compiled search depends on: tree structure (static fields
  included) and leaf shapes, of trie arrays or a plan."""
  return jax.tree.structure(arrays), [a.shape for a in jax.tree.leaves(arrays)]


DEFAULT_CONFIG = ServingConfig()


class LiveIndex:
  """A trained model and its index, served: the live state that searches
  read, built and warmed up, and the reads (`document`, properties); the
  online updates are the subclass's (served_index.ServedIndex)."""

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
    term_weight_head: Optional[lexical_lib.TermWeightHead] = None,
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
    online documents get theirs from their text. term_weight_head: the
    plan's query-token weights (gr/model/lexical.py; None: 1 each).
    """
    self._lock_handle = online_logs.hold_lock(index_dir) if index_dir else None
    if index_dir:
      online_logs.repair_online_logs(index_dir)
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
    # One encoder pass of an add at a time (outside the update lock): on
    # few cores, parallel passes would take every core from the searches.
    self._encode_lock = threading.Lock()
    self._dispatch_lock = threading.Lock()  # a search's dispatch vs a swap
    self._namer = new_docids.DocidNamer(model, input_length)
    self._row_rule = None
    self._encoder = None
    self.lexical_weight = float(lexical_weight)
    self._plan = self._lexical_plan(
      term_sets, trained_doc_ids, index, term_weight_head
    )
    self._live = self._fresh_live(index, self._placed(params))

  def _lexical_plan(
    self,
    term_sets: Optional[term_sets_lib.TermSets],
    trained_doc_ids: Optional[Sequence[str]],
    index: index_lib.Index,
    head: Optional[lexical_lib.TermWeightHead] = None,
  ) -> Optional[served_plan.ServedPlan]:
    """The lexical plan of `lexical_weight` over `index`, with the term
    sets of the online documents it still has; None for weight 0."""
    if not self.lexical_weight > 0:
      return None
    if term_sets is None:
      raise ValueError(
        f"lexical_weight {self.lexical_weight} needs the run's term sets"
      )
    plan = served_plan.ServedPlan(
      term_sets,
      index.doc_ids if trained_doc_ids is None else trained_doc_ids,
      index.vocab,
      self.lexical_weight,
      self.max_decode_len,
      head,
    )
    plan.remember(
      plan.sets_of(
        index.vocab,
        {
          d: doc.text
          for d, doc in self.online_documents.items()
          if d in index.table.docids_of
        },
      )
    )
    return plan

  def _search_key(
    self,
    index: index_lib.Index,
    model_config: Optional[models.ModelConfig] = None,
  ) -> tuple:
    """The key of the search of the current model (or of `model_config`)
    over `index` (`build_search`): with the plan, or the term sets' top-k
    for weight inf."""
    model_config = model_config or self.model.config
    if self._plan is not None and self._plan.lexical_only:
      return ("lexical", model_config, self.config.max_k, self.mesh)
    search = self.config.search_config(self.max_decode_len)
    return (
      "search",
      model_config,
      retrieval.fit_to_index(search, index),
      self.mesh,
      self._plan is not None,
    )

  def _search_fn(
    self,
    index: index_lib.Index,
    fresh: bool = False,
    model_config: Optional[models.ModelConfig] = None,
    function=None,
  ):
    """The jitted search of the current model (or of `model_config`) over
    `index`, shared in the process; fresh: a new one (a capacity grew: the
    old one's executables go with the old state); function: one built for
    it ahead (`build_search`), shared from now on."""
    return _SEARCHES.make(
      self._search_key(index, model_config), fresh, function
    )

  def _fresh_live(
    self, index: index_lib.Index, params: Any, extra_tokens: int = 0
  ) -> LiveState:
    """A live state over a trie built whole from `index` (slots renumbered
    from its doc_ids) for the current model, with room for `extra_tokens`
    more docid tokens."""
    self._trie = self._build_trie(index, extra_tokens)
    slots = list(index.doc_ids)
    self._free_slots: list[int] = []  # deleted documents' slots
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
    self,
    index: index_lib.Index,
    extra_tokens: int = 0,
    vocab_size: Optional[int] = None,
  ) -> docid_trie.DocidTrie:
    """Host trie with values = slots, bulk-built once, with room to grow.

    Node capacity is twice the tokens of all docids (and `extra_tokens`). Each level is twice
    as wide as its widest node and at least as wide as the scheme's tokens
    (+ EOS, up to 64), and so is one level more, for docids that grow a
    level (naive numbers at 10^k): a node that only held EOS may branch over
    every token later. Widths stay per level, so one wide level (text
    docids) does not widen the others. Adding documents online then rarely
    changes the device shapes (each change compiles every bucket again).
    vocab_size: the model's embedding rows it is for (default: the live
    model's).
    """
    sequences, _ = index.docid_sequences()
    trie = index.build_trie(
      capacity=2 * (sum(len(s) for s in sequences) + extra_tokens),
      vocab_size=vocab_size or self.model.config.vocab_size,
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
    """The live params. An add writes docid rows into their embedding in
    place: arrays taken before an add are invalid after it (a numpy view
    taken of one keeps it valid: jax copies instead of donating)."""
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
    """Compiles (or checks compiled) every bucket for `live`'s shapes (with
    None, the live state's, and the document encoder of online adds), and,
    for a served index dir, the scatters that updates make into its rows
    and plan (a growth changes their shapes too)."""
    if live is None:
      live = self._live
      if online_rows.warm_rows_of(self.model) and self.index_dir is not None:
        self._document_encoder().warm_up(live.params)
    if self.index_dir is not None:
      if online_rows.warm_rows_of(self.model):
        online_rows.warm_up_set_rows(live.params)
      if live.plan is not None:
        served_plan.warm_up_scatters(live.plan)
    shapes_to_compile = [
      (bucket, length)
      for bucket in self._buckets
      for length in retrieval.input_lengths(self.input_length)
    ]
    # XLA compiles outside the GIL: one shape per core at a time (a growth
    # compiles them all while an add waits).
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
      list(
        pool.map(
          lambda shape: jax.block_until_ready(
            live.found(np.zeros(shape, np.int32))
          ),
          shapes_to_compile,
        )
      )
    heap.release_freed_memory()  # what the compiles' threads freed

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

  def _document_encoder(self) -> online_rows.DocumentEncoder:
    if self._encoder is None:
      self._encoder = online_rows.DocumentEncoder(self.model, self.input_length)
    return self._encoder

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
