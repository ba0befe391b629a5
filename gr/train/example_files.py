"""Training examples on disk: TFRecord files that seqio reads as it trains.

The jobs' streamed tasks (gr/train/streaming.py, above a corpus size) write
each split once as shards (`write_shards`: a folder of round-robin shards and
a MANIFEST.json with each shard's sha256, renamed into place whole) and read
them back (`load_shards` verifies them, `read_shards` streams them); one file
(`write_examples`, `read_examples`) backs tasks.register_file_task.

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

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable, Iterator, Sequence

import tensorflow as tf

from gr import atomic_io

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1

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
      for record in records(examples, text_targets, path):
        writer.write(record)
        count += 1
    os.chmod(staging, 0o644)  # mkstemp makes 0600 files
    os.replace(staging, path)
  except BaseException:
    os.remove(staging)
    raise
  return count


def records(examples: Iterable, text_targets: bool, where: str) -> Iterator:
  """The serialised record of each example; raises (naming `where` and the
  example) at one whose targets are not of the kind `text_targets` says."""
  for count, example in enumerate(examples, 1):
    if isinstance(example.targets, str) != text_targets:
      raise ValueError(
        f"{where}: example {count} (doc {example.doc_id!r}) has "
        f"{'docid' if text_targets else 'text'} targets"
      )
    yield _record(example)


def fingerprint(examples: Iterable, *, text_targets: bool) -> tuple[str, int]:
  """(sha256 of the examples' records in order, how many): what a split's
  shards will hold, known before writing them."""
  digest, count = hashlib.sha256(), 0
  for record in records(examples, text_targets, "stream"):
    digest.update(len(record).to_bytes(8, "little"))
    digest.update(record)
    count += 1
  return digest.hexdigest(), count


# ----------------------------------------------------------------- shards --


class ShardError(ValueError):
  """A shard folder is incomplete, or a shard is missing or corrupt."""


@dataclasses.dataclass(frozen=True)
class Shards:
  """One split's examples on disk: `paths` in write order (round-robin:
  example i is in paths[i % len(paths)]), `count` examples whose records
  hash to `fingerprint` (`fingerprint()`)."""

  directory: str
  paths: tuple[str, ...]
  count: int
  fingerprint: str
  text_targets: bool


def write_shards(
  directory: str,
  examples: Iterable,
  *,
  text_targets: bool,
  num_shards: int,
  expected_fingerprint: str | None = None,
) -> Shards:
  """Writes `examples` round-robin to `num_shards` TFRecord files and a
  MANIFEST.json under `directory`, all renamed into place at once (a crash
  leaves no folder). Raises if the records do not hash to
  `expected_fingerprint` (given: an example stream that changed)."""
  parent = os.path.dirname(os.path.abspath(directory))
  os.makedirs(parent, exist_ok=True)
  staging = atomic_io.staging_dir(parent, ".tmp-shards-")
  try:
    names = [
      f"shard-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(os.path.join(staging, n)) for n in names]
    digest, count = hashlib.sha256(), 0
    for count, record in enumerate(
      records(examples, text_targets, directory), 1
    ):
      writers[(count - 1) % num_shards].write(record)
      digest.update(len(record).to_bytes(8, "little"))
      digest.update(record)
    for writer in writers:
      writer.close()
    if expected_fingerprint and digest.hexdigest() != expected_fingerprint:
      raise ValueError(f"{directory}: the examples changed while written")
    manifest = {
      "format": MANIFEST_FORMAT,
      "count": count,
      "fingerprint": digest.hexdigest(),
      "text_targets": text_targets,
      "shards": {
        n: atomic_io.sha256_file(os.path.join(staging, n)) for n in names
      },
    }
    atomic_io.write_json(os.path.join(staging, MANIFEST), manifest, indent=1)
    if os.path.isdir(directory):  # written meanwhile by another process
      shutil.rmtree(staging)
    else:
      os.replace(staging, directory)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return load_shards(directory)


def load_shards(directory: str) -> Shards:
  """The shards under `directory`, each checked against its MANIFEST.json
  sha256. Raises ShardError naming the manifest or the shard that is
  missing or corrupt."""
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
    listed = manifest["shards"]
  except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
    raise ShardError(f"{path} is missing or not a shard manifest: {e}") from e
  paths = []
  for name, sha256 in sorted(listed.items()):
    shard = os.path.join(directory, name)
    if not os.path.isfile(shard):
      raise ShardError(f"{shard} is listed in {path} but missing")
    if atomic_io.sha256_file(shard) != sha256:
      raise ShardError(
        f"{shard} is corrupt: its sha256 is not the one in {path} "
        f"(delete {directory} to write it again)"
      )
    paths.append(shard)
  return Shards(
    directory,
    tuple(paths),
    manifest["count"],
    manifest["fingerprint"],
    manifest["text_targets"],
  )


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
  return _parsed(records, text_targets, shuffle, seed, shuffle_buffer)


def read_shards(
  paths: Sequence[str],
  *,
  text_targets: bool,
  shuffle: bool = False,
  seed=None,
  shuffle_buffer: int = 10_000,
) -> tf.data.Dataset:
  """`write_shards`' examples as `read_examples` gives them: in write
  order (the shards interleaved one record at a time), or shuffled (the
  shards' order, then a buffer of `shuffle_buffer` serialised records,
  both reshuffled each epoch), holding at most the buffer in memory."""
  files = tf.data.Dataset.from_tensor_slices(list(paths))
  if shuffle:
    files = files.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
  records = files.interleave(
    tf.data.TFRecordDataset,
    cycle_length=len(paths),
    block_length=1,
  )
  return _parsed(records, text_targets, shuffle, seed, shuffle_buffer)


def _parsed(
  records: tf.data.Dataset,
  text_targets: bool,
  shuffle: bool,
  seed,
  shuffle_buffer: int,
) -> tf.data.Dataset:
  """Serialised `records`, shuffled in a buffer of `shuffle_buffer`
  (reshuffled each epoch) when `shuffle`, parsed to features in order."""
  if shuffle:
    records = records.shuffle(
      shuffle_buffer, seed=seed, reshuffle_each_iteration=True
    )
  return records.map(
    lambda record: _parse(record, text_targets),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
