"""Tests for gr/train/checkpoints.py: orbax state round trips and index artifacts."""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr.train import checkpoints
from gr import partitioning
from gr.train import state as state_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _state(seed: int = 0) -> state_lib.TrainState:
  rng = np.random.default_rng(seed)
  params = {
    'embed': {'embedding': jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)},
    'mlp': {'kernel': jnp.asarray(rng.normal(size=(8, 32)), jnp.float32)},
  }
  opt_state = optax.adamw(1e-3).init(params)
  return state_lib.TrainState(
    step=jnp.asarray(seed, jnp.int32), params=params, opt_state=opt_state
  )


def _sharded(state, mesh):
  spec = {
    'embed': {'embedding': jax.sharding.PartitionSpec('model', None)},
    'mlp': {'kernel': jax.sharding.PartitionSpec(None, 'model')},
  }
  shardings = jax.tree.map(lambda s: jax.sharding.NamedSharding(mesh, s), spec)
  return state.replace(params=jax.device_put(state.params, shardings))


def _assert_trees_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _artifact(tmp_path) -> pathlib.Path:
  source = tmp_path / 'artifact'
  (source / 'vocab').mkdir(parents=True)
  (source / 'docids.tsv').write_text('d1\t<a_1>\nd2\t<a_2>\n')
  (source / 'vocab' / 'sp.model').write_bytes(bytes(range(256)))
  return source


def test_state_round_trip_keeps_structure_and_sharding(tmp_path):
  mesh = partitioning.make_mesh(data=2, model=4)
  state = _sharded(_state(3), mesh)
  checkpoints.save(tmp_path / 'ckpt', 3, state)
  step, restored = checkpoints.restore_latest(tmp_path / 'ckpt', state)
  assert step == 3
  assert isinstance(restored, state_lib.TrainState)
  _assert_trees_equal(restored, state)
  kernel = restored.params['mlp']['kernel']
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, 'model')
  assert kernel.addressable_shards[0].data.shape == (8, 8)


def test_restore_params_on_one_device_and_other_mesh(tmp_path):
  state = _sharded(_state(1), partitioning.make_mesh(data=2, model=4))
  checkpoints.save(tmp_path, 1, state)
  params = checkpoints.restore_params(tmp_path)
  _assert_trees_equal(params, state.params)
  assert len(params['mlp']['kernel'].devices()) == 1
  other = partitioning.make_mesh(data=4, model=2)
  shardings = jax.tree.map(
    lambda _: partitioning.replicated(other), state.params
  )
  params = checkpoints.restore_params(tmp_path, 1, shardings=shardings)
  assert len(params['mlp']['kernel'].devices()) == 8
  _assert_trees_equal(params, state.params)


def test_restore_latest_of_empty_dir_is_none(tmp_path):
  assert checkpoints.restore_latest(tmp_path, _state()) is None
  with pytest.raises(FileNotFoundError, match='no checkpoint step'):
    checkpoints.restore_params(tmp_path)


def test_manager_keeps_last_n(tmp_path):
  manager = checkpoints.make_manager(tmp_path, keep=2)
  for step in range(1, 5):
    checkpoints.save(manager, step, _state(step))
  manager.wait_until_finished()
  assert manager.all_steps() == [3, 4]
  manager.close()
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == [
    '3',
    '4',
  ]


def test_artifact_saved_and_verified_with_step(tmp_path):
  source = _artifact(tmp_path)
  checkpoints.save(tmp_path / 'ckpt', 7, _state(), source)
  loaded = checkpoints.load_artifact(tmp_path / 'ckpt')
  assert loaded != source
  assert (loaded / 'docids.tsv').read_text() == (
    source / 'docids.tsv'
  ).read_text()
  assert (loaded / 'vocab' / 'sp.model').read_bytes() == bytes(range(256))
  manifest = checkpoints.verify_artifact(loaded.parent)
  assert set(manifest['files']) == {'docids.tsv', 'vocab/sp.model'}
  # An artifact loaded from a checkpoint can be saved with a later step.
  checkpoints.save(tmp_path / 'ckpt', 8, _state(), loaded)
  assert (
    checkpoints.load_artifact(tmp_path / 'ckpt', 8) / 'docids.tsv'
  ).is_file()


def _saved_artifact(tmp_path) -> pathlib.Path:
  checkpoints.save(tmp_path / 'ckpt', 1, _state(), _artifact(tmp_path))
  return tmp_path / 'ckpt' / '1' / checkpoints.ARTIFACT_ITEM / 'files'


def test_changed_artifact_file_is_named(tmp_path):
  files = _saved_artifact(tmp_path)
  (files / 'docids.tsv').write_text('d1\t<a_2>\nd2\t<a_1>\n')
  with pytest.raises(checkpoints.ArtifactError, match='docids.tsv.*sha256'):
    checkpoints.load_artifact(tmp_path / 'ckpt')


def test_missing_and_extra_artifact_files_are_named(tmp_path):
  files = _saved_artifact(tmp_path)
  (files / 'vocab' / 'sp.model').unlink()
  with pytest.raises(checkpoints.ArtifactError, match='sp.model.*missing'):
    checkpoints.load_artifact(tmp_path / 'ckpt')
  files = _saved_artifact(tmp_path / 'again')
  (files / 'stray.txt').write_text('x')
  with pytest.raises(checkpoints.ArtifactError, match='stray.txt'):
    checkpoints.load_artifact(tmp_path / 'again' / 'ckpt')


def test_step_without_artifact_and_bad_source_are_errors(tmp_path):
  checkpoints.save(tmp_path, 2, _state())
  with pytest.raises(checkpoints.ArtifactError, match='no index_artifact'):
    checkpoints.load_artifact(tmp_path)
  with pytest.raises(Exception, match='does not exist'):
    checkpoints.save(tmp_path, 3, _state(), tmp_path / 'nowhere')
  assert checkpoints.restore_latest(tmp_path, _state())[0] == 2


def test_partial_save_leaves_previous_step_loadable(tmp_path):
  """What a kill mid-save leaves behind: an unfinalised tmp step dir."""
  checkpoints.save(tmp_path, 1, _state(1))
  partial = tmp_path / '2.orbax-checkpoint-tmp-1234567'
  (partial / 'state').mkdir(parents=True)
  (partial / 'state' / 'manifest.ocdbt').write_bytes(b'\0' * 10)
  step, restored = checkpoints.restore_latest(tmp_path, _state())
  assert step == 1
  _assert_trees_equal(restored, _state(1))
  manager = checkpoints.make_manager(tmp_path)
  checkpoints.save(manager, 2, _state(2))
  manager.wait_until_finished()
  assert manager.all_steps() == [1, 2]
  _assert_trees_equal(
    checkpoints.restore_latest(manager, _state())[1], _state(2)
  )


_SAVER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from gr.train import checkpoints
    manager = checkpoints.make_manager(sys.argv[1], keep=None)
    for step in range(1, 1000):
      state = {'w': jnp.full((2048, 2048), float(step)), 'step': step}
      checkpoints.save(manager, step, state)
      print(step, flush=True)
""")


def test_sigkill_during_saves_leaves_latest_step_loadable(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  proc = subprocess.Popen(
    [sys.executable, '-c', _SAVER, str(tmp_path)],
    stdout=subprocess.PIPE,
    env=env,
    text=True,
  )
  try:
    for line in proc.stdout:
      if int(line) >= 3:
        break
    time.sleep(0.05)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
  target = {'w': jnp.zeros((2048, 2048)), 'step': 0}
  step, restored = checkpoints.restore_latest(tmp_path, target)
  assert step >= 2
  assert restored['step'] == step
  np.testing.assert_array_equal(
    np.asarray(restored['w'][:2, :2]), np.full((2, 2), float(step))
  )
