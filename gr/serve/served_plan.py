"""The lexical plan of a served index (issue 20 item 6): the service scores
as the run was evaluated, log-prob + beta * lexical score (beta from the
run's lexical_weight.json, gr/decode/plan.py), over an index that changes.

`ServedPlan` keeps every served document's term set on the host (doc_id ->
(terms, impacts)): the checkpoint's sets for trained documents
(gr/docids/term_sets.py), and for documents added online the set of their
text with the frozen corpus statistics, folded as the run folded (same
language and word table, same tokenisation as lexicon.build_term_sets: the
body's whole encoder input). A restart rebuilds the same sets from the
checkpoint's and the online documents log, so nothing more is persisted.

On device it is a `plan.LexicalPlan` whose documents are the served index's
slots (trie values): the term sets in two segments (gr/model/lexical.py),
the postings of every document at the last build (main, P rows, lists of
at most W) and flat entries terms / impacts / documents for the documents
added since (the delta, P // 8 rows); docid sequences [S, L] and their
slots [S]; num_documents N (static). Each capacity grows by doubling.
Padding entries have impact 0 and padding sequences slot -1, so they score
0 and are never returned; a deleted document's entries (in either segment)
get impact 0 and its sequences slot -1. An add writes only its own delta
entries and sequences (one jitted scatter per array, index counts padded to
buckets). When an add finds the delta full, the plan is built again from
the live documents, all in the main segment: at the same capacities if
they fit (deleted documents' entries reclaimed, no compile), else doubled
(new shapes: the search compiles again). A new document takes a deleted
document's slot (gr/serve/served_index.py), so N stays bounded too.

A growth doubles P, S and N together (and W where a list outgrows it), so
its shapes are known ahead: once an eighth of the room the last growth
left is used in any of them or in W (`growth_due`), `growth_capacities`
names the next growth's capacities and `grown_shapes` its arrays, and
gr/serve/growth_ahead.py compiles the search for them in the background;
the growth then builds at exactly those capacities when the live
documents fit them.
"""

import logging
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.index import lexicon
from gr.model import lexical as lexical_lib

MIN_CAPACITY = 64
SCATTER_BUCKETS = (16, 64, 256, 1024, 4096, 16384)
# Documents one add may bring beyond the slots left, when the next
# growth's postings width is fixed ahead (the service's batch limit).
ADD_BATCH = 64

TermSet = tuple[np.ndarray, np.ndarray]  # (terms [m] int32, impacts [m])


def delta_capacity(entries: int) -> int:
  """Rows of the delta segment for an entry capacity P."""
  return max(MIN_CAPACITY, entries // 8)


def initial_capacity(used: int) -> int:
  """Room at a full build (P, S, N and W): a quarter more than is used
  (the padding costs every search a gather, so it is kept small; later
  adds double it)."""
  return max(MIN_CAPACITY, used + used // 4)


def _bucket(n: int) -> int:
  for b in SCATTER_BUCKETS:
    if b >= n:
      return b
  return -(-n // SCATTER_BUCKETS[-1]) * SCATTER_BUCKETS[-1]


@jax.jit
def _scatter(array, ids, values):
  return array.at[ids].set(values.astype(array.dtype))


def _scattered(array: jax.Array, ids: np.ndarray, values: np.ndarray):
  """`array` with rows `ids` set to `values` (a new array; ids padded to a
  bucket by repeating the first id and value, which writes it twice)."""
  if not len(ids):
    return array
  size = _bucket(len(ids))
  values = np.asarray(values)
  ids = np.concatenate([ids, np.full(size - len(ids), ids[0], ids.dtype)])
  values = np.concatenate(
    [values, np.repeat(values[:1], size - len(values), axis=0)]
  )
  return _scatter(array, ids.astype(np.int32), values)


def warm_up_scatters(plan: plan_lib.LexicalPlan) -> None:
  """Compiles the scatters an add or delete makes into `plan` (every entry
  bucket, and sequence buckets up to a batch of 64 documents' docids), so
  that no update compiles one; the results are dropped."""
  lexical = plan.lexical
  for size in SCATTER_BUCKETS:
    ids = np.zeros(size, np.int32)
    _scatter(lexical.terms, ids, np.zeros(size, np.int32))
    _scatter(lexical.impacts, ids, np.zeros(size, np.float32))
    _scatter(lexical.main.impacts, ids, np.zeros(size, np.float32))
  for size in SCATTER_BUCKETS[:3]:
    ids = np.zeros(size, np.int32)
    rows = np.zeros((size,) + plan.sequences.shape[1:], np.int32)
    _scatter(plan.sequences, ids, rows)
    jax.block_until_ready(
      _scatter(plan.documents, ids, np.zeros(size, np.int32))
    )


class ServedPlan:
  """The served plan's host side and its device `LexicalPlan`.

  Edited under the served index's update lock; each edit returns a new
  device plan (the old one stays valid for searches in flight).
  """

  def __init__(
    self,
    term_sets: term_sets_lib.TermSets,
    trained_doc_ids: Sequence[str],
    vocab,
    weight: float,
    sequence_length: int,
    head: Optional[lexical_lib.TermWeightHead] = None,
  ):
    """term_sets: the checkpoint's, rows in `trained_doc_ids` order.

    weight: beta > 0 (inf: the term sets alone); sequence_length: L, the
    served decode length (longer docids are refused at add); head: the
    run's term-weight head (None: every query token weighs 1).
    """
    if len(term_sets) != len(trained_doc_ids):
      raise ValueError(
        f"term sets of {len(term_sets)} documents for a checkpoint index of "
        f"{len(trained_doc_ids)}"
      )
    if not weight > 0:
      raise ValueError(f"a served plan needs a weight > 0, got {weight}")
    self.weight = float(weight)
    self.head = head
    self.lexical_only = bool(np.isinf(weight))
    self.term_sets = term_sets
    self.sequence_length = sequence_length
    self._folding = lexicon.folding(vocab, term_sets)  # docid ids: none
    self._folding_fields = lexical_lib.folding_fields(self._folding)
    self._sets: dict[str, TermSet] = dict(
      zip(trained_doc_ids, term_sets.rows())
    )
    self._main_of: dict[int, np.ndarray] = {}  # slot -> postings rows
    self._delta_of: dict[int, np.ndarray] = {}  # slot -> delta entries
    self._rows_of: dict[int, np.ndarray] = {}  # slot -> sequence rows
    self._terms_of: dict[int, np.ndarray] = {}  # slot -> its set's terms
    self._used = {"delta": 0, "sequences": 0}
    # What the live documents use: the postings list length of every term
    # (their sum is the entries, the longest what W must hold), sequences.
    self._term_counts = np.zeros(self._folding.num_terms, np.int64)
    self._live_sequences = 0
    self._capacities: Optional[tuple[int, int, int, int]] = None
    # (entries, sequences, documents, longest list) at the last growth,
    # and the capacities the next growth will have, once fixed.
    self._grown_from = (0, 0, 0, 0)
    self._next_capacities: Optional[tuple[int, int, int, int]] = None

  # ----------------------------------------------------------- term sets --

  def sets_of(self, vocab, texts: Mapping[str, str]) -> dict[str, TermSet]:
    """doc_id -> the term set of its text (body), from the frozen
    statistics, folded as the checkpoint's sets were (`vocab`: any version
    of the served vocabulary; they share the text ids)."""
    terms = self._folding.text_terms(vocab, list(texts.values()))
    stats, most = self.term_sets.stats, self.term_sets.max_terms
    return {
      doc_id: term_sets_lib.term_set(t, stats, most)
      for doc_id, t in zip(texts, terms)
    }

  def remember(self, sets: Mapping[str, TermSet]) -> None:
    """Keeps these documents' sets (a re-added doc_id's replaces its old)."""
    self._sets.update(sets)

  def forget(self, doc_id: str) -> None:
    """Drops a deleted document's set (it is no longer served)."""
    self._sets.pop(doc_id, None)

  def set_of(self, doc_id: str) -> TermSet:
    found = self._sets.get(doc_id)
    if found is None:
      logging.warning("no term set for served document %r: scores 0", doc_id)
      return np.zeros(0, np.int32), np.zeros(0, np.float32)
    return found

  # -------------------------------------------------------- device plan --

  @property
  def capacities(self) -> tuple[int, int, int, int]:
    """(entries P, sequences S, documents N, longest postings list W) of
    the last device plan."""
    return self._capacities

  def build(
    self,
    index,
    slots: Sequence[Optional[str]],
    capacities: Optional[tuple[int, int, int, int]] = None,
  ) -> plan_lib.LexicalPlan:
    """The device plan of `slots` (slot -> doc_id, None = deleted), the
    docids from `index`, at `capacities` (P, S, N, W; default: a quarter
    more than is used) or more; every document in the main segment."""
    sequences_of = docid_sequences(index)
    sets, rows = [], []
    self._rows_of = {}
    used_s = 0
    for slot, doc_id in enumerate(slots):
      if doc_id is None:
        continue
      sets.append((slot, *self.set_of(doc_id)))
      seqs = sequences_of[doc_id]
      rows.append((slot, seqs))
      self._rows_of[slot] = np.arange(used_s, used_s + len(seqs))
      used_s += len(seqs)
    terms = np.concatenate([t for _, t, _ in sets] or [np.zeros(0, np.int32)])
    owners = np.concatenate(
      [np.full(len(t), slot, np.int32) for slot, t, _ in sets]
      or [np.zeros(0, np.int32)]
    )
    counts = np.bincount(terms, minlength=self._folding.num_terms)
    used = (len(terms), used_s, len(slots), int(counts.max(initial=0)))
    if capacities is None:  # W a power of two: small changes keep it
      capacities = tuple(initial_capacity(u) for u in used)
      capacities = (*capacities[:3], 1 << (capacities[3] - 1).bit_length())
    p_cap, s_cap, n_cap = (max(c, u) for c, u in zip(capacities[:3], used))
    main, row_of = lexical_lib.postings(
      terms,
      np.concatenate([w for _, _, w in sets] or [np.zeros(0, np.float32)]),
      owners,
      self._folding.num_terms,
      capacity=p_cap,
      width=capacities[3],
    )
    self._main_of = {}
    at = 0
    for slot, t, _ in sets:
      self._main_of[slot] = row_of[at : at + len(t)]
      at += len(t)
    self._delta_of = {}
    self._terms_of = {slot: t for slot, t, _ in sets}
    self._term_counts = counts
    self._used = {"delta": 0, "sequences": used_s}
    self._live_sequences = used_s
    built = (p_cap, s_cap, n_cap, main.width)
    if built != self._capacities:  # a growth (or the first build)
      self._grown_from = used
      self._capacities, self._next_capacities = built, None
    delta = delta_capacity(p_cap)
    sequences, documents = self._sequence_rows(rows, s_cap)
    lexical = lexical_lib.LexicalIndex(
      main=main,
      terms=jnp.zeros(delta, jnp.int32),
      impacts=jnp.zeros(delta, jnp.float32),
      documents=jnp.zeros(delta, jnp.int32),
      num_documents=n_cap,
      **self._folding_fields,
    )
    return plan_lib.LexicalPlan(
      lexical=lexical,
      sequences=jnp.asarray(sequences),
      documents=jnp.asarray(documents),
      weight=jnp.asarray(
        1.0 if self.lexical_only else self.weight, jnp.float32
      ),
      head=self.head,
    )

  def _sequence_rows(
    self, rows: Sequence[tuple[int, list]], capacity: int
  ) -> tuple[np.ndarray, np.ndarray]:
    """(slot, its docid sequences) in order -> sequences [S, L] (EOS then
    PAD) and their slots [S] (-1 = padding), S = `capacity`."""
    sequences = np.zeros((capacity, self.sequence_length), np.int32)
    documents = np.full(capacity, -1, np.int32)
    at = 0
    for slot, seqs in rows:
      for seq in seqs:
        sequences[at, : len(seq)] = seq
        documents[at] = slot
        at += 1
    return sequences, documents

  def added(
    self,
    plan: plan_lib.LexicalPlan,
    index,
    slots: Sequence[Optional[str]],
    new: Mapping[int, tuple[str, Sequence[Sequence[int]]]],
  ) -> plan_lib.LexicalPlan:
    """`plan` with new documents (slot -> (doc_id, its docid sequences),
    already in `slots` and `index`; their sets remembered). Written in
    place of padding, or, when they do not fit, built again at doubled
    capacities (new shapes: the search compiles again)."""
    p_cap, s_cap, n_cap, _ = self._capacities
    need = (
      self._used["delta"]
      + sum(len(self.set_of(d)[0]) for d, _ in new.values()),
      self._used["sequences"] + sum(len(s) for _, s in new.values()),
      len(slots),
    )
    if any(n > c for n, c in zip(need, (delta_capacity(p_cap), s_cap, n_cap))):
      return self._rebuilt(index, slots, new)
    ids, terms, impacts, owners = [], [], [], []
    row_ids, seqs, seq_owners = [], [], []
    p, s = self._used["delta"], self._used["sequences"]
    for slot, (doc_id, sequences) in new.items():
      t, w = self.set_of(doc_id)
      self._terms_of[slot] = t
      np.add.at(self._term_counts, t, 1)
      self._delta_of[slot] = np.arange(p, p + len(t))
      ids.append(self._delta_of[slot])
      terms.append(t)
      impacts.append(w)
      owners.append(np.full(len(t), slot, np.int32))
      p += len(t)
      self._rows_of[slot] = np.arange(s, s + len(sequences))
      for seq in sequences:
        row = np.zeros(self.sequence_length, np.int32)
        row[: len(seq)] = seq
        row_ids.append(s)
        seqs.append(row)
        seq_owners.append(slot)
        s += 1
    self._live_sequences += s - self._used["sequences"]
    self._used = {"delta": p, "sequences": s}
    ids = np.concatenate(ids).astype(np.int64)
    lexical = plan.lexical.replace(
      terms=_scattered(plan.lexical.terms, ids, np.concatenate(terms)),
      impacts=_scattered(plan.lexical.impacts, ids, np.concatenate(impacts)),
      documents=_scattered(plan.lexical.documents, ids, np.concatenate(owners)),
    )
    row_ids = np.asarray(row_ids, np.int64)
    return plan.replace(
      lexical=lexical,
      sequences=_scattered(plan.sequences, row_ids, np.stack(seqs)),
      documents=_scattered(
        plan.documents, row_ids, np.asarray(seq_owners, np.int32)
      ),
    )

  def _rebuilt(
    self,
    index,
    slots: Sequence[Optional[str]],
    new: Mapping[int, tuple[str, Sequence[Sequence[int]]]],
  ) -> plan_lib.LexicalPlan:
    """The plan built again, new documents included: at the same
    capacities (deleted documents' entries and sequences reclaimed, the
    same shapes, so nothing compiles) when the live documents fit them,
    else grown: at the capacities named ahead (`growth_capacities`, whose
    search may be compiled already) when they fit, else with P, S and N
    doubled together until they do."""
    live = self._use(slots, new)
    grown, ahead = self._capacities, self._next_capacities
    if not _holds(grown, live) and ahead and _holds(ahead, live):
      grown = ahead
    while not _holds(grown, live):
      grown = self._doubled(grown, live[3])
    if grown != self._capacities:
      logging.info(
        "lexical plan full: capacities %s -> %s", self._capacities, grown
      )
    return self.build(index, slots, grown)

  @staticmethod
  def _doubled(capacities: tuple[int, ...], longest: int) -> tuple[int, ...]:
    """P, S and N doubled; W doubled if it is shorter than `longest`."""
    p, s, n, w = capacities
    return (2 * p, 2 * s, 2 * n, w if longest <= w else 2 * w)

  def _use(self, slots: Sequence[Optional[str]], new=None) -> tuple:
    """(entries, sequences, documents, longest postings list) the live
    documents use, with `new` (slot -> (doc_id, docid sequences)) added."""
    new = list((new or {}).values())
    terms = [self.set_of(doc_id)[0] for doc_id, _ in new]
    counts = self._term_counts.copy() if terms else self._term_counts
    for t in terms:
      np.add.at(counts, t, 1)
    return (
      int(counts.sum()),
      self._live_sequences + sum(len(s) for _, s in new),
      len(slots),
      int(counts.max(initial=0)),
    )

  # ------------------------------------------------ growth, known ahead --

  def growth_due(self, slots: Sequence[Optional[str]]) -> bool:
    """True once the live documents use an eighth of the room the last
    growth left in entries, sequences, documents or postings width (the
    next growth is then compiled ahead, which takes about 45 s on the demo
    index: adds may come at 20 a second)."""
    return any(
      8 * (u - b) >= c - b
      for u, b, c in zip(self._use(slots), self._grown_from, self._capacities)
    )

  def growth_capacities(
    self, slots: Sequence[Optional[str]]
  ) -> tuple[int, int, int, int]:
    """The capacities (P, S, N, W) of the next growth, fixed now: P, S
    and N doubled, and W wide enough for the longest postings list even if
    every document added until the growth (N less the slots used, and a
    batch of them) has its term."""
    if self._next_capacities is None:
      _, _, documents, longest = self._use(slots)
      room = self._capacities[2] - documents + ADD_BATCH
      width = 1 << max(longest + room - 1, 0).bit_length()
      p, s, n, w = self._doubled(self._capacities, 0)
      self._next_capacities = (p, s, n, max(w, width))
    return self._next_capacities

  def removed(
    self, plan: plan_lib.LexicalPlan, slot: int
  ) -> plan_lib.LexicalPlan:
    """`plan` without the document at `slot`: its entries score 0 and its
    sequences belong to no document."""
    lexical = plan.lexical
    main = self._main_of.pop(slot, np.zeros(0, np.int64))
    delta = self._delta_of.pop(slot, np.zeros(0, np.int64))
    rows = self._rows_of.pop(slot, np.zeros(0, np.int64))
    terms = self._terms_of.pop(slot, np.zeros(0, np.int64))
    np.add.at(self._term_counts, terms, -1)
    self._live_sequences -= len(rows)
    return plan.replace(
      lexical=lexical.replace(
        main=lexical.main.replace(
          impacts=_scattered(
            lexical.main.impacts, main, np.zeros(len(main), np.float32)
          )
        ),
        impacts=_scattered(
          lexical.impacts, delta, np.zeros(len(delta), np.float32)
        ),
      ),
      documents=_scattered(
        plan.documents, rows, np.full(len(rows), -1, np.int32)
      ),
    )


def _holds(capacities: tuple[int, ...], used: tuple[int, ...]) -> bool:
  return all(u <= c for u, c in zip(used, capacities))


def grown_shapes(
  plan: plan_lib.LexicalPlan, capacities: tuple[int, int, int, int]
):
  """The shapes (jax.ShapeDtypeStruct leaves) of `plan` built at
  `capacities` (P, S, N, W): what a search compiled ahead for that growth
  sees."""
  p, s, n, w = capacities
  shapes = jax.eval_shape(lambda tree: tree, plan)
  lexical, delta = shapes.lexical, (delta_capacity(p),)

  def resized(leaf, shape):
    return jax.ShapeDtypeStruct(shape, leaf.dtype)

  return shapes.replace(
    lexical=lexical.replace(
      main=lexical.main.replace(
        documents=resized(lexical.main.documents, (p,)),
        impacts=resized(lexical.main.impacts, (p,)),
        width=w,
      ),
      terms=resized(lexical.terms, delta),
      impacts=resized(lexical.impacts, delta),
      documents=resized(lexical.documents, delta),
      num_documents=n,
    ),
    sequences=resized(shapes.sequences, (s, shapes.sequences.shape[1])),
    documents=resized(shapes.documents, (s,)),
  )


def docid_sequences(index) -> dict[str, list[list[int]]]:
  """doc_id -> its docids' token ids with EOS (as the trie stores them)."""
  sequences, documents = index.docid_sequences()
  doc_ids = index.doc_ids
  out: dict[str, list[list[int]]] = {}
  for sequence, document in zip(sequences, documents):
    out.setdefault(doc_ids[document], []).append(list(sequence))
  return out
