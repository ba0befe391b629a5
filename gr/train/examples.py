"""The examples of gr's tasks, before tokenisation (gr/train/tasks.py
registers them as seqio tasks).

  kind          inputs                  targets          splits
  indexing      document body           docid            train
  retrieval     query                   docid            train (train qrels),
                                                         validation (dev),
                                                         test (test)
  pseudo_query  pseudo/generated query  docid            train
  doc2query     document body           query text       train, validation

A document with several docids (multi-docid schemes) gives one example per
docid. Only qrels with score > 0 count. Documents missing from the table
(not indexed yet) are left out of retrieval. Every kind comes as a list
(`build_examples`) or as a stream that makes its examples one at a time
(`example_streams`, which a streamed task writes to files without holding
them all).
"""

import dataclasses
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

INDEXING = "indexing"
RETRIEVAL = "retrieval"
PSEUDO_QUERY = "pseudo_query"
DOC2QUERY = "doc2query"
KINDS = (INDEXING, RETRIEVAL, PSEUDO_QUERY, DOC2QUERY)
DOCID_KINDS = (INDEXING, RETRIEVAL, PSEUDO_QUERY)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
# Task split -> BEIR qrels split it reads.
QRELS_SPLIT = {TRAIN: "train", VALIDATION: "dev", TEST: "test"}


@dataclasses.dataclass(frozen=True)
class Example:
  """One (inputs, targets) pair before tokenisation of `inputs`.

  `targets` is docid ids ending in EOS for docid kinds, text for doc2query.
  """

  inputs: str
  targets: Union[tuple[int, ...], str]
  doc_id: str
  query_id: str = ""
  docid: str = ""


ExamplesBySplit = Mapping[str, Sequence[Example]]
# A zero-argument function that makes a split's examples one at a time
# (callable again: each call starts a fresh pass).
ExampleStream = Callable[[], Iterator[Example]]


def _docid_examples(
  inputs: str, doc_id: str, table, vocab, *, query_id: str = ""
) -> list[Example]:
  """One example per docid of `doc_id` (docid ids end in EOS)."""
  return [
    Example(
      inputs,
      tuple(vocab.encode_docid(docid)) + (vocab.eos_id,),
      doc_id,
      query_id,
      docid,
    )
    for docid in table.docids_of[doc_id]
  ]


def _relevant_pairs(qrels: Mapping[str, Mapping[str, int]]):
  """(query_id, doc_id) pairs with score > 0, in qrels order."""
  return [
    (query_id, doc_id)
    for query_id, docs in qrels.items()
    for doc_id, score in docs.items()
    if score > 0
  ]


def _query_text(queries: Mapping[str, str], query_id: str) -> str:
  if query_id not in queries:
    raise ValueError(f"qrels name query {query_id!r}, which is not in queries")
  return queries[query_id]


def document_input(doc, include_title: bool = False) -> str:
  """The text a model reads for a document: the body (title first if asked)."""
  return f"{doc.title} {doc.text}".strip() if include_title else doc.text


def indexing_examples(
  corpus: Mapping, table, vocab, *, include_title: bool = False
) -> list[Example]:
  """Document text -> docid, for every (document, docid) in the table."""
  return list(
    iter_indexing_examples(corpus, table, vocab, include_title=include_title)
  )


def iter_indexing_examples(
  corpus: Mapping, table, vocab, *, include_title: bool = False
) -> Iterator[Example]:
  """`indexing_examples` one at a time (e.g. to stream them to a file)."""
  for doc_id in table.docids_of:
    if doc_id not in corpus:
      raise ValueError(
        f"docid table names document {doc_id!r}, which is not in the corpus"
      )
    yield from _docid_examples(
      document_input(corpus[doc_id], include_title), doc_id, table, vocab
    )


def retrieval_examples(
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
  table,
  vocab,
) -> list[Example]:
  """Query -> docid for relevant pairs whose document is in the table."""
  return list(iter_retrieval_examples(queries, qrels, table, vocab))


def iter_retrieval_examples(queries, qrels, table, vocab) -> Iterator[Example]:
  """`retrieval_examples` one at a time."""
  for query_id, doc_id in _relevant_pairs(qrels):
    if doc_id in table.docids_of:
      yield from _docid_examples(
        _query_text(queries, query_id), doc_id, table, vocab, query_id=query_id
      )


def pseudo_query_examples(
  pseudo_queries: Mapping[str, Sequence[str]], table, vocab
) -> list[Example]:
  """Pseudo-query -> docid, in table order; unindexed documents skipped."""
  return list(iter_pseudo_query_examples(pseudo_queries, table, vocab))


def iter_pseudo_query_examples(
  pseudo_queries, table, vocab
) -> Iterator[Example]:
  """`pseudo_query_examples` one at a time."""
  for doc_id in table.docids_of:
    for query in pseudo_queries.get(doc_id, ()):
      yield from _docid_examples(query, doc_id, table, vocab)


def doc2query_examples(
  corpus: Mapping,
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
  *,
  include_title: bool = False,
) -> list[Example]:
  """Document text -> text of a query it is relevant to."""
  return list(
    iter_doc2query_examples(corpus, queries, qrels, include_title=include_title)
  )


def iter_doc2query_examples(
  corpus, queries, qrels, *, include_title: bool = False
) -> Iterator[Example]:
  """`doc2query_examples` one at a time."""
  for query_id, doc_id in _relevant_pairs(qrels):
    yield Example(
      document_input(corpus[doc_id], include_title),
      _query_text(queries, query_id),
      doc_id,
      query_id,
    )


def check_no_query_leak(qrels: Mapping[str, Mapping]) -> None:
  """Raises if a train query id is also a dev or test query id."""
  train = set(qrels.get("train", {}))
  for split in ("dev", "test"):
    shared = sorted(train & set(qrels.get(split, {})))
    if shared:
      raise ValueError(
        f"query ids in both train and {split} qrels "
        f"({len(shared)}, e.g. {shared[:5]}): they would leak"
      )


def example_streams(
  kind: str,
  dataset,
  table,
  vocab,
  *,
  pseudo_queries: Optional[Mapping] = None,
  include_title: bool = False,
) -> dict[str, ExampleStream]:
  """A stream of examples of one kind per task split (a split may turn
  out empty: `build_examples` leaves those out)."""
  qrels = {
    split: dataset.qrels.get(QRELS_SPLIT[split], {})
    for split in (TRAIN, VALIDATION, TEST)
  }
  corpus, queries = dataset.corpus, dataset.queries
  if kind == INDEXING:
    return {
      TRAIN: lambda: iter_indexing_examples(
        corpus, table, vocab, include_title=include_title
      )
    }
  if kind == RETRIEVAL:
    return {
      split: lambda q=split_qrels: iter_retrieval_examples(
        queries, q, table, vocab
      )
      for split, split_qrels in qrels.items()
    }
  if kind == PSEUDO_QUERY:
    pseudo = pseudo_queries or {}
    return {TRAIN: lambda: iter_pseudo_query_examples(pseudo, table, vocab)}
  if kind == DOC2QUERY:
    return {
      split: lambda q=qrels[split]: iter_doc2query_examples(
        corpus, queries, q, include_title=include_title
      )
      for split in (TRAIN, VALIDATION)
    }
  raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def build_examples(kind: str, dataset, table, vocab, **kwargs):
  """Examples of one kind per task split, as lists; empty splits are left
  out. kwargs: `example_streams`'s."""
  by_split = {
    split: list(stream())
    for split, stream in example_streams(
      kind, dataset, table, vocab, **kwargs
    ).items()
  }
  return {split: examples for split, examples in by_split.items() if examples}
