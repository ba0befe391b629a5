"""Training examples on disk: a TFRecord file that seqio reads as it trains.

Not yet used by the jobs (only through tasks.register_file_task, by
tests/test_tasks.py and scripts/bench_task_memory.py); issue 21 wires it in
as their streaming input.

A task over in-memory examples (gr/train/tasks.py `register_task`) holds the
corpus in RAM several times: the Example list, the JSON of all of it for
the fingerprint, tf.data's `from_tensor_slices` copy and a shuffle buffer of
the whole task. Written here once, streamed from an iterable, the examples
are read back record by record (`read_examples`), shuffled in a bounded
buffer of serialised records, and fingerprinted by the file's sha256.

One record per `tasks.Example`, a tf.train.Example with

  inputs, doc_id, query_id, docid   bytes (UTF-8)
  targets                           int64 list (docid ids, EOS included),
                                    or bytes (text targets, doc2query)
"""

import os
import tempfile
from typing import Iterable

import tensorflow as tf

_TEXT_FIELDS = ("inputs", "doc_id", "query_id", "docid")


def _bytes(value: str) -> tf.train.Feature:
  return tf.train.Feature(
    bytes_list=tf.train.BytesList(value=[value.encode("utf-8")])
  )


def _record(example) -> bytes:
  features = {name: _bytes(getattr(example, name)) for name in _TEXT_FIELDS}
  if isinstance(example.targets, str):
    features["targets"] = _bytes(example.targets)
  else:
    features["targets"] = tf.train.Feature(
      int64_list=tf.train.Int64List(value=list(example.targets))
    )
  proto = tf.train.Example(features=tf.train.Features(feature=features))
  return proto.SerializeToString()


def write_examples(path: str, examples: Iterable, *, text_targets: bool) -> int:
  """Writes `examples` (tasks.Example, consumed one at a time) to `path`
  atomically; returns how many. text_targets: targets are strings (else
  docid ids); every example must agree."""
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, staging = tempfile.mkstemp(dir=parent, prefix=".tmp-examples-")
  os.close(fd)
  count = 0
  try:
    with tf.io.TFRecordWriter(staging) as writer:
      for count, example in enumerate(examples, 1):
        if isinstance(example.targets, str) != text_targets:
          raise ValueError(
            f"{path}: example {count} (doc {example.doc_id!r}) has "
            f"{'docid' if text_targets else 'text'} targets"
          )
        writer.write(_record(example))
    os.replace(staging, path)
  except BaseException:
    os.remove(staging)
    raise
  return count


def _parse(record: tf.Tensor, text_targets: bool) -> dict[str, tf.Tensor]:
  description = {
    name: tf.io.FixedLenFeature([], tf.string) for name in _TEXT_FIELDS
  }
  description["targets"] = (
    tf.io.FixedLenFeature([], tf.string)
    if text_targets
    else tf.io.VarLenFeature(tf.int64)
  )
  features = tf.io.parse_single_example(record, description)
  if not text_targets:
    features["targets"] = tf.cast(
      tf.sparse.to_dense(features["targets"]), tf.int32
    )
  else:
    del features["docid"]
  return features


def read_examples(
  path: str,
  *,
  text_targets: bool,
  shuffle: bool = False,
  seed=None,
  shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
  """The examples of `path` as tf.data features (as gr/train/preprocessors.py's
  `examples_to_dataset` makes them: strings, `targets` int32 [length] or a
  string), in file order or shuffled in a buffer of `shuffle_buffer`
  serialised records (reshuffled each epoch)."""
  records = tf.data.TFRecordDataset(path)
  if shuffle:
    records = records.shuffle(
      shuffle_buffer, seed=seed, reshuffle_each_iteration=True
    )
  return records.map(
    lambda record: _parse(record, text_targets),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
