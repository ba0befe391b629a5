"""Device mesh, logical-axis rules and shardings (jax.jit with shardings).

The networks name every parameter and activation dimension with a *logical*
axis, one of this module's constants (`VOCAB_AXIS` = 'vocab', `EMBED_AXIS`,
`BATCH_AXIS`, ...). `LOGICAL_AXIS_RULES` maps those names to the two *mesh*
axes ('data', 'model'); it is data, kept in this one place (as maxtext
does). Anything not named in the rules is replicated. `BATCH` and
`REPLICATED` are the mesh PartitionSpecs of a whole batch and of a full copy;
`param_specs` gives a model's params theirs.

Multi-host: every process runs the same program. `initialize_distributed`
joins the processes, `host_shard_info` says which slice of the input each
process reads, and `global_batch` glues the per-process slices into one
global array sharded over 'data'.
"""

from collections.abc import Iterator, Mapping, Sequence
import contextlib
from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec
import numpy as np

DATA_AXIS = 'data'
MODEL_AXIS = 'model'
MESH_AXES = (DATA_AXIS, MODEL_AXIS)

# Logical axis names (maxtext keeps them as constants in one module): the
# networks name every dimension of their parameters and activations with one.
BATCH_AXIS = 'batch'
LENGTH_AXIS = 'length'
VOCAB_AXIS = 'vocab'
EMBED_AXIS = 'embed'
MLP_AXIS = 'mlp'
HEADS_AXIS = 'heads'
KV_AXIS = 'kv'
JOINED_KV_AXIS = 'joined_kv'
RELPOS_BUCKETS_AXIS = 'relpos_buckets'
POSITIONS_AXIS = 'positions'  # BERT's position embeddings
TOKEN_TYPES_AXIS = 'token_types'  # BERT's token type embeddings
LAYERS_AXIS = 'layers'
STACK_AXIS = 'stack'
MLP_ACTIVATIONS_AXIS = 'mlp_activations'
BEAM_AXIS = 'beam'

# (logical axis name, mesh axis or None). The first rule that names a mesh
# axis not yet used by the array wins; None means replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
  (BATCH_AXIS, DATA_AXIS),
  (VOCAB_AXIS, MODEL_AXIS),
  (MLP_AXIS, MODEL_AXIS),
  (HEADS_AXIS, MODEL_AXIS),
  (JOINED_KV_AXIS, MODEL_AXIS),
  (EMBED_AXIS, None),
  (KV_AXIS, None),
  (LENGTH_AXIS, None),
  (RELPOS_BUCKETS_AXIS, None),
  (POSITIONS_AXIS, None),
  (TOKEN_TYPES_AXIS, None),
  (LAYERS_AXIS, None),
  (STACK_AXIS, None),
  (MLP_ACTIVATIONS_AXIS, None),
  (BEAM_AXIS, None),
)

# Mesh PartitionSpecs of whole arrays: [batch, ...] split over 'data', and a
# full copy on every device.
BATCH = PartitionSpec(DATA_AXIS)
REPLICATED = PartitionSpec()

PyTree = Any


def make_mesh(
  *, data: int = -1, model: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """Returns a ('data', 'model') mesh with Auto axis types.

  Args:
    data: size of the data-parallel axis; -1 takes all devices not used by
      `model`.
    model: size of the model-parallel axis.
    devices: devices to use; defaults to all (global) devices.

  Raises:
    ValueError: if data * model does not equal the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model < 1 or len(devices) % model:
    raise ValueError(
      f'mesh_model={model} does not divide the {len(devices)} devices'
    )
  if data == -1:
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(
      f'mesh data={data} x model={model} != {len(devices)} devices'
    )
  grid = np.asarray(devices, dtype=object).reshape(data, model)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Iterator[None]:
  """Activates `mesh` and the logical rules, for tracing sharded functions.

  Inside, `nn.with_logical_constraint` in the network becomes a real
  sharding constraint.
  """
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_mesh_spec(
  logical_axes: PartitionSpec | Sequence[str | None], rules=LOGICAL_AXIS_RULES
) -> PartitionSpec:
  """('vocab', 'embed') -> PartitionSpec('model', None) under `rules`."""
  return nn.logical_to_mesh_axes(tuple(logical_axes), rules)


def shardings_from_logical(
  logical_axes: PyTree, mesh: Mesh, rules=LOGICAL_AXIS_RULES
) -> PyTree:
  """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_axes, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  """A sharding that puts a full copy on every device of `mesh`."""
  return NamedSharding(mesh, PartitionSpec())


def replicated_key(seed: int, mesh: Mesh) -> jax.Array:
  """jax.random.key(seed) replicated over `mesh`; works across processes
  (where device_put to non-addressable devices would not)."""
  return jax.jit(lambda: jax.random.key(seed), out_shardings=replicated(mesh))()


def put_replicated_tree(tree: PyTree, shardings: PyTree) -> PyTree:
  """Host or device values (the same in every process) -> `shardings`."""
  return jax.jit(lambda x: x, out_shardings=shardings)(tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of [batch, ...] arrays: the batch dimension split over 'data'."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


class InMesh:
  """A function called (and so traced) with a mesh and the logical rules
  active. Wrapping a jitted function, it keeps its `_cache_size()`."""

  def __init__(self, mesh: Mesh, fn):
    self.mesh, self.fn = mesh, fn

  def __call__(self, *args, **kwargs):
    with mesh_context(self.mesh):
      return self.fn(*args, **kwargs)

  def _cache_size(self) -> int:
    return self.fn._cache_size()  # pylint: disable=protected-access


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def named_shardings(specs: PyTree, mesh: Mesh) -> PyTree:
  """Tree of mesh PartitionSpecs -> tree of NamedShardings on `mesh`."""
  return jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), specs, is_leaf=_is_spec
  )


def mesh_specs_from_logical(
  logical_axes: PyTree, rules=LOGICAL_AXIS_RULES
) -> PyTree:
  """Tree of logical PartitionSpecs -> tree of mesh PartitionSpecs."""
  return jax.tree.map(
    lambda spec: logical_to_mesh_spec(spec, rules),
    logical_axes,
    is_leaf=_is_spec,
  )


def param_specs(model, mesh: Mesh | None) -> PyTree:
  """Mesh PartitionSpecs of a model's params (anything with
  `logical_axes()`), by training's logical axis rules; None without a mesh."""
  if mesh is None:
    return None
  return mesh_specs_from_logical(model.logical_axes())


def jit_on_mesh(fn, mesh: Mesh | None, in_specs: PyTree, out_specs: PyTree):
  """jax.jit(fn); on a mesh, its arguments and results placed by trees of
  mesh PartitionSpecs (prefixes of them: PartitionSpec(DATA_AXIS) splits a
  batch dimension, PartitionSpec() replicates), and traced with the mesh and
  the logical rules active, as training's step is. No mesh: plain jit."""
  if mesh is None:
    return jax.jit(fn)
  return InMesh(
    mesh,
    jax.jit(
      fn,
      in_shardings=named_shardings(tuple(in_specs), mesh),
      out_shardings=named_shardings(out_specs, mesh),
    ),
  )


def place(tree: PyTree, specs: PyTree, mesh: Mesh | None) -> PyTree:
  """`tree` on `mesh` by mesh PartitionSpecs (unchanged without a mesh).

  Values may be host arrays or arrays committed to one device (as restored
  checkpoints are); device_put moves them (one process)."""
  if mesh is None:
    return tree
  return jax.device_put(tree, named_shardings(specs, mesh))


def _path_tuple(path) -> tuple[str, ...]:
  return tuple(
    str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k))))
    for k in path
  )


def shardings_like_params(
  tree: PyTree, params: PyTree, params_shardings: PyTree, mesh: Mesh
) -> PyTree:
  """Shardings for a tree that holds params-shaped copies (optimizer state).

  A leaf of `tree` whose key path ends with a parameter's key path and whose
  shape equals that parameter's shape gets that parameter's sharding (Adam's
  mu and nu, for example); every other leaf (counts, Adafactor's factored
  row/column statistics) is replicated.

  Args:
    tree: (abstract) tree, e.g. `jax.eval_shape(optimizer.init, params)`.
    params: (abstract) params tree, unboxed.
    params_shardings: NamedShardings with the structure of `params`.
    mesh: mesh for the replicated leaves.
  """
  by_path = {}
  for (path, leaf), sharding in zip(
    jax.tree_util.tree_flatten_with_path(params)[0],
    jax.tree_util.tree_leaves(params_shardings),
  ):
    by_path[_path_tuple(path)] = (tuple(np.shape(leaf)), sharding)

  def pick(path, leaf):
    keys = _path_tuple(path)
    for start in range(len(keys)):
      match = by_path.get(keys[start:])
      if match and match[0] == tuple(np.shape(leaf)):
        return match[1]
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(pick, tree)


# ------------------------------------------------------------ multi-host --


def initialize_distributed(
  coordinator_address: str, num_processes: int, process_id: int, **kwargs
) -> None:
  """Joins this process to a multi-process JAX job.

  Must run before any other JAX call that touches devices. On CPU the
  cross-process collectives use gloo (jax_cpu_collectives_implementation,
  the default in jax 0.10.2; set here explicitly).

  Args:
    coordinator_address: 'host:port' of process 0.
    num_processes: total number of processes.
    process_id: this process's index in [0, num_processes).
    **kwargs: passed on to jax.distributed.initialize (e.g.
      local_device_ids, initialization_timeout).
  """
  if not 0 <= process_id < num_processes:
    raise ValueError(f'process_id={process_id} not in [0, {num_processes})')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
    coordinator_address=coordinator_address,
    num_processes=num_processes,
    process_id=process_id,
    **kwargs,
  )


def host_shard_info():
  """seqio.ShardInfo for this process: which slice of the data it reads."""
  import seqio  # pylint: disable=g-import-not-at-top  (TensorFlow is heavy)

  return seqio.ShardInfo(
    index=jax.process_index(), num_shards=jax.process_count()
  )


def per_host_batch_size(global_batch_size: int) -> int:
  """Examples each process feeds per step."""
  if global_batch_size % jax.process_count():
    raise ValueError(
      f'batch_size={global_batch_size} is not divisible by '
      f'the {jax.process_count()} processes'
    )
  return global_batch_size // jax.process_count()


def global_batch(
  local_batch: Mapping[str, np.ndarray], mesh: Mesh
) -> dict[str, jax.Array]:
  """Per-process [local_batch, ...] arrays -> global arrays sharded on 'data'.

  Every process passes its own slice; the result has leading dimension
  local_batch * process_count. This is the train loop's one intended
  host-to-device copy, so it is allowed even under
  jax.transfer_guard('disallow') (which multi-process
  make_array_from_process_local_data would otherwise trip).
  """
  sharding = batch_sharding(mesh)
  out = {}
  with jax.transfer_guard_host_to_device('allow'):
    for name, value in local_batch.items():
      value = np.asarray(value)
      global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
      out[name] = jax.make_array_from_process_local_data(
        sharding, value, global_shape
      )
  return out
