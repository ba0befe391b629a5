"""Tests for gr/train/loop.py and scripts/train.py: the loop, resume, optimizer.

One reference run (in this process, through the same gin files as the CLI)
is shared by the loop test and the CLI crash test, which SIGKILLs a run
after its first checkpoint, runs the same command again and checks that it
resumes and ends with the reference's params.
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P
import tensorflow as tf

from gr.train import checkpoints
from gr.model import models
from gr.model import network
from gr import partitioning
from gr.train import loop as train
from gr.train import data as data_lib
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib
from gr.experiments import configurables
from tests.support import toy_tasks

REPO = pathlib.Path(__file__).resolve().parents[2]
TRAIN_STEPS = 100
# A smaller-than-tiny T5 so that compiling the step is quick.
TOY_GIN = f"""
import tests.support.toy_tasks
MIXTURE_OR_TASK_NAME = '{toy_tasks.TOY_TASK}'
TRAIN_STEPS = {TRAIN_STEPS}
INPUT_LENGTH = 10
TARGET_LENGTH = 10
BATCH_SIZE = 16
LEARNING_RATE = 3e-3
network.T5Config.emb_dim = 32
network.T5Config.head_dim = 8
network.T5Config.mlp_dim = 64
network.T5Config.num_encoder_layers = 1
network.T5Config.num_decoder_layers = 1
OptimizerConfig.name = 'adamw'
OptimizerConfig.schedule = 'constant'
OptimizerConfig.warmup_steps = 0
train.log_every = 25
train.checkpoint_every = 25
train.eval_every = 50
train.eval_steps = 2
train.keep_checkpoints = 2
"""


def _gin_args(gin_file: pathlib.Path) -> list[str]:
  return [
    f'--gin_file={REPO}/gin/models/t5_tiny.gin',
    f'--gin_file={REPO}/gin/runs/train.gin',
    f'--gin_file={gin_file}',
  ]


@pytest.fixture(scope='module')
def toy_gin(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp('gin') / 'toy.gin'
  path.write_text(TOY_GIN)
  return path


def _train_with_gin(gin_file: pathlib.Path, model_dir: pathlib.Path):
  """train() configured as the CLI would be, in this process."""
  gin.clear_config()
  files = [arg.split('=', 1)[1] for arg in _gin_args(gin_file)]
  gin.parse_config_files_and_bindings(files, [f"MODEL_DIR='{model_dir}'"])
  try:
    return configurables.train()  # the gin-bound train
  finally:
    gin.clear_config()


@pytest.fixture(scope='module')
def reference_run(tmp_path_factory, toy_gin):
  """An uninterrupted run of the CLI's configuration."""
  model_dir = tmp_path_factory.mktemp('reference')
  return model_dir, _train_with_gin(toy_gin, model_dir)


def _assert_same_params(a, b, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def _scalars(model_dir: pathlib.Path) -> dict[str, dict[int, float]]:
  """TensorBoard scalars written to model_dir: {tag: {step: value}}."""
  out = {}
  for path in model_dir.glob('events.out.tfevents.*'):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        out.setdefault(value.tag, {})[event.step] = float(
          tf.make_ndarray(value.tensor)
        )
  return out


def test_train_loop_and_exact_resume(tmp_path, toy_gin, reference_run):
  """One test (so pytest-xdist runs the reference once) that checks:

  * the loss falls; TensorBoard has train and eval scalars;
  * keep-last-N checkpoints, the last holding the final params;
  * exact resume: restarted from the step-75 checkpoint, train() ends with
    the uninterrupted run's params (data order and dropout depend only on
    seed and step).
  """
  model_dir, state = reference_run
  assert int(state.step) == TRAIN_STEPS
  scalars = _scalars(model_dir)
  train_loss, eval_loss = scalars['train/loss'], scalars['eval/loss']
  assert sorted(train_loss) == [25, 50, 75, 100]
  assert sorted(eval_loss) == [50, 100]
  assert train_loss[100] < train_loss[25] - 0.5
  assert eval_loss[100] < 3.2  # untrained: log(128) = 4.85
  assert 'train/accuracy' in scalars and 'steps_per_sec' in scalars

  assert _step_dirs(model_dir) == [75, 100]
  _assert_same_params(
    checkpoints.restore_params(model_dir), state.params, atol=0
  )

  resumed_dir = tmp_path / 'resumed'
  shutil.copytree(model_dir, resumed_dir)
  shutil.rmtree(resumed_dir / str(TRAIN_STEPS))  # as if killed after 75
  resumed = _train_with_gin(toy_gin, resumed_dir)
  assert int(resumed.step) == TRAIN_STEPS
  _assert_same_params(resumed.params, state.params)
  assert _step_dirs(resumed_dir) == [75, 100]


def _step_dirs(model_dir: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit())


def _wait_for_step_dir(model_dir: pathlib.Path, proc, timeout: float):
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    if any(p.name.isdigit() for p in model_dir.glob('*')):
      return
    time.sleep(0.2)
  raise AssertionError(f'no checkpoint in {model_dir} (rc={proc.poll()})')


@pytest.mark.crash  # two CLI processes: ~1 min of CPU
def test_resume_after_sigkill_matches_uninterrupted(
  tmp_path, toy_gin, reference_run
):
  model_dir = tmp_path / 'model'
  command = [
    sys.executable,
    str(REPO / 'scripts' / 'train.py'),
    *_gin_args(toy_gin),
    f"--gin.MODEL_DIR='{model_dir}'",
  ]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  log = open(tmp_path / 'first.log', 'w')
  first = subprocess.Popen(
    command, env=env, stdout=log, stderr=subprocess.STDOUT
  )
  try:
    _wait_for_step_dir(model_dir, first, timeout=240)
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
  killed_at = max(_step_dirs(model_dir))
  assert killed_at < TRAIN_STEPS
  second = subprocess.run(
    command, env=env, capture_output=True, text=True, timeout=300
  )
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'Resuming from checkpoint step' in second.stderr
  resumed_from = int(
    second.stderr.split('Resuming from checkpoint step ')[1].split()[0]
  )
  assert resumed_from >= killed_at
  assert f'step {TRAIN_STEPS}/{TRAIN_STEPS}' in second.stderr
  assert f'step {resumed_from}/{TRAIN_STEPS}' not in second.stderr
  _assert_same_params(
    checkpoints.restore_params(model_dir), reference_run[1].params
  )


# ------------------------------------------------------------ pieces --


class _TinyModel:
  """A two-layer net with dropout: enough for the train step's SAM path."""

  def init_params(self, rng, *, input_length, target_length):
    del input_length, target_length
    first, second = jax.random.split(rng)
    return {
      'w1': jax.random.normal(first, (5, 8)),
      'w2': jax.random.normal(second, (8, 2)),
    }

  def logical_axes(self):
    return {'w1': P('embed', 'mlp'), 'w2': P('mlp', None)}

  def loss_fn(self, params, batch, rng):
    hidden = jnp.tanh(batch['x'] @ params['w1'])
    keep = jax.random.bernoulli(rng, 0.8, hidden.shape)
    out = (hidden * keep / 0.8) @ params['w2']
    loss = jnp.mean(jnp.square(out - batch['y']))
    return loss, {'mean_out': jnp.mean(out)}


def _hand_sam_step(
  model, optimizer, params, opt_state, batch, dropout_rng, rho
):
  """The oracle: one SAM step written out (Foret et al. 2021, eq. 2).

  g at params; ascend to params + rho * g / ||g||; the gradient there is
  what `optimizer` applies at params. The same dropout rng for both.
  """
  grad = jax.grad(lambda p: model.loss_fn(p, batch, dropout_rng)[0])
  g = grad(params)
  scale = rho / optax.global_norm(g)
  ascended = jax.tree.map(lambda p, gi: p + scale * gi, params, g)
  updates, opt_state = optimizer.update(grad(ascended), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


def test_optax_sam_gives_the_hand_computed_sam_step():
  """state.sam (optax.contrib.sam, opaque, sync period 2) = one SAM step per
  train step: the same params as the hand-written step, twice in a row (so
  the wrapped AdamW state moves as the plain one does), and the reported
  loss is the loss at the step's params."""
  model, rho = _TinyModel(), 0.05
  keys = jax.random.split(jax.random.key(0), 4)
  params = {
    'w1': jax.random.normal(keys[0], (5, 8)),
    'w2': jax.random.normal(keys[1], (8, 2)),
  }
  batch = {
    'x': jax.random.normal(keys[2], (16, 5)),
    'y': jax.random.normal(keys[3], (16, 2)),
  }
  adamw = optimizer_lib.make_optimizer(
    optimizer_lib.OptimizerConfig(learning_rate=0.1, clip_grad_norm=None), 10
  )
  sam = state_lib.sam(adamw, rho)
  step = jax.jit(state_lib.train_step_fn(model, sam))
  state = state_lib.TrainState(
    step=jnp.array(0), params=params, opt_state=sam.init(params)
  )
  expected, expected_opt = params, adamw.init(params)
  for i in range(2):
    rng = jax.random.key(7 + i)
    dropout_rng = jax.random.fold_in(rng, i)  # the step folds in its number
    loss_at_start = model.loss_fn(state.params, batch, dropout_rng)[0]
    state, metrics = step(state, batch, rng)
    expected, expected_opt = _hand_sam_step(
      model, adamw, expected, expected_opt, batch, dropout_rng, rho
    )
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
      state.params,
      expected,
    )
    assert float(metrics['loss']) == pytest.approx(float(loss_at_start))
  plain_step = jax.jit(state_lib.train_step_fn(model, adamw))
  plain, _ = plain_step(
    state_lib.TrainState(
      step=jnp.array(0), params=params, opt_state=adamw.init(params)
    ),
    batch,
    jax.random.key(7),
  )
  assert not np.allclose(plain.params['w1'], state.params['w1'])
  assert state_lib.sam(adamw, 0.0) is adamw


class _NoLossWeights(_TinyModel):
  """A batch without loss weights: loss 0, gradient exactly 0."""

  def loss_fn(self, params, batch, rng):
    return 0.0 * super().loss_fn(params, batch, rng)[0], {}


def test_sam_step_with_a_zero_gradient_leaves_params():
  """The ascent divides by ||g|| + 1e-12, as the hand step did:
  optax.contrib.normalize (||g|| alone) would make every param NaN."""
  model = _NoLossWeights()
  params = model.init_params(jax.random.key(0), input_length=1, target_length=1)
  batch = {'x': jnp.ones((4, 5)), 'y': jnp.ones((4, 2))}
  sam = state_lib.sam(optax.adam(0.1), 0.05)
  state = state_lib.TrainState(
    step=jnp.array(0), params=params, opt_state=sam.init(params)
  )
  state, _ = state_lib.train_step_fn(model, sam)(
    state, batch, jax.random.key(1)
  )
  jax.tree.map(np.testing.assert_array_equal, state.params, params)


def test_sharded_sam_step_is_the_hand_computed_step():
  """shard_model(sam_rho=) on a ('data', 'model') mesh: the SAMState is
  sharded like Adam's state and the jitted step is the hand SAM step."""
  model, rho = _TinyModel(), 0.05
  adamw = optimizer_lib.make_optimizer(
    optimizer_lib.OptimizerConfig(learning_rate=0.1, clip_grad_norm=None), 10
  )
  mesh = partitioning.make_mesh(model=2)
  sharded = state_lib.shard_model(
    model, adamw, mesh, input_length=1, target_length=1, sam_rho=rho
  )
  rng = partitioning.replicated_key(0, mesh)
  state = sharded.init(rng)
  params = jax.device_get(state.params)
  keys = jax.random.split(jax.random.key(1))
  batch = {
    'x': jax.random.normal(keys[0], (16, 5)),
    'y': jax.random.normal(keys[1], (16, 2)),
  }
  new_state, _ = sharded.step(
    state, partitioning.global_batch(batch, mesh), rng
  )
  expected, _ = _hand_sam_step(
    model,
    adamw,
    params,
    adamw.init(params),
    batch,
    jax.random.fold_in(jax.random.key(0), 0),
    rho,
  )
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
    jax.device_get(new_state.params),
    expected,
  )


def test_sam_step_on_a_quadratic():
  """loss = |w - t|^2 / 2, SGD at rate 1: the SAM update is
  -g * (1 + rho / |g|) with g = w - t."""
  target = jnp.array([1.0, -2.0, 0.5])

  class Quadratic:
    def loss_fn(self, params, batch, rng):
      del batch, rng
      return 0.5 * jnp.sum(jnp.square(params['w'] - target)), {}

  params = {'w': jnp.array([3.0, 0.0, 0.5])}
  sam = state_lib.sam(optax.sgd(1.0), 0.3)
  state = state_lib.TrainState(
    step=jnp.array(0), params=params, opt_state=sam.init(params)
  )
  state, _ = state_lib.train_step_fn(Quadratic(), sam)(
    state, {}, jax.random.key(0)
  )
  g = params['w'] - target
  np.testing.assert_allclose(
    state.params['w'],
    params['w'] - g * (1 + 0.3 / np.linalg.norm(g)),
    rtol=1e-6,
  )


@pytest.mark.parametrize(
  'schedule,step,expected',
  [
    ('constant', 0, 0.0),
    ('constant', 5, 0.5),
    ('constant', 50, 1.0),
    ('rsqrt', 10, 1.0),
    ('rsqrt', 40, 0.5),
    ('cosine', 10, 1.0),
    ('cosine', 55, 0.55),
    ('cosine', 100, 0.1),
  ],
)
def test_learning_rate_schedules(schedule, step, expected):
  config = optimizer_lib.OptimizerConfig(
    learning_rate=1.0, schedule=schedule, warmup_steps=10, final_lr_fraction=0.1
  )
  rate = optimizer_lib.learning_rate_schedule(config, total_steps=100)
  assert float(rate(step)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize('name', ['adamw', 'adafactor', 'sgd'])
def test_optimizers_reduce_a_quadratic_and_clip(name):
  config = optimizer_lib.OptimizerConfig(
    name=name, learning_rate=0.1, clip_grad_norm=1.0, weight_decay=1e-4
  )
  optimizer = optimizer_lib.make_optimizer(config, total_steps=100)
  params = {'w': jnp.full((4, 3), 5.0)}
  state = optimizer.init(params)
  for _ in range(20):
    grads = {'w': 100.0 * params['w']}  # huge: clipping keeps steps small
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert 0.0 < float(jnp.abs(params['w']).max()) < 5.0


def test_bad_optimizer_settings_are_named():
  with pytest.raises(ValueError, match='OptimizerConfig.name'):
    optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(name='lion'), 10)
  with pytest.raises(ValueError, match='OptimizerConfig.schedule'):
    optimizer_lib.make_optimizer(
      optimizer_lib.OptimizerConfig(schedule='step'), 10
    )


def test_fit_vocab_pads_to_multiple_of_128():
  model = models.EncoderDecoderModel(network.T5Config.tiny(32128))
  assert models.fit_vocab(model, 32).config.vocab_size == 128
  assert models.fit_vocab(model, 130).config.vocab_size == 256
  fitted = models.fit_vocab(model, 32128)
  assert fitted is model


def test_train_step_is_deterministic_in_seed_and_step():
  """Same (state, batch, rng) -> same result; the rng is folded with step."""
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(
      128,
      emb_dim=16,
      head_dim=4,
      mlp_dim=16,
      num_encoder_layers=1,
      num_decoder_layers=1,
    )
  )
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(), 10)
  step = jax.jit(state_lib.train_step_fn(model, optimizer))
  params = model.init_params(jax.random.key(0), input_length=6, target_length=6)
  state = state_lib.TrainState(
    step=jnp.array(0), params=params, opt_state=optimizer.init(params)
  )
  tokens = jnp.array([[5, 6, 7, 1, 0, 0]] * 2)
  batch = {
    'encoder_input_tokens': tokens,
    'decoder_target_tokens': tokens,
    'decoder_input_tokens': models.shift_targets_right(tokens),
    'decoder_loss_weights': (tokens > 0).astype(jnp.int32),
  }
  rng = jax.random.key(1)
  _, first = step(state, batch, rng)
  _, again = step(state, batch, rng)
  _, later = step(state.replace(step=jnp.array(7)), batch, rng)
  assert float(first['loss']) == float(again['loss'])
  assert float(first['loss']) != float(later['loss'])  # other dropout mask


# ------------------------------------------------ resume without re-reading --

_READS = tf.Variable(0, dtype=tf.int64)  # examples the counting task has read
COUNTING_TASK = 'gr_test_reverse_counting'


def _counting_dataset_fn(split, shuffle_files, seed=None):
  def count(example):
    _READS.assign_add(1)
    return example

  ds = toy_tasks._dataset_fn(split, shuffle_files, seed)
  return ds.shuffle(64, seed=seed).map(count)


@pytest.fixture(scope='module')
def counting_task():
  import seqio

  vocab = seqio.PassThroughVocabulary(size=toy_tasks.TOY_VOCAB_SIZE, eos_id=1)
  if COUNTING_TASK in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(COUNTING_TASK)
  seqio.TaskRegistry.add(
    COUNTING_TASK,
    source=seqio.FunctionDataSource(_counting_dataset_fn, splits=('train',)),
    preprocessors=[seqio.preprocessors.append_eos_after_trim],
    output_features={
      k: seqio.Feature(vocab, add_eos=True, dtype=tf.int32)
      for k in ('inputs', 'targets')
    },
  )
  return COUNTING_TASK


DATA = dict(split='train', input_length=10, target_length=10, seed=3)


def test_restored_data_position_gives_the_same_batches_without_rereading(
  counting_task, tmp_path
):
  """Uninterrupted batches 0..5 against: 3 batches, save, a fresh
  iterator restored there, 3 more; the restored one reads (almost) nothing
  where the skip path reads every consumed example again."""
  dataset = lambda: data_lib.task_dataset(counting_task, batch_size=8, **DATA)
  uninterrupted = data_lib.DataIterator(dataset())
  reference = [next(uninterrupted) for _ in range(6)]
  first = data_lib.DataIterator(dataset())
  for _ in range(3):
    next(first)
  first.save(str(tmp_path / 'position'))

  restored = data_lib.DataIterator(dataset())
  _READS.assign(0)
  restored.restore(str(tmp_path / 'position'))
  resumed = [next(restored) for _ in range(3)]
  reads_restored = int(_READS.numpy())
  for want, got in zip(reference[3:], resumed, strict=True):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])

  _READS.assign(0)
  skipped = data_lib.task_batches(
    counting_task, batch_size=8, skip_batches=3, **DATA
  )
  for want in reference[3:]:
    np.testing.assert_array_equal(
      want['encoder_input_tokens'], next(skipped)['encoder_input_tokens']
    )
  reads_skipped = int(_READS.numpy())
  assert reads_skipped >= 6 * 8  # the consumed batches, read again
  assert reads_restored < reads_skipped - 3 * 8


def test_train_resumes_from_the_saved_data_position(counting_task, tmp_path):
  """checkpoint_data: a run resumed from step 3's checkpoint restores the
  data position saved with it and ends with the uninterrupted params."""
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(
      toy_tasks.TOY_VOCAB_SIZE,
      num_encoder_layers=1,
      num_decoder_layers=1,
      emb_dim=32,
      head_dim=8,
      mlp_dim=64,
    )
  )
  run = lambda model_dir: train.train(
    model=model,
    mixture_or_task_name=counting_task,
    train_steps=6,
    batch_size=8,
    model_dir=str(model_dir),
    input_length=10,
    target_length=10,
    checkpoint_every=3,
    log_every=3,
    seed=3,
    fit_vocab_to_task=False,
    checkpoint_data=True,
  )
  reference = run(tmp_path / 'reference')
  positions = tmp_path / 'reference' / data_lib.DATA_STATE_DIR
  assert sorted(os.listdir(positions)) == ['3', '6']
  resumed_dir = tmp_path / 'resumed'
  shutil.copytree(tmp_path / 'reference', resumed_dir)
  shutil.rmtree(resumed_dir / '6')  # as if killed after step 3
  shutil.rmtree(resumed_dir / data_lib.DATA_STATE_DIR / '6')
  resumed = run(resumed_dir)
  assert int(resumed.step) == 6
  _assert_same_params(resumed.params, reference.params)
