"""Orbax checkpoints of the train state, with the index artifact beside them.

A checkpoint step directory holds two orbax items:

  <model_dir>/<step>/state/           the train state (step, params, opt_state)
  <model_dir>/<step>/index_artifact/  optional: MANIFEST.json and files/,
                                      the files that give the params their
                                      meaning (DocidTable and vocabulary; no
                                      trie: gr/index/artifact.py's Index.build_trie
                                      makes it from the table)

Both are written into orbax's temporary directory and renamed into place
together, so a crash mid-save leaves the previous step as the latest
loadable one. MANIFEST.json lists every artifact file with its size and
sha256; loading verifies them and raises `ArtifactError` naming the file that
is missing, extra or changed.

The artifact is an index version directory of gr/index/artifact.py (docids/ from
gr/docids, vocab/ from gr/vocab or gr/wordpiece, index.json; a continual
update's version adds its memory corpus and continual.json); this module
only copies and verifies bytes.
"""

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from gr import atomic_io

STATE_ITEM = 'state'
ARTIFACT_ITEM = 'index_artifact'
MANIFEST_NAME = 'MANIFEST.json'
FILES_DIR = 'files'
MANIFEST_FORMAT = 1

PyTree = Any
PathLike = str | os.PathLike


class ArtifactError(ValueError):
  """An index artifact is missing, incomplete or fails its checksums."""


# ------------------------------------------------------ index artifact --


def _artifact_files(directory: pathlib.Path) -> list[str]:
  """Relative paths of every file under `directory`."""
  return sorted(
    str(p.relative_to(directory)) for p in directory.rglob('*') if p.is_file()
  )


def write_artifact(source_dir: PathLike, dest_dir: PathLike) -> dict:
  """Copies the files of `source_dir` to `dest_dir`/files/ + a manifest.

  Each copy's checksum is compared with its source's, so a bad copy fails
  here rather than at load time. Returns the manifest.
  """
  source = pathlib.Path(source_dir)
  dest = pathlib.Path(dest_dir) / FILES_DIR
  if not source.is_dir():
    raise ArtifactError(f'index artifact directory {source} does not exist')
  files = {}
  for rel in _artifact_files(source):
    (dest / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / rel, dest / rel)
    digest = atomic_io.sha256_file(dest / rel)
    if digest != atomic_io.sha256_file(source / rel):
      raise ArtifactError(f'copy of {source / rel} to {dest / rel} differs')
    files[rel] = {'sha256': digest, 'bytes': (dest / rel).stat().st_size}
  manifest = {'format': MANIFEST_FORMAT, 'files': files}
  atomic_io.write_json(
    dest.parent / MANIFEST_NAME, manifest, indent=1, sort_keys=True
  )
  return manifest


def verify_artifact(directory: PathLike) -> dict:
  """Checks every file under `directory`/files/ against its MANIFEST.json.

  Returns:
    The manifest ({'format': 1, 'files': {relpath: {'sha256', 'bytes'}}}).

  Raises:
    ArtifactError: naming the missing manifest, or the first file that is
      missing, not in the manifest, or has a different sha256.
  """
  directory = pathlib.Path(directory)
  manifest_path = directory / MANIFEST_NAME
  if not manifest_path.is_file():
    raise ArtifactError(f'{manifest_path} is missing')
  try:
    manifest = json.loads(manifest_path.read_text())
    listed = manifest['files']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ArtifactError(f'{manifest_path} is not a valid manifest: {e}') from e
  files_dir = directory / FILES_DIR
  for rel, entry in sorted(listed.items()):
    path = files_dir / rel
    if not path.is_file():
      raise ArtifactError(f'{path} is listed in {manifest_path} but missing')
    if atomic_io.sha256_file(path) != entry['sha256']:
      raise ArtifactError(
        f'{path} fails its sha256 check (expected {entry["sha256"]})'
      )
  extra = set(_artifact_files(files_dir)) - set(listed)
  if extra:
    raise ArtifactError(
      f'{files_dir} has files not in {manifest_path}: {sorted(extra)}'
    )
  return manifest


class IndexArtifactHandler(ocp.CheckpointHandler):
  """Orbax handler that copies an artifact directory into a checkpoint."""

  def save(self, directory: epath.Path, args: 'IndexArtifactSave'):
    if jax.process_index() == 0:
      write_artifact(args.source_dir, pathlib.Path(directory))

  def restore(
    self, directory: epath.Path, args: 'IndexArtifactRestore | None' = None
  ) -> pathlib.Path:
    """Verifies the artifact; returns the directory holding its files."""
    del args
    verify_artifact(pathlib.Path(directory))
    return pathlib.Path(directory) / FILES_DIR

  def metadata(self, directory: epath.Path) -> None:
    del directory
    return None

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self):
    pass


@ocp.args.register_with_handler(IndexArtifactHandler, for_save=True)
@dataclasses.dataclass
class IndexArtifactSave(ocp.args.CheckpointArgs):
  """Save args: the directory whose files make up the index artifact."""

  source_dir: PathLike


@ocp.args.register_with_handler(IndexArtifactHandler, for_restore=True)
@dataclasses.dataclass
class IndexArtifactRestore(ocp.args.CheckpointArgs):
  """Restore args: none; restoring verifies and returns the directory."""


# --------------------------------------------------------- train state --


def make_manager(
  directory: PathLike,
  *,
  keep: int | None = 3,
  save_interval_steps: int = 1,
  async_save: bool = True,
) -> ocp.CheckpointManager:
  """An orbax CheckpointManager that keeps the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep,
    save_interval_steps=save_interval_steps,
    create=True,
    cleanup_tmp_directories=True,
    enable_async_checkpointing=async_save,
  )
  return ocp.CheckpointManager(
    os.path.abspath(directory),
    options=options,
    handler_registry=_handler_registry(),
  )


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  """Says which orbax handler reads and writes each item of a step."""
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add(STATE_ITEM, ocp.args.PyTreeSave)
  registry.add(STATE_ITEM, ocp.args.PyTreeRestore)
  registry.add(ARTIFACT_ITEM, IndexArtifactSave)
  registry.add(ARTIFACT_ITEM, IndexArtifactRestore)
  return registry


def _as_manager(manager_or_dir) -> tuple[ocp.CheckpointManager, bool]:
  """(manager, whether we made it and must close it)."""
  if isinstance(manager_or_dir, ocp.CheckpointManager):
    return manager_or_dir, False
  return make_manager(manager_or_dir, keep=None, async_save=False), True


def save(
  manager_or_dir,
  step: int,
  state: PyTree,
  extra_artifacts_dir: PathLike | None = None,
  *,
  force: bool = False,
) -> bool:
  """Saves `state` (and the artifact directory, if given) as `step`.

  With a manager, the save may still be finishing in the background when
  this returns (call `manager.wait_until_finished()`); with a directory it
  has finished. Returns whether a save happened (the manager's
  save_interval_steps may skip it unless `force`).
  """
  manager, owned = _as_manager(manager_or_dir)
  items = {STATE_ITEM: ocp.args.PyTreeSave(state)}
  if extra_artifacts_dir is not None:
    items[ARTIFACT_ITEM] = IndexArtifactSave(os.fspath(extra_artifacts_dir))
  saved = manager.save(step, args=ocp.args.Composite(**items), force=force)
  if owned:
    manager.wait_until_finished()
    manager.close()
  return saved


def _pytree_restore(target: PyTree, partial: bool = False):
  """Restore args giving each array the shape/dtype/sharding of `target`."""
  return ocp.args.PyTreeRestore(
    item=target,
    restore_args=ocp.checkpoint_utils.construct_restore_args(target),
    partial_restore=partial,
  )


def _abstract(target: PyTree) -> PyTree:
  """Concrete or abstract arrays -> ShapeDtypeStructs keeping shardings."""

  def one(x):
    x = x if hasattr(x, 'shape') else np.asarray(x)
    return jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=getattr(x, 'sharding', None)
    )

  return jax.tree.map(one, target)


def restore_latest(manager_or_dir, target: PyTree) -> tuple[int, PyTree] | None:
  """Restores the latest step into the structure and shardings of `target`.

  Args:
    manager_or_dir: a CheckpointManager or its directory.
    target: a state tree (concrete or jax.ShapeDtypeStruct with shardings)
      whose structure, shapes, dtypes and shardings the result takes.

  Returns:
    (step, state), or None when there is no finished checkpoint.
  """
  manager, owned = _as_manager(manager_or_dir)
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(
    step,
    args=ocp.args.Composite(**{STATE_ITEM: _pytree_restore(_abstract(target))}),
  )
  if owned:
    manager.close()
  return step, restored[STATE_ITEM]


def _resolve_step(manager: ocp.CheckpointManager, step: int | None) -> int:
  steps = manager.all_steps()
  if step is None:
    step = manager.latest_step()
  if step is None or step not in steps:
    raise FileNotFoundError(
      f'no checkpoint step {step} in {manager.directory}'
      f' (steps: {sorted(steps)})'
    )
  return step


def restore_params(
  checkpoint_dir: PathLike,
  step: int | None = None,
  *,
  shardings: PyTree | None = None,
) -> PyTree:
  """Loads only the params of a checkpoint, on any mesh or one device.

  Args:
    checkpoint_dir: the model_dir a CheckpointManager wrote.
    step: which step; the latest if None.
    shardings: NamedShardings with the params' structure; None puts every
      array on the first local device.

  Returns:
    The params tree as saved (nested dicts of jax.Arrays).
  """
  manager, _ = _as_manager(checkpoint_dir)
  step = _resolve_step(manager, step)
  saved = manager.item_metadata(step)[STATE_ITEM]['params']
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, saved)
  target = jax.tree.map(
    lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
    saved,
    shardings,
  )
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      **{STATE_ITEM: _pytree_restore({'params': target}, partial=True)}
    ),
  )
  manager.close()
  return restored[STATE_ITEM]['params']


def load_artifact(
  checkpoint_dir: PathLike, step: int | None = None
) -> pathlib.Path:
  """Verifies the index artifact saved with `step`; returns its files' dir.

  The returned directory holds the files exactly as they were in the
  `extra_artifacts_dir` given to `save` (and can be passed to `save` again).

  Raises:
    ArtifactError: if the step has no artifact, or a file fails verification.
  """
  manager, _ = _as_manager(checkpoint_dir)
  step = _resolve_step(manager, step)
  directory = pathlib.Path(manager.directory) / str(step) / ARTIFACT_ITEM
  manager.close()
  if not directory.is_dir():
    raise ArtifactError(
      f'checkpoint step {step} in {checkpoint_dir} has no {ARTIFACT_ITEM}'
    )
  verify_artifact(directory)
  return directory / FILES_DIR
