"""seqio tasks and mixtures for generative retrieval, from factory functions.

Four kinds of task, built from in-memory data (a BeirDataset, a DocidTable,
optional pseudo-queries):

  kind          inputs                  targets          splits
  indexing      document body           docid            train
  retrieval     query                   docid            train (train qrels),
                                                         validation (dev),
                                                         test (test)
  pseudo_query  pseudo/generated query  docid            train
  doc2query     document body           query text       train, validation

A document with several docids (multi-docid schemes) gives one example per
docid. Only qrels with score > 0 count. Documents missing from the table
(not indexed yet) are left out of retrieval; a query id that is in the train
qrels and also in dev or test qrels is an error (it would leak).

Features: `inputs` is text, tokenised here with EOS appended after trimming
to the sequence length. Docid `targets` are tokenised in Python
(`vocab.encode_docid(docid) + [EOS]`, an int feature the tokeniser leaves
alone) and must fit the target length; doc2query `targets` are text. String
features `doc_id`, `query_id` ("" for indexing) and `docid` (docid tasks)
pass through for metrics.

Names: `gr.{name}.{table.scheme}.v{table.version}.{kind}.{version}`, so a
new table version is a new task. Registering the same name with the same
definition again is a no-op; a different definition under a registered name
raises ValueError (bump `version`).
"""

import dataclasses
import hashlib
import json
import re
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import seqio

from gr.train import example_files
from gr.train import preprocessors
from gr.index import vocab as vocab_lib
from gr.data import beir

INDEXING = "indexing"
RETRIEVAL = "retrieval"
PSEUDO_QUERY = "pseudo_query"
DOC2QUERY = "doc2query"
KINDS = (INDEXING, RETRIEVAL, PSEUDO_QUERY, DOC2QUERY)
DOCID_KINDS = (INDEXING, RETRIEVAL, PSEUDO_QUERY)

TRAIN, VALIDATION, TEST = "train", "validation", "test"
# Task split -> BEIR qrels split it reads.
QRELS_SPLIT = {TRAIN: "train", VALIDATION: "dev", TEST: "test"}

_NAME_PART = re.compile(r"^\w+$")
# Task or mixture name -> fingerprint of the definition registered under it.
_REGISTERED: dict[str, str] = {}


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


def task_name(name: str, table, kind: str, version: str = "v1") -> str:
  """`gr.{name}.{scheme}.v{table version}.{kind}.{version}`."""
  for field, value in (("name", name), ("version", version)):
    if not _NAME_PART.match(value):
      raise ValueError(
        f"task {field} must be letters, digits or _, got {value!r}"
      )
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return f"gr.{name}.{table.scheme}.v{table.version}.{kind}.{version}"


# ----------------------------------------------------------- examples --


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
  examples = []
  for query_id, doc_id in _relevant_pairs(qrels):
    if doc_id in table.docids_of:
      examples += _docid_examples(
        _query_text(queries, query_id), doc_id, table, vocab, query_id=query_id
      )
  return examples


def pseudo_query_examples(
  pseudo_queries: Mapping[str, Sequence[str]], table, vocab
) -> list[Example]:
  """Pseudo-query -> docid, in table order; unindexed documents skipped."""
  return [
    example
    for doc_id in table.docids_of
    for query in pseudo_queries.get(doc_id, ())
    for example in _docid_examples(query, doc_id, table, vocab)
  ]


def doc2query_examples(
  corpus: Mapping,
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
  *,
  include_title: bool = False,
) -> list[Example]:
  """Document text -> text of a query it is relevant to."""
  return [
    Example(
      document_input(corpus[doc_id], include_title),
      _query_text(queries, query_id),
      doc_id,
      query_id,
    )
    for query_id, doc_id in _relevant_pairs(qrels)
  ]


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


def build_examples(
  kind: str,
  dataset,
  table,
  vocab,
  *,
  pseudo_queries: Optional[Mapping] = None,
  include_title: bool = False,
) -> dict[str, list[Example]]:
  """Examples of one kind per task split; empty splits are left out."""
  qrels = {
    split: dataset.qrels.get(QRELS_SPLIT[split], {})
    for split in (TRAIN, VALIDATION, TEST)
  }
  if kind == INDEXING:
    by_split = {
      TRAIN: indexing_examples(
        dataset.corpus, table, vocab, include_title=include_title
      )
    }
  elif kind == RETRIEVAL:
    by_split = {
      split: retrieval_examples(dataset.queries, split_qrels, table, vocab)
      for split, split_qrels in qrels.items()
    }
  elif kind == PSEUDO_QUERY:
    by_split = {
      TRAIN: pseudo_query_examples(pseudo_queries or {}, table, vocab)
    }
  elif kind == DOC2QUERY:
    by_split = {
      split: doc2query_examples(
        dataset.corpus,
        dataset.queries,
        qrels[split],
        include_title=include_title,
      )
      for split in (TRAIN, VALIDATION)
    }
  else:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return {split: examples for split, examples in by_split.items() if examples}


# --------------------------------------------------------- registration --


def _fingerprint(payload) -> str:
  text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _register_once(
  registry, name: str, fingerprint: str, add: Callable[[], object]
) -> None:
  """Adds to a seqio registry unless the same definition is already there."""
  if name in registry.names():
    if _REGISTERED.get(name) != fingerprint:
      raise ValueError(
        f"{name} is already registered with a different definition "
        "(changed data, table or vocabulary?): register under a new version"
      )
    return
  add()
  _REGISTERED[name] = fingerprint


def register_task(
  name: str,
  examples_by_split: ExamplesBySplit,
  vocab: vocab_lib.Vocabulary,
  *,
  docid_targets: bool,
) -> str:
  """Registers one task over in-memory examples (idempotent); returns name."""
  fingerprint = _fingerprint(
    {
      "vocab": vocab.fingerprint,
      "docid_targets": docid_targets,
      "examples": {
        split: [dataclasses.astuple(e) for e in examples]
        for split, examples in examples_by_split.items()
      },
    }
  )
  source = seqio.FunctionDataSource(
    preprocessors.dataset_fn(examples_by_split), splits=list(examples_by_split)
  )
  _add_task(name, fingerprint, source, vocab, docid_targets=docid_targets)
  return name


def _add_task(
  name: str,
  fingerprint: str,
  source: seqio.DataSource,
  vocab: vocab_lib.Vocabulary,
  *,
  docid_targets: bool,
) -> None:
  """Adds the seqio task `name` over `source` once per fingerprint."""
  _register_once(
    seqio.TaskRegistry,
    name,
    fingerprint,
    lambda: seqio.TaskRegistry.add(
      name,
      source=source,
      output_features=preprocessors.output_features(
        vocab, docid_targets=docid_targets
      ),
      preprocessors=preprocessors.preprocessors(docid_targets=docid_targets),
      metric_fns=[],
    ),
  )


def register_file_task(
  name: str,
  path: str,
  vocab: vocab_lib.Vocabulary,
  *,
  docid_targets: bool,
  split: str = TRAIN,
  shuffle_buffer: int = 10_000,
) -> str:
  """Registers one task whose `split` streams from an examples file
  (gr/train/example_files.py; shuffled in a `shuffle_buffer` of records), not
  from memory; fingerprinted by the file's sha256. Returns the name."""
  fingerprint = _fingerprint(
    {
      "vocab": vocab.fingerprint,
      "docid_targets": docid_targets,
      "file_sha256": vocab_lib.file_sha256(path),
    }
  )

  def dataset_fn(split, shuffle_files, seed=None):
    del split  # the one split
    return example_files.read_examples(
      path,
      text_targets=not docid_targets,
      shuffle=shuffle_files,
      seed=seed,
      shuffle_buffer=shuffle_buffer,
    )

  source = seqio.FunctionDataSource(dataset_fn, splits=[split])
  _add_task(name, fingerprint, source, vocab, docid_targets=docid_targets)
  return name


def register_gr_tasks(
  *,
  name: str,
  dataset,
  table,
  vocab: vocab_lib.Vocabulary,
  pseudo_queries: Optional[Mapping] = None,
  version: str = "v1",
  include_title: bool = False,
) -> dict[str, str]:
  """Registers the tasks a dataset and docid table support.

  Args:
    name: dataset name used in task names (letters, digits, _).
    dataset: a BeirDataset (corpus, queries, qrels by BEIR split).
    table: the DocidTable; its scheme and version are part of the names.
    vocab: the Vocabulary; must hold the table's reserved tokens.
    pseudo_queries: doc_id -> queries; the pseudo_query task needs them.
    version: definition version, the last part of each name.
    include_title: prefix document inputs with the title (never for
      benchmarks whose queries are titles).

  Returns:
    kind -> task name, for the kinds with at least one example.
  """
  check_no_query_leak(dataset.qrels)
  names = {}
  for kind in KINDS:
    examples = build_examples(
      kind,
      dataset,
      table,
      vocab,
      pseudo_queries=pseudo_queries,
      include_title=include_title,
    )
    if examples:
      names[kind] = register_task(
        task_name(name, table, kind, version),
        examples,
        vocab,
        docid_targets=kind in DOCID_KINDS,
      )
  return names


def register_gr_mixture(name: str, task_rates: Mapping[str, float]) -> str:
  """Registers a mixture of registered tasks at the given rates (idempotent).

  Raises:
    ValueError: for an unknown task, a rate <= 0, or the name taken by a
      different mixture.
  """
  if not re.match(r"^[\w.]+$", name):
    raise ValueError(
      f"mixture name must be letters, digits, _ or ., got {name!r}"
    )
  if not task_rates:
    raise ValueError(f"mixture {name} needs at least one task")
  for task, rate in task_rates.items():
    if task not in seqio.TaskRegistry.names():
      raise ValueError(f"mixture {name}: task {task!r} is not registered")
    if not rate > 0:
      raise ValueError(
        f"mixture {name}: rate of {task!r} must be > 0, got {rate!r}"
      )
  rates = [(task, float(rate)) for task, rate in task_rates.items()]
  fingerprint = _fingerprint(
    {
      "rates": rates,
      "tasks": [_REGISTERED.get(task, task) for task, _ in rates],
    }
  )
  _register_once(
    seqio.MixtureRegistry,
    name,
    fingerprint,
    lambda: seqio.MixtureRegistry.add(name, rates),
  )
  return name


def register_mixture(
  name: str,
  dataset: beir.BeirDataset,
  index,
  pseudo_queries: Optional[Mapping[str, list[str]]],
  task_rates: Mapping[str, float],
  suffix: str = "mixture",
) -> str:
  """Registers the tasks and a mixture of those with a positive rate."""
  names = register_gr_tasks(
    name=name,
    dataset=dataset,
    table=index.table,
    vocab=index.vocab,
    pseudo_queries=pseudo_queries,
  )
  rates = {
    names[kind]: rate
    for kind, rate in task_rates.items()
    if rate > 0 and kind in names
  }
  return register_gr_mixture(
    f"{name}.{index.table.scheme}.v{index.table.version}.{suffix}", rates
  )
