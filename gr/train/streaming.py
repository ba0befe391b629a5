"""When a job's tasks stream from files, and the files they stream from.

A corpus of more than `Streaming.above_docs` documents (50,000 by default:
the news demo's 3,720 stay in memory, with their exact numbers) has its
tasks written once to TFRecord shards and read back as it trains, shuffled
in a buffer of `shuffle_buffer` records (gr/train/example_files.py), so the
tasks' peak RSS is bounded by the buffer, not the corpus. The training loop
then saves the data iterator's position with each checkpoint
(gr/train/loop.py `checkpoint_data`, gr/train/data.py `streams_from_files`).

Each split's shards live in `{directory}/{task name}.{split}.{fingerprint}/`,
the fingerprint being the sha256 of the split's serialised examples: a
rerun over the same data finds them and reads them (after checking each
shard's sha256) instead of writing them again; changed data gets a new
folder.
"""

import dataclasses
import math
import os
from typing import Mapping, Optional

from absl import logging

from gr.train import example_files

DEFAULT_ABOVE_DOCS = 50_000
DEFAULT_SHUFFLE_BUFFER = 10_000
ENV_DIRECTORY = "GR_EXAMPLES_DIR"


def default_directory() -> str:
  """$GR_EXAMPLES_DIR, else $XDG_CACHE_HOME/gr/examples (~/.cache/...)."""
  if os.environ.get(ENV_DIRECTORY):
    return os.environ[ENV_DIRECTORY]
  cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
  return os.path.join(cache, "gr", "examples")


@dataclasses.dataclass(frozen=True)
class Streaming:
  """Whether and how a job's tasks stream from files.

  Attributes:
    above_docs: stream when the corpus has more documents than this
      (negative: never; 0: always).
    directory: where the shards go (None: `default_directory()`).
    shuffle_buffer: records held for shuffling (the memory bound).
    examples_per_shard: at most this many examples per shard file.
  """

  above_docs: int = DEFAULT_ABOVE_DOCS
  directory: Optional[str] = None
  shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER
  examples_per_shard: int = 100_000

  def applies(self, num_docs: int) -> bool:
    return self.above_docs >= 0 and num_docs > self.above_docs

  @property
  def root(self) -> str:
    return self.directory or default_directory()


DEFAULT = Streaming()
IN_MEMORY = Streaming(above_docs=-1)


def split_shards(
  streaming: Streaming, name: str, split: str, stream, *, text_targets: bool
) -> Optional[example_files.Shards]:
  """The shards of one split of task `name` (examples from `stream()`),
  reused when written before, else written; None for an empty split."""
  fingerprint, count = example_files.fingerprint(
    stream(), text_targets=text_targets
  )
  if not count:
    return None
  directory = os.path.join(streaming.root, f"{name}.{split}.{fingerprint[:16]}")
  if os.path.isdir(directory):
    shards = example_files.load_shards(directory)
    if shards.fingerprint == fingerprint:
      logging.info(
        "%s %s: reusing %d examples in %s", name, split, count, directory
      )
      return shards
    raise example_files.ShardError(
      f"{directory} holds other examples than {name} {split}: delete it"
    )
  num_shards = max(1, math.ceil(count / streaming.examples_per_shard))
  logging.info(
    "%s %s: writing %d examples to %d shards in %s",
    name, split, count, num_shards, directory,
  )  # fmt: skip
  return example_files.write_shards(
    directory,
    stream(),
    text_targets=text_targets,
    num_shards=num_shards,
    expected_fingerprint=fingerprint,
  )


def task_shards(
  streaming: Streaming, name: str, streams: Mapping, *, text_targets: bool
) -> dict[str, example_files.Shards]:
  """split -> shards of task `name` (`split_shards`), non-empty splits only."""
  by_split = {
    split: split_shards(
      streaming, name, split, stream, text_targets=text_targets
    )
    for split, stream in streams.items()
  }
  return {split: shards for split, shards in by_split.items() if shards}
