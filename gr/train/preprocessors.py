"""The tf.data side of gr's seqio tasks, and the preprocessors they share.

In-memory examples (gr/train/tasks.py's `Example`) become a tf.data dataset
with string features and `targets` (`examples_to_dataset`; `dataset_fn`
gives seqio's dataset_fn over them by split). Every task then tokenises its
string features (`tokenize_text_features`: docid targets come tokenised),
appends EOS after trimming, and, with docid targets, fails rather than trim
a docid (`check_targets_fit`); `output_features` names the vocabularies.
"""

from typing import Any, Callable, Mapping, Optional, Sequence

import seqio
import tensorflow as tf


def _strings(values: Sequence[str]) -> tf.Tensor:
  return tf.constant(list(values), dtype=tf.string)


def examples_to_dataset(examples: Sequence[Any]) -> tf.data.Dataset:
  """`gr.train.tasks.Example`s -> tf.data with string features and `targets` [length].

  Docid targets become int32 (ragged before slicing); text targets strings.
  """
  columns = {
    "inputs": _strings(e.inputs for e in examples),
    "doc_id": _strings(e.doc_id for e in examples),
    "query_id": _strings(e.query_id for e in examples),
  }
  if examples and isinstance(examples[0].targets, str):
    columns["targets"] = _strings(e.targets for e in examples)
  else:
    flat = [i for e in examples for i in e.targets]
    columns["targets"] = tf.RaggedTensor.from_row_lengths(
      tf.constant(flat, tf.int32), [len(e.targets) for e in examples]
    )
    columns["docid"] = _strings(e.docid for e in examples)
  return tf.data.Dataset.from_tensor_slices(columns)


def dataset_fn(examples_by_split: Mapping[str, Sequence[Any]]) -> Callable:
  """A seqio dataset_fn over in-memory examples (`Example`s by split; a
  full shuffle if asked)."""

  def split_dataset(
    split: str, shuffle_files: bool, seed: Optional[int] = None
  ):
    examples = examples_by_split[split]
    dataset = examples_to_dataset(examples)
    if shuffle_files:
      dataset = dataset.shuffle(
        len(examples), seed=seed, reshuffle_each_iteration=True
      )
    return dataset

  return split_dataset


# -------------------------------------------------------- preprocessors --


def tokenize_text_features(
  dataset: tf.data.Dataset,
  output_features: Mapping[str, seqio.Feature],
  copy_pretokenized: bool = True,
) -> tf.data.Dataset:
  """Encodes string output features (no EOS); int features pass through.

  seqio.preprocessors.tokenize calls `encode_tf` on every output feature,
  pre-tokenised ints included, so docid targets need this variant.
  """

  def tokenize(features):
    tokenized = dict(features)
    for key, feature in output_features.items():
      if key in features and features[key].dtype == tf.string:
        if copy_pretokenized:
          tokenized[f"{key}_pretokenized"] = features[key]
        tokenized[key] = feature.vocabulary.encode_tf(features[key])
    return tokenized

  return dataset.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE)


def check_targets_fit(
  dataset: tf.data.Dataset, sequence_length: Optional[Mapping[str, int]] = None
) -> tf.data.Dataset:
  """Fails (naming the docid) if a docid target is longer than allowed.

  Trimming a docid would silently name another document (or none).
  """
  limit = (sequence_length or {}).get("targets")
  if limit is None:
    return dataset

  def check(features):
    length = tf.size(features["targets"])
    assertion = tf.debugging.Assert(
      length <= limit,
      [
        "docid",
        features["docid"],
        "needs",
        length,
        "target tokens with EOS; sequence_length['targets'] is",
        limit,
      ],
    )
    with tf.control_dependencies([assertion]):
      return dict(features, targets=tf.identity(features["targets"]))

  return dataset.map(check)


def output_features(vocab, *, docid_targets: bool) -> dict[str, seqio.Feature]:
  """`inputs` text (EOS or the encoder's own end marker); `targets`
  pre-tokenised docids or text."""
  return {
    "inputs": seqio.Feature(vocab.input_vocabulary, add_eos=vocab.input_eos),
    "targets": seqio.Feature(vocab, add_eos=not docid_targets),
  }


def preprocessors(*, docid_targets: bool) -> list[Callable]:
  steps = [tokenize_text_features, seqio.preprocessors.append_eos_after_trim]
  return steps + [check_targets_fit] if docid_targets else steps
