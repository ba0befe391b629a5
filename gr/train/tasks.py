"""seqio tasks and mixtures for generative retrieval, from factory functions.

Four kinds of task (indexing, retrieval, pseudo_query, doc2query: their
examples are gr/train/examples.py's), built from a BeirDataset, a DocidTable
and optional pseudo-queries. A query id that is in the train qrels and also
in dev or test qrels is an error (it would leak).

Where the examples live: in memory for a corpus of up to
`Streaming.above_docs` documents (gr/train/streaming.py), else in TFRecord
shards written once and streamed back in a bounded shuffle buffer
(`register_streams` decides; `register_shards_task`).

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
from typing import Callable, Mapping, Optional

import seqio

from gr.data import beir
from gr.index import vocab as vocab_lib
from gr.train import data as data_lib
from gr.train import example_files
from gr.train import preprocessors
from gr.train import streaming as streaming_lib
from gr.train.examples import (  # noqa: F401  (re-exported: tasks.Example...)
  DOC2QUERY,
  DOCID_KINDS,
  INDEXING,
  KINDS,
  PSEUDO_QUERY,
  QRELS_SPLIT,
  RETRIEVAL,
  TEST,
  TRAIN,
  VALIDATION,
  Example,
  ExamplesBySplit,
  build_examples,
  check_no_query_leak,
  doc2query_examples,
  document_input,
  example_streams,
  indexing_examples,
  iter_indexing_examples,
  pseudo_query_examples,
  retrieval_examples,
)

_NAME_PART = re.compile(r"^\w+$")
# Task or mixture name -> fingerprint of the definition registered under it.
_REGISTERED: dict[str, str] = {}


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
  data_lib.mark_streamed(name)
  return name


def register_shards_task(
  name: str,
  shards_by_split: Mapping[str, example_files.Shards],
  vocab: vocab_lib.Vocabulary,
  *,
  docid_targets: bool,
  shuffle_buffer: int = streaming_lib.DEFAULT_SHUFFLE_BUFFER,
) -> str:
  """Registers one task whose splits stream from shards
  (example_files.write_shards; shuffled in a `shuffle_buffer` of records);
  fingerprinted by the shards' examples. Returns the name."""
  fingerprint = _fingerprint(
    {
      "vocab": vocab.fingerprint,
      "docid_targets": docid_targets,
      "shuffle_buffer": shuffle_buffer,
      "shards": {s: sh.fingerprint for s, sh in shards_by_split.items()},
    }
  )

  def dataset_fn(split, shuffle_files, seed=None):
    return example_files.read_shards(
      shards_by_split[split].paths,
      text_targets=not docid_targets,
      shuffle=shuffle_files,
      seed=seed,
      shuffle_buffer=shuffle_buffer,
    )

  source = seqio.FunctionDataSource(dataset_fn, splits=list(shards_by_split))
  _add_task(name, fingerprint, source, vocab, docid_targets=docid_targets)
  data_lib.mark_streamed(name)
  return name


def register_streams(
  name: str,
  streams: Mapping[str, Callable],
  vocab: vocab_lib.Vocabulary,
  *,
  docid_targets: bool,
  num_docs: int,
  streaming: streaming_lib.Streaming = streaming_lib.DEFAULT,
) -> Optional[str]:
  """Registers task `name` over `streams` (split -> a function making that
  split's examples, examples.ExampleStream): from shards when `streaming`
  applies to a corpus of `num_docs` documents, else in memory. Empty
  splits are left out; None (nothing registered) when all are empty."""
  if streaming.applies(num_docs):
    shards = streaming_lib.task_shards(
      streaming, name, streams, text_targets=not docid_targets
    )
    if not shards:
      return None
    return register_shards_task(
      name,
      shards,
      vocab,
      docid_targets=docid_targets,
      shuffle_buffer=streaming.shuffle_buffer,
    )
  by_split = {split: list(stream()) for split, stream in streams.items()}
  by_split = {split: ex for split, ex in by_split.items() if ex}
  if not by_split:
    return None
  return register_task(name, by_split, vocab, docid_targets=docid_targets)


def register_gr_tasks(
  *,
  name: str,
  dataset,
  table,
  vocab: vocab_lib.Vocabulary,
  pseudo_queries: Optional[Mapping] = None,
  version: str = "v1",
  include_title: bool = False,
  streaming: streaming_lib.Streaming = streaming_lib.DEFAULT,
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
    streaming: above how many documents the tasks stream from shards
      (`register_streams`).

  Returns:
    kind -> task name, for the kinds with at least one example.
  """
  check_no_query_leak(dataset.qrels)
  names = {}
  for kind in KINDS:
    streams = example_streams(
      kind,
      dataset,
      table,
      vocab,
      pseudo_queries=pseudo_queries,
      include_title=include_title,
    )
    task = register_streams(
      task_name(name, table, kind, version),
      streams,
      vocab,
      docid_targets=kind in DOCID_KINDS,
      num_docs=len(dataset.corpus),
      streaming=streaming,
    )
    if task:
      names[kind] = task
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
  streaming: streaming_lib.Streaming = streaming_lib.DEFAULT,
) -> str:
  """Registers the tasks (streamed as `streaming` says) and a mixture of
  those with a positive rate."""
  names = register_gr_tasks(
    name=name,
    dataset=dataset,
    table=index.table,
    vocab=index.vocab,
    pseudo_queries=pseudo_queries,
    streaming=streaming,
  )
  rates = {
    names[kind]: rate
    for kind, rate in task_rates.items()
    if rate > 0 and kind in names
  }
  return register_gr_mixture(
    f"{name}.{index.table.scheme}.v{index.table.version}.{suffix}", rates
  )
