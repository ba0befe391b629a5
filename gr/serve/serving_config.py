"""What the docid decoding service is configured with and answers.

`ServingConfig` (decoding and batching), `Hit` (one retrieved document),
`StoredDocument` (what the index holds for an id) and the service's
errors (a run that cannot be loaded, an update that cannot be applied);
shared by the served index (gr/serve/served_index.py), the
searcher over it (gr/serve/retriever.py) and the web app.
"""

import dataclasses
import datetime
from typing import Any, Mapping, Optional

from gr.data import beir
from gr.model import score_modes
from gr.search import retrieval


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
    score_mode: as retrieval.SearchConfig.score_mode: "log_probs", or
      "logits" for runs scored by summed raw logits (RQ docids,
      configs/news_rq_minilm.gin); None: as the run recorded it
      (model_config.json's `scoring`), else "log_probs".
    sparse_output: as retrieval.SearchConfig.sparse_output (logits only
      for the docid tokens the trie allows); None: as the run recorded
      it, else False.
  """

  max_k: int = 10
  beam_size: Optional[int] = None
  buckets: tuple[int, ...] = (1, 4, 16, 32)
  max_wait_ms: float = 2.0
  decode_headroom: int = 2
  length_penalty_alpha: float = 0.0
  aggregation: str = "max"
  score_mode: Optional[str] = None
  sparse_output: Optional[bool] = None

  def __post_init__(self):
    if self.score_mode is not None:
      score_modes.check_score_mode(self.score_mode)
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

  def as_run_scored(self, scoring: Mapping[str, Any]) -> "ServingConfig":
    """This config with each unset scoring field (None) taken from the
    run's record (`model_config.SavedModelConfig.scoring`)."""
    return dataclasses.replace(
      self,
      score_mode=self.score_mode or scoring.get("score_mode"),
      sparse_output=(
        scoring.get("sparse_output")
        if self.sparse_output is None
        else self.sparse_output
      ),
    )

  def search_config(self, max_decode_len: int) -> retrieval.SearchConfig:
    return retrieval.SearchConfig(
      beam_size=self.beam_size or self.max_k,
      top_k=self.max_k,
      max_decode_len=max_decode_len,
      length_penalty_alpha=self.length_penalty_alpha,
      aggregation=self.aggregation,
      score_mode=self.score_mode or "log_probs",
      sparse_output=bool(self.sparse_output),
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


def stamped(document: beir.Document, now: str) -> beir.Document:
  """`document` with its time of adding in its metadata (kept if set)."""
  if ADDED_AT in document.metadata:
    return document
  return dataclasses.replace(
    document, metadata={**document.metadata, ADDED_AT: now}
  )


def now() -> str:
  """The current UTC time, ISO 8601 (what `stamped` writes)."""
  return datetime.datetime.now(datetime.timezone.utc).isoformat()
