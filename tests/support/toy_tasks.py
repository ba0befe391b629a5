"""A toy seqio task for training tests: reverse a short sequence of ints.

Importing this module registers TOY_TASK (again, safely). Examples are a
fixed function of their index, so every process and every run sees the same
data; token ids start at 3 (0 = PAD, 1 = EOS, 2 = UNK).
"""

import numpy as np
import seqio
import tensorflow as tf

TOY_TASK = 'gr_test_reverse'
TOY_VOCAB_SIZE = 32
MAX_LENGTH = 8
NUM_EXAMPLES = {'train': 512, 'validation': 64}


def _examples(split: str) -> dict[str, np.ndarray]:
  """[n, MAX_LENGTH] zero-padded inputs and their reversals as targets."""
  rng = np.random.default_rng(0 if split == 'train' else 1)
  n = NUM_EXAMPLES[split]
  lengths = rng.integers(3, MAX_LENGTH + 1, size=n)
  inputs = np.zeros((n, MAX_LENGTH), np.int32)
  targets = np.zeros((n, MAX_LENGTH), np.int32)
  for i, length in enumerate(lengths):
    tokens = rng.integers(3, TOY_VOCAB_SIZE, size=length)
    inputs[i, :length] = tokens
    targets[i, :length] = tokens[::-1]
  return {'inputs': inputs, 'targets': targets}


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
  del shuffle_files, seed
  ds = tf.data.Dataset.from_tensor_slices(_examples(split))
  # Drop the zero padding: seqio features are variable length.
  return ds.map(
    lambda ex: {k: tf.boolean_mask(v, v > 0) for k, v in ex.items()}
  )


def register() -> str:
  vocab = seqio.PassThroughVocabulary(size=TOY_VOCAB_SIZE, eos_id=1)
  features = {
    k: seqio.Feature(vocab, add_eos=True, dtype=tf.int32)
    for k in ('inputs', 'targets')
  }
  if TOY_TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(TOY_TASK)
  seqio.TaskRegistry.add(
    TOY_TASK,
    source=seqio.FunctionDataSource(_dataset_fn, splits=tuple(NUM_EXAMPLES)),
    preprocessors=[seqio.preprocessors.append_eos_after_trim],
    output_features=features,
  )
  return TOY_TASK


register()
