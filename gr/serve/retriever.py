"""The docid decoding service's core: load a trained run once, retrieve fast.

`Retriever` serves a run loaded by gr/serve/served_run.py (checkpoint params,
the sha256-verified index artifact, the model config) and answers
`retrieve(queries, k)` with one jitted constrained beam search compiled for
a few bucket batch shapes (e.g. 1, 4, 16, 32): a batch of n queries is
padded to the smallest bucket >= n, so traffic never triggers a
compilation. It is the searcher over gr/serve/served_index.py's
`ServedIndex` (the live state of gr/serve/live_state.py: trie, table,
docid rows; online logs and their updates: `add_documents`,
`delete_document`, `document`); each search reads one consistent live
state and never waits for an update.

The HTTP service (gr/serve/app.py) batches concurrent requests with
gr/serve/microbatch.py's `MicroBatcher` (up to a maximum batch or a few
milliseconds) into one `Retriever.retrieve` call on a worker thread.
"""

from typing import Optional, Sequence

import jax
import numpy as np

from gr import batching
from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib
from gr.search import retrieval
from gr.serve import served_run
from gr.serve.live_state import (
  DEFAULT_CONFIG,
  LiveState,
)
from gr.serve.online_logs import (  # noqa: F401 (re-exported: the service's API)
  ONLINE_DOCUMENTS_FILE,
  ONLINE_ROWS_FILE,
  read_online_documents,
  read_online_rows,
)
from gr.serve.served_index import ServedIndex
from gr.serve.served_run import load_checkpoint  # noqa: F401 (re-exported)
from gr.serve.serving_config import (  # noqa: F401 (re-exported)
  ADDED_AT,
  DocumentConflict,
  Hit,
  RunLoadError,
  ServingConfig,
  ServingError,
  StoredDocument,
  UnknownDocument,
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


class Retriever(ServedIndex):
  """The served index (a trained model and its mutable index, loaded once
  from a run, verified) and bucketed batched `retrieve` over it. For
  evaluation over a fixed index, see gr/search/retrieval.py's `Searcher`;
  both run `retrieval.make_search_fn`."""

  @classmethod
  def from_checkpoint(
    cls,
    checkpoint_dir: str,
    *,
    index_dir: Optional[str] = None,
    step: Optional[int] = None,
    config: ServingConfig = DEFAULT_CONFIG,
    corpus_path: Optional[str] = None,
    mesh: Optional[jax.sharding.Mesh] = None,
    lexical_weight: Optional[float] = None,
  ) -> "Retriever":
    """Loads a run: <run>/model checkpoints, served index <run>/index.

    Args:
      checkpoint_dir: the orbax model_dir (e.g. workdir/model).
      index_dir: served (mutable) index; default: <checkpoint_dir>/../index.
      step: checkpoint step; None: the run's chosen one (its
        lexical_weight.json's step), else the latest.
      config: decoding and batching settings; its unset scoring fields
        (score_mode, sparse_output) as the run recorded them.
      corpus_path: BEIR corpus.jsonl to take titles from; default: the one
        model_config.json names, if it exists.
      mesh: shard each batch over its 'data' axis and the params by
        training's logical rules; one device if None.
      lexical_weight: the lexical plan's weight (0: the model alone, inf:
        the term sets alone); None: the run's lexical_weight.json (no
        file: no plan).
    """
    run = served_run.load_run(
      checkpoint_dir,
      index_dir=index_dir,
      step=step,
      corpus_path=corpus_path,
      lexical_weight=lexical_weight,
    )
    return cls(
      run.model,
      run.params,
      run.index,
      input_length=run.input_length,
      config=config.as_run_scored(run.scoring),
      index_dir=run.index_dir,
      titles=run.titles,
      corpus=run.corpus,
      online_documents=run.online_documents,
      online_rows=run.online_rows,
      checkpoint_step=run.step,
      mesh=mesh,
      checkpoint_rows=run.checkpoint_rows,
      term_sets=run.term_sets,
      lexical_weight=run.lexical_weight,
      trained_doc_ids=run.trained_doc_ids,
      term_weight_head=run.term_weight_head,
    )

  def compiled_count(self) -> int:
    """How many shapes the search function has compiled so far."""
    return self._live.search._cache_size()  # pylint: disable=protected-access

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
  ) -> tuple[LiveState, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """[n, Li] -> (the live state searched, (slots, scores [n, max_k],
    docids [n, max_k, D, L])).

    Padded to a batch bucket and cut to a length bucket
    (retrieval.cut_to_bucket, as the Searcher cuts); docids are each slot's
    docid tokens found, best first (all PAD rows after the last). The
    search is dispatched under the dispatch lock, so an update cannot
    donate the trie arrays it reads.
    """
    n = tokens.shape[0]
    # --> [bucket, length bucket]
    padded = batching.pad_rows(
      retrieval.cut_to_bucket(tokens), self.bucket_for(n)
    )
    with self._dispatch_lock:
      live = self._live
      found = live.found(padded)
    return live, (
      np.asarray(found.documents)[:n],
      np.asarray(found.scores)[:n],
      np.asarray(found.docids)[:n],
    )

  def _hits(
    self,
    live: LiveState,
    slots: np.ndarray,
    scores: np.ndarray,
    docids: np.ndarray,
    k: int,
  ) -> list[Hit]:
    """Hits of one query: slots, scores [max_k], docids [max_k, D, L]."""
    hits = []
    for slot, score, found in zip(slots, scores, docids):
      doc_id = live.slots[slot] if slot >= 0 else None
      if (
        doc_id is None
        or not np.isfinite(score)
        or doc_id not in live.index.table.docids_of  # a slot reused since
      ):
        continue
      matched = _matched_docids(live.index, doc_id, found)
      hits.append(
        Hit(doc_id, matched[0], float(score), self.titles.get(doc_id), matched)
      )
      if len(hits) == k:
        break
    return hits
