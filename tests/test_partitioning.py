"""Tests for gr/partitioning.py: mesh, rules, and a really sharded step.

Runs on the 8 fake CPU devices of tests/conftest.py.
"""

import jax
from jax.sharding import AxisType, PartitionSpec as P
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gr.model import models
from gr.model import network
from gr import partitioning
from gr.train import optimizer as optimizer_lib
from gr.train import state as state_lib

LENGTH = 8


def test_make_mesh_shapes_and_auto_axes():
  mesh = partitioning.make_mesh(model=4)
  assert dict(mesh.shape) == {'data': 2, 'model': 4}
  assert mesh.axis_types == (AxisType.Auto, AxisType.Auto)
  assert dict(partitioning.make_mesh().shape) == {'data': 8, 'model': 1}
  one = partitioning.make_mesh(devices=jax.devices()[:1])
  assert dict(one.shape) == {'data': 1, 'model': 1}
  with pytest.raises(ValueError, match='does not divide'):
    partitioning.make_mesh(model=3)
  with pytest.raises(ValueError, match='data=2 x model=2'):
    partitioning.make_mesh(data=2, model=2)


def test_logical_rules_map_names_to_mesh_axes():
  spec = partitioning.logical_to_mesh_spec
  assert spec(('vocab', 'embed')) == P('model', None)
  assert spec(('embed', 'mlp')) == P(None, 'model')
  assert spec(('embed', 'heads', 'kv')) == P(None, 'model', None)
  assert spec(('batch', 'length', 'embed')) == P('data', None, None)
  # A mesh axis is used once per array, by the earliest rule: 'mlp' comes
  # before 'heads' in LOGICAL_AXIS_RULES.
  assert spec(('heads', 'mlp')) == P(None, 'model')
  assert spec(('unknown_name',)) == P(None)
  names = {name for name, _ in partitioning.LOGICAL_AXIS_RULES}
  assert set(network.PARAM_AXIS_NAMES) <= names
  assert set(network.ACTIVATION_AXIS_NAMES) <= names


def test_optimizer_state_follows_param_shardings():
  mesh = partitioning.make_mesh(model=4)
  params = {'dense': {'kernel': jnp.zeros((8, 16)), 'scale': jnp.zeros(8)}}
  shardings = {
    'dense': {
      'kernel': jax.sharding.NamedSharding(mesh, P(None, 'model')),
      'scale': partitioning.replicated(mesh),
    }
  }
  for optimizer in (
    optax.adamw(1e-3),
    optax.adafactor(1e-3),
    state_lib.sam(optax.adamw(1e-3), 0.05),  # Adam's moments in a SAMState
  ):
    state = jax.eval_shape(optimizer.init, params)
    out = partitioning.shardings_like_params(state, params, shardings, mesh)
    for path, leaf in jax.tree_util.tree_flatten_with_path(
      out, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding)
    )[0]:
      keys = jax.tree_util.keystr(path)
      shape = _leaf_at(state, path).shape
      if 'kernel' in keys and shape == (8, 16):
        assert leaf.spec == P(None, 'model'), keys
      else:
        assert leaf.spec == P(), keys


def _leaf_at(tree, path):
  for key in path:
    if isinstance(key, jax.tree_util.DictKey):
      tree = tree[key.key]
    elif isinstance(key, jax.tree_util.SequenceKey):
      tree = tree[key.idx]
    else:
      tree = getattr(tree, key.name)
  return tree


def test_global_batch_splits_over_data():
  mesh = partitioning.make_mesh(data=4, model=2)
  local = {'tokens': np.arange(8 * 3, dtype=np.int32).reshape(8, 3)}
  out = partitioning.global_batch(local, mesh)['tokens']
  assert out.shape == (8, 3)
  assert out.sharding.spec == P('data')
  assert {s.data.shape for s in out.addressable_shards} == {(2, 3)}
  np.testing.assert_array_equal(np.asarray(out), local['tokens'])
  assert partitioning.per_host_batch_size(16) == 16
  assert partitioning.host_shard_info().num_shards == 1


# ----------------------------------------- sharded vs single-device step --


@pytest.fixture(scope='module')
def model():
  return models.EncoderDecoderModel(
    network.T5Config.tiny(
      128,
      emb_dim=32,
      head_dim=8,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
    )
  )


def _batches(n: int) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    tokens = rng.integers(3, 128, size=(8, LENGTH)).astype(np.int32)
    tokens[:, -2:] = 0
    tokens[:, -3] = 1
    out.append(
      {
        'encoder_input_tokens': tokens,
        'decoder_target_tokens': tokens[:, ::-1].copy(),
        'decoder_loss_weights': (tokens[:, ::-1] > 0).astype(np.int32),
      }
    )
    out[-1]['decoder_input_tokens'] = np.asarray(
      models.shift_targets_right(out[-1]['decoder_target_tokens'])
    )
  return out


def _run_two_steps(model, mesh):
  optimizer = optimizer_lib.make_optimizer(optimizer_lib.OptimizerConfig(), 10)
  sharded = state_lib.shard_model(
    model, optimizer, mesh, input_length=LENGTH, target_length=LENGTH
  )
  rng = partitioning.replicated_key(0, mesh)
  state = sharded.init(rng)
  losses = []
  for batch in _batches(2):
    state, metrics = sharded.step(
      state, partitioning.global_batch(batch, mesh), rng
    )
    losses.append(float(metrics['loss']))
  return state, losses, sharded


def test_sharded_train_step(model):
  """One test (so pytest-xdist compiles the steps once) that checks:

  * a step on a ('data': 2, 'model': 4) mesh equals the single-device step
    (losses and params after 2 steps);
  * the big parameters and their Adam moments really are split on 'model';
  * under jax.transfer_guard('disallow') (as in the train loop) a batch not
    put on the mesh explicitly is an error.
  """
  state, losses, _ = _run_two_steps(
    model, partitioning.make_mesh(data=2, model=4)
  )
  single_state, single_losses, single = _run_two_steps(
    model, partitioning.make_mesh(devices=jax.devices()[:1])
  )
  np.testing.assert_allclose(losses, single_losses, rtol=1e-5)
  assert int(state.step) == 2
  for a, b in zip(
    jax.tree.leaves(state.params),
    jax.tree.leaves(single_state.params),
    strict=True,
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
  _assert_model_sharded(state)
  _assert_guard_catches_host_batch(single)


def _assert_model_sharded(state):
  params = state.params
  embedding = params['token_embedder']['embedding']  # [vocab 128, embed 32]
  assert embedding.sharding.spec == P('model', None)
  assert embedding.addressable_shards[0].data.shape == (32, 32)
  wi = params['encoder']['layers_0']['mlp']['wi_0']['kernel']  # [32, mlp 64]
  assert wi.sharding.spec == P(None, 'model')
  assert wi.addressable_shards[0].data.shape == (32, 16)
  query = params['decoder']['layers_0']['self_attention']['query']['kernel']
  assert query.sharding.spec == P(None, 'model', None)
  mu = state.opt_state[1][0].mu['token_embedder']['embedding']
  assert mu.addressable_shards[0].data.shape == (32, 32)


def _assert_guard_catches_host_batch(sharded):
  mesh = sharded.mesh
  state = sharded.init(partitioning.replicated_key(0, mesh))
  rng = partitioning.replicated_key(0, mesh)
  host_batch = _batches(1)[0]
  with jax.transfer_guard('disallow'):
    with pytest.raises(Exception, match='Disallowed host-to-device'):
      sharded.step(state, host_batch, rng)
    sharded.step(state, partitioning.global_batch(host_batch, mesh), rng)


def test_jit_on_mesh_places_arguments_and_results_by_spec():
  mesh = partitioning.make_mesh(data=4, model=2)
  logical = {'w': P('embed', 'vocab')}
  specs = partitioning.mesh_specs_from_logical(logical)
  assert specs == {'w': P(None, 'model')}
  params = partitioning.place({'w': np.ones((4, 8), np.float32)}, specs, mesh)
  assert params['w'].sharding.spec == P(None, 'model')
  batch = P(partitioning.DATA_AXIS)
  fn = partitioning.jit_on_mesh(
    lambda p, x: x @ p['w'], mesh, (specs, batch), batch
  )
  x = np.arange(32, dtype=np.float32).reshape(8, 4)
  out = fn(params, x)
  assert out.sharding.spec[0] == partitioning.DATA_AXIS
  assert fn._cache_size() == 1  # pylint: disable=protected-access
  np.testing.assert_allclose(out, x @ np.ones((4, 8)))
  plain = partitioning.jit_on_mesh(lambda x: x + 1, None, None, None)
  np.testing.assert_array_equal(plain(x), x + 1)
