"""Training inside a continual update: in memory, on the configured mesh.

`train_params` runs gr/train's step loop (`run_loop`, no checkpoints of its
own: the update is committed as a whole by its caller) on a fresh
optimizer; the jitted init/step is shared by updates of the same shapes.
A frozen pretrained encoder's states come from the family's process-wide
cache (gr/model/family.py).
"""

import dataclasses
import functools
from typing import Any, Optional, Sequence

from gr import partitioning
from gr.continual.strategies import TrainSettings
from gr.model import family as family_lib
from gr.model import models
from gr.model import pretrained
from gr.train import data as data_lib
from gr.train import loop as train_lib
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib
from gr.train import tasks

PyTree = Any


@functools.lru_cache(maxsize=16)
def _sharded(
  config,
  optimizer: optimizer_lib.OptimizerConfig,
  steps: int,
  input_length: int,
  target_length: int,
  mesh_shape: tuple[int, int],
) -> state_lib.Sharded:
  """Jitted init/step for one shape, optimizer and ('data', 'model') mesh
  shape, shared by updates (so successive updates of the same shapes do not
  recompile)."""
  model = models.EncoderDecoderModel(config)
  mesh_data, mesh_model = mesh_shape
  return state_lib.shard_model(
    model,
    optimizer_lib.model_optimizer(model, optimizer, steps),
    partitioning.make_mesh(data=mesh_data, model=mesh_model),
    input_length=input_length,
    target_length=target_length,
    sam_rho=optimizer.sam_rho,
  )


def _cached_transform(
  model,
  params: PyTree,
  mixtures: Sequence[str],
  *,
  input_length: int,
  target_length: int,
):
  """Batch transform adding frozen-encoder states (None without frozen
  layers): the family's shared cache grown by every input of `mixtures`."""
  if not model.has_frozen_encoder_layers:
    return None
  rows = [
    row
    for mixture in mixtures
    for row in pretrained.mixture_encoder_inputs(
      mixture, input_length=input_length, target_length=target_length
    )
  ]
  states = family_lib.family_of(model).encoder_states(model, params, rows)
  return family_lib.training_transform(model, states)


def _batches(
  mixture: str, batch_size: int, settings: TrainSettings, target_length: int
):
  return data_lib.task_batches(
    mixture,
    split=tasks.TRAIN,
    input_length=settings.input_length,
    target_length=target_length,
    batch_size=batch_size,
    seed=settings.seed,
  )


def train_params(
  model,
  mixture: str,
  *,
  steps: int,
  settings: TrainSettings,
  sam_rho: float,
  init_params: Optional[PyTree],
  target_length: int,
  replay_mixture: Optional[str] = None,
  replay_per_batch: int = 0,
) -> PyTree:
  """`steps` updates on `mixture` in memory; returns the final params.

  With `replay_mixture` and `replay_per_batch` = k, every batch holds
  batch_size - k examples of `mixture` and k of `replay_mixture`.
  A short run with no checkpoints, resume or TensorBoard (the update is
  committed as a whole by the caller); the optimizer starts fresh. A
  frozen pretrained encoder's states come from the shared cache.
  """
  optimizer = dataclasses.replace(settings.optimizer, sam_rho=sam_rho)
  # A constant schedule does not depend on the length of the run.
  horizon = 1 if optimizer.schedule == "constant" else steps
  sharded = _sharded(
    model.config,
    optimizer,
    horizon,
    settings.input_length,
    target_length,
    (settings.mesh_data, settings.mesh_model),
  )
  state = state_lib.fresh_state(
    sharded, seed=settings.seed, init_params=init_params
  )
  mixtures = [mixture] + ([replay_mixture] if replay_per_batch else [])
  transform = _cached_transform(
    model,
    state.params,
    mixtures,
    input_length=settings.input_length,
    target_length=target_length,
  )
  if replay_per_batch:
    if not 0 < replay_per_batch < settings.batch_size:
      raise ValueError(
        f"replay_per_batch {replay_per_batch} must be in "
        f"(0, batch_size = {settings.batch_size})"
      )
    batches = data_lib.concatenated_batches(
      _batches(
        mixture, settings.batch_size - replay_per_batch, settings, target_length
      ),
      _batches(replay_mixture, replay_per_batch, settings, target_length),
    )
  else:
    batches = _batches(mixture, settings.batch_size, settings, target_length)
  if transform is not None:
    batches = map(transform, batches)
  state = train_lib.run_loop(
    sharded,
    state,
    batches,
    partitioning.replicated_key(settings.seed, sharded.mesh),
    start=0,
    train_steps=steps,
    log_every=settings.log_every,
  )
  return state.params
