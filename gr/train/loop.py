"""The training loop: sharded train step, optimizer, resume.

`train()` is the run function, free of gin (tests/test_gin_edge.py): gin files
bind `train` and `OptimizerConfig` through gr/experiments/configurables.py,
under the names they always had. It builds a ('data', 'model') mesh,
initialises or restores a `TrainState`, and runs a jitted, sharded
`train_step` over batches of a seqio task or mixture, with

* exact resume: the data order is a function of (seed, step) (a seqio
  dataset with a fixed shuffle seed, skipping the batches already consumed)
  and the dropout rng is fold_in(PRNGKey(seed), step), so a run killed and
  started again with the same command ends with the same params as one that
  never stopped;
* orbax checkpoints every `checkpoint_every` steps, keeping the last
  `keep_checkpoints` (gr/train/checkpoints.py);
* a log line every `log_every` steps (step, loss, accuracy, steps/s, ETA),
  TensorBoard scalars in model_dir, eval loss on the 'validation' split;
* jax_transfer_guard('disallow') around every step after the first, so a
  hidden host<->device copy fails loudly.

The model comes in as an object (gr.model.models.EncoderDecoderModel) with
`init_params(rng, *, input_length, target_length)`, `logical_axes()` and
`loss_fn(params, batch, dropout_rng) -> (loss, metrics)`.
"""

from collections.abc import Callable, Iterator, Mapping
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from typing import Any, Protocol

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gr.model import bert
from gr.model import bert_network
from gr.train import checkpoints
from gr.model import embed
from gr.model import models
from gr.model import network
from gr import partitioning


def pretrained_encoder_config(
  *,
  decoder: network.T5Config,
  encoder_dir: str | None = None,
  trainable_encoder_layers: int = 0,
) -> bert_network.BertT5Config:
  """A BERT-family encoder (a HF folder; default all-MiniLM-L6-v2) under
  the `decoder` T5 config, its top `trainable_encoder_layers` trained."""
  encoder_dir = encoder_dir or embed.default_model_dir()
  return bert_network.BertT5Config(
    bert.BertConfig.from_folder(encoder_dir),
    decoder,
    trainable_encoder_layers,
    encoder_dir,
  )


PyTree = Any
Batch = Mapping[str, jax.Array]


class TrainableModel(Protocol):
  """What train() needs from a model (gr.model.models.EncoderDecoderModel)."""

  def init_params(
    self, rng: jax.Array, *, input_length: int, target_length: int
  ) -> PyTree: ...

  def loss_fn(
    self, params: PyTree, batch: Batch, dropout_rng: jax.Array | None
  ) -> tuple[jax.Array, dict]: ...

  def logical_axes(self) -> PyTree:
    """PartitionSpec of logical axis names for every param."""
    ...


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes. step: [] int32."""

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState


# ------------------------------------------------------------ optimizer --


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """How parameters are updated.

  Attributes:
    name: 'adamw' or 'adafactor'.
    learning_rate: peak learning rate.
    schedule: 'constant', 'rsqrt' (lr * sqrt(warmup / step) after warmup) or
      'cosine' (decays to lr * final_lr_fraction at the last train step).
    warmup_steps: linear warmup from 0 to learning_rate.
    final_lr_fraction: end of the cosine schedule, as a fraction of lr.
    weight_decay: decoupled weight decay (AdamW) / decay rate (Adafactor).
    clip_grad_norm: clip gradients to this global norm; None for no clip.
    b1, b2, eps: AdamW moments.
    sam_rho: sharpness-aware minimisation radius; 0 turns SAM off.
  """

  name: str = 'adamw'
  learning_rate: float = 1e-3
  schedule: str = 'constant'
  warmup_steps: int = 0
  final_lr_fraction: float = 0.0
  weight_decay: float = 0.0
  clip_grad_norm: float | None = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  sam_rho: float = 0.0


def learning_rate_schedule(
  config: OptimizerConfig, total_steps: int
) -> optax.Schedule:
  """The schedule named by config.schedule, with linear warmup."""
  lr, warmup = config.learning_rate, config.warmup_steps
  if config.schedule == 'constant':
    decay = optax.constant_schedule(lr)
  elif config.schedule == 'rsqrt':
    decay = lambda t: (
      lr * jnp.sqrt(max(warmup, 1) / jnp.maximum(t + warmup, max(warmup, 1)))
    )
  elif config.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(
      lr, max(total_steps - warmup, 1), alpha=config.final_lr_fraction
    )
  else:
    raise ValueError(
      f'OptimizerConfig.schedule={config.schedule!r}: expected'
      " 'constant', 'rsqrt' or 'cosine'"
    )
  if not warmup:
    return decay
  return optax.join_schedules(
    [optax.linear_schedule(0.0, lr, warmup), decay], [warmup]
  )


def make_optimizer(
  config: OptimizerConfig, total_steps: int
) -> optax.GradientTransformation:
  """Gradient clipping + AdamW or Adafactor with the configured schedule."""
  schedule = learning_rate_schedule(config, total_steps)
  if config.name == 'adamw':
    core = optax.adamw(
      schedule,
      b1=config.b1,
      b2=config.b2,
      eps=config.eps,
      weight_decay=config.weight_decay,
    )
  elif config.name == 'adafactor':
    core = optax.adafactor(
      schedule, weight_decay_rate=config.weight_decay or None
    )
  else:
    raise ValueError(
      f"OptimizerConfig.name={config.name!r}: expected 'adamw' or 'adafactor'"
    )
  if config.clip_grad_norm is None:
    return core
  return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), core)


def freeze(
  optimizer: optax.GradientTransformation,
  trainable_mask: Callable[[PyTree], PyTree],
) -> optax.GradientTransformation:
  """`optimizer` on parameters where trainable_mask(params) is True; the
  rest get zero updates (no optimizer state, no weight decay)."""

  def labels(params):
    return jax.tree.map(
      lambda t: 'train' if t else 'frozen', trainable_mask(params)
    )

  return optax.multi_transform(
    {'train': optimizer, 'frozen': optax.set_to_zero()}, labels
  )


def model_optimizer(
  model: TrainableModel, config: OptimizerConfig, total_steps: int
) -> optax.GradientTransformation:
  """`make_optimizer`, frozen where the model's `trainable_mask` says so
  (a pretrained encoder's frozen layers get no updates)."""
  optimizer = make_optimizer(config, total_steps)
  if hasattr(model, 'trainable_mask'):
    optimizer = freeze(optimizer, model.trainable_mask)
  return optimizer


# ----------------------------------------------------------- train step --


LossFn = Callable[[PyTree, Batch, jax.Array], tuple[jax.Array, dict]]


def sam_gradients(
  loss_fn: LossFn, params: PyTree, batch: Batch, rng: jax.Array, rho: float
) -> tuple[PyTree, tuple]:
  """Gradients for a (SAM) update, and (loss, metrics) at `params`.

  With rho > 0 (sharpness-aware minimisation): step to
  params + rho * g / ||g||, where g is the gradient at params, and return
  the gradient there, to be applied at the original params. rho = 0 is the
  plain gradient.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  grads, (loss, metrics) = grad_fn(params, batch, rng)
  if rho:
    scale = rho / (optax.global_norm(grads) + 1e-12)
    ascended = jax.tree.map(lambda p, g: p + scale * g, params, grads)
    grads, _ = grad_fn(ascended, batch, rng)
  return grads, (loss, metrics)


def _with_loss(loss_fn: LossFn) -> LossFn:
  """(params, batch, rng) -> (loss, (loss, metrics)), for jax.grad aux."""

  def wrapped(params, batch, rng):
    loss, metrics = loss_fn(params, batch, rng)
    return loss, (loss, metrics)

  return wrapped


def train_step_fn(
  model: TrainableModel,
  optimizer: optax.GradientTransformation,
  *,
  sam_rho: float = 0.0,
):
  """The (unjitted) step: (state, batch, rng) -> (state, metrics).

  The dropout rng is fold_in(rng, state.step), so it depends only on the
  seed and the step. Batch arrays are [batch, length]; metrics are scalars.
  """

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)
    grads, (loss, metrics) = sam_gradients(
      _with_loss(model.loss_fn), state.params, batch, dropout_rng, sam_rho
    )
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, 'loss': loss, 'grad_norm': optax.global_norm(grads)}
    new_state = TrainState(
      step=state.step + 1, params=params, opt_state=opt_state
    )
    return new_state, metrics

  return step


@dataclasses.dataclass(frozen=True)
class Sharded:
  """State shardings and the jitted, sharded functions for one mesh."""

  mesh: jax.sharding.Mesh
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs with the shardings
  init: Callable[[jax.Array], TrainState]
  step: Callable[[TrainState, Batch, jax.Array], tuple[TrainState, dict]]
  eval: Callable[[PyTree, Batch], dict]


def _in_mesh(mesh, fn):
  """Calls (and so traces) `fn` with the mesh and logical rules active."""

  @functools.wraps(fn)
  def wrapped(*args):
    with partitioning.mesh_context(mesh):
      return fn(*args)

  return wrapped


def abstract_params(
  model: TrainableModel, *, input_length: int, target_length: int
) -> tuple[PyTree, PyTree]:
  """(params as ShapeDtypeStructs, tree of logical PartitionSpecs)."""
  params = jax.eval_shape(
    functools.partial(
      model.init_params, input_length=input_length, target_length=target_length
    ),
    jax.random.key(0),
  )
  return nn.unbox(params), model.logical_axes()


def shard_model(
  model: TrainableModel,
  optimizer,
  mesh,
  *,
  input_length: int,
  target_length: int,
  sam_rho: float = 0.0,
) -> Sharded:
  """Works out state shardings and jits init, train step and eval step.

  The big parameters are split along 'model' (LOGICAL_AXIS_RULES); the
  optimizer state follows its parameter; the batch is split along 'data'.
  """
  params, axes = abstract_params(
    model, input_length=input_length, target_length=target_length
  )
  params_shardings = partitioning.shardings_from_logical(axes, mesh)
  opt_state = jax.eval_shape(optimizer.init, params)
  replicated = partitioning.replicated(mesh)
  state_shardings = TrainState(
    step=replicated,
    params=params_shardings,
    opt_state=partitioning.shardings_like_params(
      opt_state, params, params_shardings, mesh
    ),
  )
  abstract_state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    TrainState(
      step=jax.ShapeDtypeStruct((), jnp.int32),
      params=params,
      opt_state=opt_state,
    ),
    state_shardings,
  )
  batch = partitioning.batch_sharding(mesh)

  def init(rng):
    params = nn.unbox(
      model.init_params(
        rng, input_length=input_length, target_length=target_length
      )
    )
    return TrainState(
      step=jnp.zeros([], jnp.int32),
      params=params,
      opt_state=optimizer.init(params),
    )

  def evaluate(params, batch):
    loss, metrics = model.loss_fn(params, batch, None)
    return {**metrics, 'loss': loss}

  step = jax.jit(
    train_step_fn(model, optimizer, sam_rho=sam_rho),
    in_shardings=(state_shardings, batch, replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )
  return Sharded(
    mesh=mesh,
    state_shardings=state_shardings,
    abstract_state=abstract_state,
    init=_in_mesh(
      mesh,
      jax.jit(init, in_shardings=replicated, out_shardings=state_shardings),
    ),
    step=_in_mesh(mesh, step),
    eval=_in_mesh(
      mesh,
      jax.jit(
        evaluate,
        in_shardings=(params_shardings, batch),
        out_shardings=replicated,
      ),
    ),
  )


# ----------------------------------------------------------------- data --


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
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(dir=parent, prefix='.tmp-data-')
    self._checkpoint().write(os.path.join(staging, self.STATE))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(staging, directory)

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


# -------------------------------------------------------------- logging --


class SummaryWriter:
  """TensorBoard scalars (the 'scalars' plugin format) under a directory."""

  def __init__(self, logdir: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from tensorflow.core.framework import summary_pb2  # pylint: disable=g-import-not-at-top

    self._tf = tf
    self._writer = tf.summary.create_file_writer(logdir)
    self._metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars')
    )

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    with self._writer.as_default():
      for name, value in scalars.items():
        self._tf.summary.write(
          name,
          self._tf.constant(float(value)),
          step=step,
          metadata=self._metadata,
        )
    self._writer.flush()


def _mean_metrics(history: list[dict]) -> dict[str, float]:
  """Host-side means of per-step scalar metrics (one explicit device_get)."""
  history = jax.device_get(history)
  return {k: float(np.mean([m[k] for m in history])) for k in history[0]}


def _format_duration(seconds: float) -> str:
  minutes, secs = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  return (
    f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'
  )


def _log_line(
  step: int,
  train_steps: int,
  metrics: Mapping[str, float],
  steps_per_sec: float,
) -> str:
  eta = (train_steps - step) / max(steps_per_sec, 1e-9)
  shown = ' '.join(f'{k} {v:.4f}' for k, v in sorted(metrics.items()))
  return (
    f'step {step}/{train_steps} {shown} {steps_per_sec:.2f} steps/s '
    f'ETA {_format_duration(eta)}'
  )


# ------------------------------------------------------------- the loop --


def _initial_state(
  sharded: Sharded, manager, *, seed: int, init_params, init_checkpoint
) -> TrainState:
  """Resumes from model_dir, else starts from init params/checkpoint/seed."""
  restored = checkpoints.restore_latest(manager, sharded.abstract_state)
  if restored is not None:
    logging.info(
      'Resuming from checkpoint step %d in %s', restored[0], manager.directory
    )
    return restored[1]
  if init_checkpoint is not None:
    init_params = checkpoints.restore_params(
      init_checkpoint, shardings=sharded.state_shardings.params
    )
    logging.info('Initial params from %s', init_checkpoint)
  return fresh_state(sharded, seed=seed, init_params=init_params)


_copied = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))


def fresh_state(
  sharded: Sharded, *, seed: int, init_params: PyTree | None = None
) -> TrainState:
  """Step 0 with a new optimizer state: params from `seed`, or
  `init_params` (host or device arrays) when given."""
  state = sharded.init(partitioning.replicated_key(seed, sharded.mesh))
  if init_params is None:
    return state
  shardings = sharded.state_shardings.params
  if jax.process_count() == 1:  # any device or host arrays, committed or not
    # A copy: the step donates the state, and the caller keeps init_params
    # (device_put from one device may hand back its buffer as a shard).
    params = _copied(jax.device_put(init_params, shardings))
  else:  # the same host values in every process
    params = partitioning.put_replicated_tree(init_params, shardings)
  return state.replace(params=params)


def _evaluate(sharded: Sharded, params, eval_batches: list) -> dict:
  """Mean metrics over the (fixed) eval batches."""
  return _mean_metrics([sharded.eval(params, batch) for batch in eval_batches])


def _eval_batches(
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


def _save_data_state(data: DataIterator, manager, step: int) -> None:
  """Saves the data position of `step`; drops those of removed steps."""
  data.save(_data_state_dir(os.fspath(manager.directory), step))
  root = os.path.join(os.fspath(manager.directory), DATA_STATE_DIR)
  kept = {str(s) for s in manager.all_steps()} | {str(step)}
  for name in os.listdir(root):
    if name not in kept and not name.startswith('.'):
      shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def train(
  *,
  model: TrainableModel,
  mixture_or_task_name,
  train_steps: int,
  batch_size: int,
  model_dir: str,
  input_length: int,
  target_length: int,
  optimizer: OptimizerConfig = OptimizerConfig(),
  eval_every: int = 0,
  eval_steps: int = 10,
  checkpoint_every: int = 1000,
  keep_checkpoints: int = 3,
  seed: int = 0,
  mesh_data: int = -1,
  mesh_model: int = 1,
  log_every: int = 100,
  init_params: PyTree | None = None,
  init_checkpoint: str | None = None,
  artifact_dir: str | None = None,
  fit_vocab_to_task: bool = True,
  batch_transform: Callable[[dict], dict] | None = None,
  checkpoint_data: bool = False,
) -> TrainState:
  """Trains `model` on a seqio task/mixture; resumes from `model_dir`.

  Args:
    model: see TrainableModel; vocab_size is set from the task's vocabulary
      (see models.fit_vocab) unless `fit_vocab_to_task` is False.
    mixture_or_task_name: name of a registered seqio task or mixture, or the
      Task/Mixture object ('train' split; eval on 'validation' if present).
    train_steps: total steps (a resumed run stops at the same step).
    batch_size: global batch size (all processes together).
    model_dir: checkpoints and TensorBoard events go here.
    input_length, target_length: token lengths of inputs and targets.
    optimizer: an OptimizerConfig (includes sam_rho).
    eval_every: eval every N steps (0: never); eval_steps batches each.
    checkpoint_every: save every N steps (and at the end).
    keep_checkpoints: keep the last N checkpoints.
    seed: one seed for params, data order and dropout.
    mesh_data, mesh_model: mesh shape (-1: all remaining devices).
    log_every: a log line and TensorBoard scalars every N steps.
    init_params: start from these params (not via gin).
    init_checkpoint: start from the params of this model_dir's latest step.
    artifact_dir: index artifact directory saved beside every checkpoint.
    fit_vocab_to_task: False keeps the model's vocab_size (e.g. to start
      from a checkpoint with T5's 32128 rows).
    batch_transform: applied to each host batch (numpy) before it goes to
      the devices, e.g. gr.model.encoder_cache adding `encoder_frozen_states`.
    checkpoint_data: also save the data iterator's position with every
      checkpoint (model_dir/data_state/<step>/), so that a resumed run
      continues from it instead of reading and tokenising the consumed
      batches again (`DataIterator`); a step without one resumes by skip.

  Returns:
    The final TrainState.
  """
  if fit_vocab_to_task:
    model = models.fit_vocab(model, task_vocab_size(mixture_or_task_name))
  mesh = partitioning.make_mesh(data=mesh_data, model=mesh_model)
  sharded = shard_model(
    model,
    model_optimizer(model, optimizer, train_steps),
    mesh,
    input_length=input_length,
    target_length=target_length,
    sam_rho=optimizer.sam_rho,
  )
  manager = checkpoints.make_manager(model_dir, keep=keep_checkpoints)
  state = _initial_state(
    sharded,
    manager,
    seed=seed,
    init_params=init_params,
    init_checkpoint=init_checkpoint,
  )
  start = int(jax.device_get(state.step))
  lengths = dict(
    input_length=input_length,
    target_length=target_length,
    batch_size=batch_size,
    seed=seed,
  )
  data = resumed_batches(
    mixture_or_task_name,
    model_dir if checkpoint_data else None,
    start,
    **lengths,
  )
  batches = data
  if batch_transform is not None:
    batches = map(batch_transform, batches)
  eval_batches = None
  if eval_every and has_split(mixture_or_task_name, 'validation'):
    eval_batches = _eval_batches(
      mixture_or_task_name,
      eval_steps,
      mesh,
      batch_transform=batch_transform,
      **lengths,
    )
  writer = SummaryWriter(model_dir) if jax.process_index() == 0 else None
  rng = partitioning.replicated_key(seed, mesh)
  state = run_loop(
    sharded,
    state,
    batches,
    rng,
    manager=manager,
    start=start,
    train_steps=train_steps,
    log_every=log_every,
    checkpoint_every=checkpoint_every,
    writer=writer,
    eval_every=eval_every,
    eval_batches=eval_batches,
    artifact_dir=artifact_dir,
    before_checkpoint=(
      functools.partial(_save_data_state, data, manager)
      if checkpoint_data
      else None
    ),
  )
  manager.wait_until_finished()
  manager.close()
  return state


def run_loop(
  sharded: Sharded,
  state: TrainState,
  batches: Iterator[dict[str, np.ndarray]],
  rng: jax.Array,
  *,
  start: int,
  train_steps: int,
  log_every: int,
  manager=None,
  checkpoint_every: int = 0,
  artifact_dir: str | None = None,
  writer: SummaryWriter | None = None,
  eval_every: int = 0,
  eval_batches: list | None = None,
  before_checkpoint: Callable[[int], None] | None = None,
) -> TrainState:
  """The step loop: train, log, evaluate, checkpoint; steps start+1..train_steps.

  `batches` yields host batches [batch / processes, length]; the dropout
  rng of a step is fold_in(rng, step). Without a checkpoint `manager` the
  run lives in memory (a continual update commits it as a whole); without
  `writer` no TensorBoard scalars; without `eval_batches` no eval.
  `before_checkpoint(step)` runs before each checkpoint is saved (e.g. the
  data position, written first so that a committed step always has it).
  """
  history, tick, tick_step = [], time.time(), start
  for step in range(start + 1, train_steps + 1):
    guard = 'allow' if step == start + 1 else 'disallow'
    with jax.transfer_guard(guard):
      batch = partitioning.global_batch(next(batches), sharded.mesh)
      state, metrics = sharded.step(state, batch, rng)
    history.append(metrics)
    if step % log_every == 0 or step == train_steps:
      means = _mean_metrics(history)
      rate = (step - tick_step) / (time.time() - tick)
      logging.info('%s', _log_line(step, train_steps, means, rate))
      if writer:
        writer.write_scalars(
          step,
          {f'train/{k}': v for k, v in means.items()} | {'steps_per_sec': rate},
        )
      history, tick, tick_step = [], time.time(), step
    if eval_batches and (step % eval_every == 0 or step == train_steps):
      means = _evaluate(sharded, state.params, eval_batches)
      logging.info('eval at step %d: %s', step, means)
      if writer:
        writer.write_scalars(step, {f'eval/{k}': v for k, v in means.items()})
    if manager is not None and (
      step % checkpoint_every == 0 or step == train_steps
    ):
      if before_checkpoint is not None:
        before_checkpoint(step)
      checkpoints.save(manager, step, state, artifact_dir)
  return state
