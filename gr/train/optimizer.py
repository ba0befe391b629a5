"""How parameters are updated: optax AdamW or Adafactor, schedules, clipping.

`OptimizerConfig` is bound by gin (gr/experiments/configurables.py, under the
name the gin files always used); `model_optimizer` is the optimizer of a
model, its frozen parameters (`trainable_mask`) given zero updates. SAM
(`sam_rho`) wraps this optimizer in optax.contrib.sam where the train state
is sharded (gr/train/state.py `sam`).
"""

from collections.abc import Callable
import dataclasses
import re

import jax
import jax.numpy as jnp
import optax

from gr.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """How parameters are updated.

  Attributes:
    name: 'adamw', 'adafactor' or 'sgd' (plain gradient steps: a row that
      is only a softmax negative moves in proportion to its probability,
      where Adam would move it about the learning rate every step).
    learning_rate: peak learning rate.
    schedule: 'constant', 'rsqrt' (lr * sqrt(warmup / step) after warmup) or
      'cosine' (decays to lr * final_lr_fraction at the last train step).
    warmup_steps: linear warmup from 0 to learning_rate.
    final_lr_fraction: end of the cosine schedule, as a fraction of lr.
    weight_decay: decoupled weight decay (AdamW) / decay rate (Adafactor).
    clip_grad_norm: clip gradients to this global norm; None for no clip.
    b1, b2, eps: AdamW moments.
    sam_rho: sharpness-aware minimisation radius; 0 turns SAM off.
    l2_sp: strength of L2-SP, a pull of every trained parameter toward its
      value at the start of training (lambda * (theta - theta_0) added to
      the gradient; the start is kept in the optimizer state, so a resumed
      run pulls toward the same point); 0 turns it off.
    frozen_params: regular expressions over '/'-joined parameter paths
      (e.g. 'token_embedder/.*', the docid rows): matching parameters get
      no updates, on top of the model's own `trainable_mask`.
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
  l2_sp: float = 0.0
  frozen_params: tuple[str, ...] = ()


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
  """Gradient clipping + AdamW, Adafactor or SGD with the configured
  schedule."""
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
  elif config.name == 'sgd':
    core = optax.sgd(schedule)
  else:
    raise ValueError(
      f"OptimizerConfig.name={config.name!r}: expected 'adamw', 'adafactor' "
      "or 'sgd'"
    )
  if config.l2_sp:
    core = optax.chain(pull_to_start(config.l2_sp), core)
  if config.clip_grad_norm is None:
    return core
  return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), core)


def pull_to_start(strength: float) -> optax.GradientTransformation:
  """L2-SP: adds strength * (params - params at init) to the gradients.

  The state is the starting params (the tree `init` was given), so the
  pull survives checkpoints and is exact under sharding (elementwise).
  """

  def init(params):
    return jax.tree.map(jnp.array, params)

  def update(updates, start, params=None):
    if params is None:
      raise ValueError('pull_to_start needs the params in update()')
    pulled = jax.tree.map(
      lambda g, p, p0: g + strength * (p - p0), updates, params, start
    )
    return pulled, start

  return optax.GradientTransformation(init, update)


def freeze(
  optimizer: optax.GradientTransformation,
  trainable_mask: Callable[[state_lib.PyTree], state_lib.PyTree],
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
  model: state_lib.TrainableModel, config: OptimizerConfig, total_steps: int
) -> optax.GradientTransformation:
  """`make_optimizer`, frozen where the model's `trainable_mask` says so
  (a pretrained encoder's frozen layers get no updates) or a path matches
  `config.frozen_params`."""
  patterns = [re.compile(p) for p in config.frozen_params]

  def trainable_mask(params):
    names = jax.tree_util.tree_map_with_path(
      lambda path, _: '/'.join(str(getattr(k, 'key', k)) for k in path),
      params,
    )
    for pattern in patterns:
      if not any(pattern.fullmatch(n) for n in jax.tree.leaves(names)):
        raise ValueError(
          f'OptimizerConfig.frozen_params: {pattern.pattern!r} matches no '
          f'parameter (paths look like {jax.tree.leaves(names)[0]!r})'
        )
    return jax.tree.map(
      lambda name, model_says: (
        model_says and not any(p.fullmatch(name) for p in patterns)
      ),
      names,
      model.trainable_mask(params),
    )

  return freeze(make_optimizer(config, total_steps), trainable_mask)
