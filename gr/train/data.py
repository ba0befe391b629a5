"""Training data: batches of seqio tasks, and their saved position.

Tasks that stream from files (`streams_from_files`) have their position
saved with each checkpoint by default (gr/train/loop.py `checkpoint_data`).

A task's batches come in an order that is a function of the seed alone
(`task_dataset`), so a resumed run can skip what it consumed
(`task_batches`); a `DataIterator` saves and restores a tf.data pipeline's
position instead, so a resumed run continues without reading or tokenising
the consumed batches again (`resumed_batches`, `save_data_state`: one
position per checkpoint step, under model_dir/data_state/<step>/).
"""

from collections.abc import Iterator
import os
import shutil

from absl import logging
import jax
import numpy as np

from gr import atomic_io
from gr import partitioning


def task_dataset(
  mixture_or_task_name,
  *,
  split: str,
  input_length: int,
  target_length: int,
  batch_size: int,
  seed: int,
  shuffle: bool = True,
):
  """This process's batches of a seqio task as a tf.data.Dataset,
  [batch_size / processes, len]; repeats forever in an order that is a
  function of `seed` alone."""
  import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  ds = seqio.get_dataset(
    mixture_or_task_name,
    task_feature_lengths={'inputs': input_length, 'targets': target_length},
    feature_converter=seqio.EncDecFeatureConverter(pack=False),
    dataset_split=split,
    shuffle=shuffle,
    num_epochs=None,
    shard_info=partitioning.host_shard_info(),
    seed=seed,
  )
  return ds.batch(
    partitioning.per_host_batch_size(batch_size), drop_remainder=True
  )


def task_batches(
  mixture_or_task_name, *, skip_batches: int = 0, **kwargs
) -> Iterator[dict[str, np.ndarray]]:
  """`task_dataset`'s batches as numpy; skipping `skip_batches` resumes
  exactly where a run that consumed them stopped (by reading and
  tokenising them again: `DataIterator` restores without that)."""
  ds = task_dataset(mixture_or_task_name, **kwargs)
  return ds.skip(skip_batches).as_numpy_iterator()


class DataIterator:
  """Numpy batches of a tf.data pipeline whose position can be saved.

  `save` writes the iterator's state (the sources' read positions, shuffle
  buffers, sampling rng: tf.train.Checkpoint) into a directory, atomically;
  `restore` puts a fresh iterator over the same pipeline at that position,
  so a resumed run continues with the next batch without reading or
  tokenising the consumed ones again. State outside tf.data (a tokenizer's
  model, a tf.Variable) is not saved.
  """

  STATE = 'state'

  def __init__(self, dataset):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    self._tf = tf
    options = tf.data.Options()
    # The tokenizers' resources (a sentencepiece model) are constant state
    # outside the pipeline: the position needs only what tf.data holds.
    options.experimental_external_state_policy = (
      tf.data.experimental.ExternalStatePolicy.IGNORE
    )
    self._iterator = iter(dataset.with_options(options))

  def __iter__(self) -> 'DataIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in next(self._iterator).items()}

  def _checkpoint(self):
    return self._tf.train.Checkpoint(iterator=self._iterator)

  def save(self, directory: str) -> None:
    """Writes the position to `directory` (replacing it, atomically)."""
    with atomic_io.replaced_dir(directory) as staging:
      self._checkpoint().write(os.path.join(staging, self.STATE))

  def restore(self, directory: str) -> None:
    status = self._checkpoint().read(os.path.join(directory, self.STATE))
    status.assert_consumed()


def concatenated_batches(
  *iterators: Iterator[dict[str, np.ndarray]],
) -> Iterator[dict[str, np.ndarray]]:
  """One batch from each iterator, joined along the batch axis, forever:
  e.g. [B - k] new examples then [k] replayed ones in every batch."""
  for parts in zip(*iterators):
    yield {
      key: np.concatenate([part[key] for part in parts]) for key in parts[0]
    }


# Names of the tasks that stream from files (gr/train/tasks.py marks them).
_STREAMED: set[str] = set()


def mark_streamed(task_name: str) -> None:
  """Records that `task_name` reads its examples from files as it trains."""
  _STREAMED.add(task_name)


def streams_from_files(mixture_or_task) -> bool:
  """Whether every task of a mixture (or the task) streams from files: its
  data position is a file offset and a bounded shuffle buffer, cheap to
  save with each checkpoint (in-memory tasks shuffle their whole split)."""
  task = _get_task(mixture_or_task)
  names = [t.name for t in getattr(task, 'tasks', [task])]
  return bool(names) and all(name in _STREAMED for name in names)


def _get_task(mixture_or_task):
  """A registered name or a seqio Task/Mixture object -> the object."""
  import seqio  # pylint: disable=g-import-not-at-top

  if isinstance(mixture_or_task, str):
    return seqio.get_mixture_or_task(mixture_or_task)
  return mixture_or_task


def task_vocab_size(mixture_or_task) -> int:
  """Size of the task's 'targets' vocabulary (inputs share it)."""
  features = _get_task(mixture_or_task).output_features
  return features['targets'].vocabulary.vocab_size


def has_split(mixture_or_task, split: str) -> bool:
  return split in _get_task(mixture_or_task).splits


def validation_batches(
  mixture_or_task, eval_steps: int, mesh, *, batch_transform=None, **kwargs
) -> list[dict[str, jax.Array]]:
  """The first `eval_steps` validation batches, on device, for every eval."""
  batches = task_batches(
    mixture_or_task, split='validation', shuffle=False, **kwargs
  )
  if batch_transform is not None:
    batches = map(batch_transform, batches)
  return [
    partitioning.global_batch(next(batches), mesh) for _ in range(eval_steps)
  ]


DATA_STATE_DIR = 'data_state'


def _data_state_dir(model_dir: str, step: int) -> str:
  """model_dir/data_state/<step>/process_<i>: this process's position."""
  return os.path.join(
    model_dir, DATA_STATE_DIR, str(step), f'process_{jax.process_index()}'
  )


def resumed_batches(
  mixture_or_task_name, model_dir: str | None, start: int, **kwargs
) -> Iterator[dict[str, np.ndarray]]:
  """Train batches from step `start` on: restored from the data position
  saved in `model_dir` at that step when there is one (a DataIterator),
  else by skipping `start` batches (model_dir None: always a skip)."""
  dataset = task_dataset(mixture_or_task_name, split='train', **kwargs)
  if model_dir is None:
    return dataset.skip(start).as_numpy_iterator()
  state = _data_state_dir(model_dir, start)
  if not start or not os.path.isdir(state):
    if start:
      logging.info(
        'No data position for step %d: skipping %d batches', start, start
      )
    return DataIterator(dataset.skip(start))
  data = DataIterator(dataset)
  data.restore(state)
  logging.info('Data position restored from %s', state)
  return data


def save_data_state(data: DataIterator, manager, step: int) -> None:
  """Saves the data position of `step`; drops those of removed steps."""
  data.save(_data_state_dir(os.fspath(manager.directory), step))
  root = os.path.join(os.fspath(manager.directory), DATA_STATE_DIR)
  kept = {str(s) for s in manager.all_steps()} | {str(step)}
  for name in os.listdir(root):
    if name not in kept and not name.startswith('.'):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)
