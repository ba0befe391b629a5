"""BEIR folders: read, write and validate (corpus.jsonl, queries.jsonl, qrels/*.tsv)."""
import dataclasses
from typing import Any, Mapping


@dataclasses.dataclass(frozen=True)
class Document:
  """One corpus record. `metadata` holds any extra fields (e.g. publish_date)."""
  doc_id: str
  title: str
  text: str
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
