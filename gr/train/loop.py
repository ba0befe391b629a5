"""The training loop: set-up, the step loop, logging, resume.

The optimizer is gr/train/optimizer.py, the train state and its sharded,
jitted step gr/train/state.py, the data and its saved position
gr/train/data.py.

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

The model comes in as an object: `state.TrainableModel` (what
gr.model.models.EncoderDecoderModel provides).
"""

import functools
import time
from collections.abc import Callable, Iterator, Mapping

from absl import logging
import jax
import numpy as np

from gr.model import models
from gr import partitioning
from gr.train import checkpoints
from gr.train import data as data_lib
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib


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
  sharded: state_lib.Sharded,
  manager,
  *,
  seed: int,
  init_params,
  init_checkpoint,
) -> state_lib.TrainState:
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
  return state_lib.fresh_state(sharded, seed=seed, init_params=init_params)


def _evaluate(sharded: state_lib.Sharded, params, eval_batches: list) -> dict:
  """Mean metrics over the (fixed) eval batches."""
  return _mean_metrics([sharded.eval(params, batch) for batch in eval_batches])


def _sharded_model(
  model: state_lib.TrainableModel,
  mixture_or_task_name,
  optimizer: optimizer_lib.OptimizerConfig,
  mesh,
  *,
  train_steps: int,
  fit_vocab_to_task: bool,
  **lengths,
) -> state_lib.Sharded:
  """The model (its vocabulary fitted to the task's unless told not to) and
  its optimizer, sharded and jitted on `mesh`."""
  if fit_vocab_to_task:
    vocab_size = data_lib.task_vocab_size(mixture_or_task_name)
    model = models.fit_vocab(model, vocab_size)
  return state_lib.shard_model(
    model,
    optimizer_lib.model_optimizer(model, optimizer, train_steps),
    mesh,
    sam_rho=optimizer.sam_rho,
    **lengths,
  )


def _train_data(
  mixture_or_task_name,
  model_dir: str | None,
  start: int,
  mesh,
  *,
  batch_transform: Callable[[dict], dict] | None,
  eval_steps: int,
  **shapes,
) -> tuple[Iterator, Iterator, list | None]:
  """(train data from step `start`, its batches after `batch_transform`,
  the fixed eval batches or None).

  `model_dir` holds the saved data positions (None: resume by skipping);
  eval_steps 0 or a task without a 'validation' split: no eval batches.
  """
  data = data_lib.resumed_batches(
    mixture_or_task_name, model_dir, start, **shapes
  )
  batches = data if batch_transform is None else map(batch_transform, data)
  eval_batches = None
  if eval_steps and data_lib.has_split(mixture_or_task_name, 'validation'):
    eval_batches = data_lib.validation_batches(
      mixture_or_task_name,
      eval_steps,
      mesh,
      batch_transform=batch_transform,
      **shapes,
    )
  return data, batches, eval_batches


def train(
  *,
  model: state_lib.TrainableModel,
  mixture_or_task_name,
  train_steps: int,
  batch_size: int,
  model_dir: str,
  input_length: int,
  target_length: int,
  optimizer: optimizer_lib.OptimizerConfig = optimizer_lib.OptimizerConfig(),
  eval_every: int = 0,
  eval_steps: int = 10,
  checkpoint_every: int = 1000,
  keep_checkpoints: int = 3,
  seed: int = 0,
  mesh_data: int = -1,
  mesh_model: int = 1,
  log_every: int = 100,
  init_params: state_lib.PyTree | None = None,
  init_checkpoint: str | None = None,
  artifact_dir: str | None = None,
  fit_vocab_to_task: bool = True,
  batch_transform: Callable[[dict], dict] | None = None,
  checkpoint_data: bool | None = None,
  checkpoint_start: bool = False,
) -> state_lib.TrainState:
  """Trains `model` on a seqio task/mixture; resumes from `model_dir`.

  Args:
    model: see TrainableModel (gr/train/state.py); vocab_size is set from
      the task's vocabulary (see models.fit_vocab) unless `fit_vocab_to_task`
      is False.
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
      batches again (`DataIterator`, gr/train/data.py); a step without one
      resumes by skip. None (the default): on when the task streams from
      files (`data_lib.streams_from_files`: its position is small), off for
      in-memory tasks (whose position holds a shuffle buffer of the whole
      split; they resume by skip, with the same batches).
    checkpoint_start: also save the starting state as step 0 (a fresh
      run only), so that early stopping can choose and serve the start.

  Returns:
    The final TrainState.
  """
  if checkpoint_data is None:
    checkpoint_data = data_lib.streams_from_files(mixture_or_task_name)
  mesh = partitioning.make_mesh(data=mesh_data, model=mesh_model)
  sharded = _sharded_model(
    model,
    mixture_or_task_name,
    optimizer,
    mesh,
    train_steps=train_steps,
    fit_vocab_to_task=fit_vocab_to_task,
    input_length=input_length,
    target_length=target_length,
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
  if checkpoint_start and start == 0:
    checkpoints.save(manager, 0, state, artifact_dir, force=True)
  data, batches, eval_batches = _train_data(
    mixture_or_task_name,
    model_dir if checkpoint_data else None,
    start,
    mesh,
    batch_transform=batch_transform,
    eval_steps=eval_steps if eval_every else 0,
    input_length=input_length,
    target_length=target_length,
    batch_size=batch_size,
    seed=seed,
  )
  state = run_loop(
    sharded,
    state,
    batches,
    partitioning.replicated_key(seed, mesh),
    manager=manager,
    start=start,
    train_steps=train_steps,
    log_every=log_every,
    checkpoint_every=checkpoint_every,
    writer=SummaryWriter(model_dir) if jax.process_index() == 0 else None,
    eval_every=eval_every,
    eval_batches=eval_batches,
    artifact_dir=artifact_dir,
    before_checkpoint=(
      functools.partial(data_lib.save_data_state, data, manager)
      if checkpoint_data
      else None
    ),
  )
  manager.wait_until_finished()
  manager.close()
  return state


def run_loop(
  sharded: state_lib.Sharded,
  state: state_lib.TrainState,
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
) -> state_lib.TrainState:
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
