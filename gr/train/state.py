"""The train state and the sharded, jitted functions that change it.

`TrainState` is everything a step changes (step, params, optimizer state).
`shard_model` works out its shardings on a ('data', 'model') mesh (the big
parameters split along 'model' by gr/partitioning.py's logical rules, the
optimizer state following its parameter, the batch split along 'data') and
jits init, the train step (optionally with optax's SAM, `sam`) and the eval
step; `fresh_state`
starts step 0 from a seed or given params.

The model comes in as an object (gr.model.models.EncoderDecoderModel) with
`init_params(rng, *, input_length, target_length)`, `logical_axes()`,
`loss_fn(params, batch, dropout_rng) -> (loss, metrics)`, `with_vocab_size`
and `trainable_mask` (`TrainableModel`).
"""

from collections.abc import Callable, Mapping
import dataclasses
import functools
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gr import partitioning

PyTree = Any
Batch = Mapping[str, jax.Array]


class TrainableModel(Protocol):
  """What train() needs from a model (gr.model.models.EncoderDecoderModel).

  `with_vocab_size` fits the model to its task's vocabulary (models.fit_vocab);
  `trainable_mask` says which parameters the optimizer updates
  (optimizer.model_optimizer).
  """

  def init_params(
    self, rng: jax.Array, *, input_length: int, target_length: int
  ) -> PyTree: ...

  def loss_fn(
    self, params: PyTree, batch: Batch, dropout_rng: jax.Array | None
  ) -> tuple[jax.Array, dict]: ...

  def logical_axes(self) -> PyTree:
    """PartitionSpec of logical axis names for every param."""
    ...

  def with_vocab_size(self, vocab_size: int) -> 'TrainableModel':
    """The same model with `vocab_size` output rows."""
    ...

  def trainable_mask(self, params: PyTree) -> PyTree:
    """Bool tree like params: False where a parameter is frozen."""
    ...


@flax.struct.dataclass
class TrainState:
  """Everything a train step changes. step: [] int32."""

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState


def sam(
  optimizer: optax.GradientTransformation, rho: float
) -> optax.GradientTransformation:
  """`optimizer` with sharpness-aware minimisation of radius `rho`.

  optax.contrib.sam in its one-ascent-step form (opaque mode, sync period 2):
  each update steps to params + rho * g / (||g|| + 1e-12), where g is the
  gradient given to `update`, asks `update`'s grad_fn for the gradient there
  and applies `optimizer` to it at the original params. One call per train
  step, so step counts, schedules and checkpoints are those of `optimizer`;
  the optimizer state is a SAMState around `optimizer`'s. The adversary is
  optax's normalised SGD with an epsilon (optax.contrib.normalize divides by
  ||g|| alone: a zero gradient, e.g. a batch without loss weights, would
  make the params NaN). rho = 0 returns `optimizer` itself.
  """
  if not rho:
    return optimizer

  def descend(grads, state, params=None):
    del params
    scale = -rho / (optax.global_norm(grads) + 1e-12)  # sam negates it
    return jax.tree.map(lambda g: scale * g, grads), state

  ascent = optax.GradientTransformation(lambda _: optax.EmptyState(), descend)
  return optax.contrib.sam(optimizer, ascent, sync_period=2, opaque_mode=True)


def train_step_fn(
  model: TrainableModel, optimizer: optax.GradientTransformation
):
  """The (unjitted) step: (state, batch, rng) -> (state, metrics).

  The dropout rng is fold_in(rng, state.step), so it depends only on the
  seed and the step. Batch arrays are [batch, length]; metrics are scalars
  (loss and grad_norm at the state's params). The optimizer's update gets a
  `grad_fn` (the same batch and dropout rng), which a `sam` optimizer calls
  at its ascended params and every other optimizer ignores.
  """
  optimizer = optax.with_extra_args_support(optimizer)

  def step(state: TrainState, batch: Batch, rng: jax.Array):
    dropout_rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return model.loss_fn(params, batch, dropout_rng)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    updates, opt_state = optimizer.update(
      grads,
      state.opt_state,
      state.params,
      grad_fn=lambda params, _: jax.grad(lambda p: loss_fn(p)[0])(params),
    )
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
  sam_rho > 0 wraps `optimizer` in `sam` (its state then a SAMState).
  """
  optimizer = sam(optimizer, sam_rho)
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
    train_step_fn(model, optimizer),
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
