"""The frozen encoder layers' output, computed once per training input.

With a pretrained encoder whose bottom layers are frozen
(bert_network.BertT5Config.frozen_layers), those layers give the same
states for the same input at every step. `EncoderCache.build` runs them
once over every distinct encoder input of a mixture's tasks and keeps the
states (float16, ragged: one [length_i, width] block per input); a train
step then gets them through `add_states` and runs only the trainable part.

The cache file's name is a fingerprint of the frozen parameters, the number
of frozen layers and every input's token ids, so a change of texts or of
encoder recomputes it; it is written atomically.

  cache = EncoderCache.build(model, params, rows, cache_dir)
  batch = cache.add_states(batch)   # + encoder_frozen_states [B, Li, width]
"""

import hashlib
import io
import logging
import os
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr import atomic_io

BUCKETS = (16, 32, 64, 128, 256, 512)
TOKENS_PER_BATCH = 4096


def _trimmed(row: np.ndarray) -> np.ndarray:
  """A padded token row [Li] -> its ids up to the last non-zero one."""
  nonzero = np.flatnonzero(row)
  return row[: nonzero[-1] + 1] if len(nonzero) else row[:0]


def distinct_inputs(rows: Iterable[np.ndarray]) -> list[np.ndarray]:
  """Distinct trimmed token rows in a canonical order (length, then ids),
  so the same set of inputs always gives the same cache."""
  seen = {}
  for row in rows:
    row = _trimmed(np.asarray(row, np.int32))
    seen.setdefault(row.tobytes(), row)
  return sorted(seen.values(), key=lambda r: (len(r), r.tobytes()))


def fingerprint(
  frozen_params: Any, frozen_layers: int, inputs: Sequence[np.ndarray]
) -> str:
  """sha256 over the frozen parameters, their depth and the inputs."""
  digest = hashlib.sha256(f'frozen_layers={frozen_layers}'.encode())
  for leaf in jax.tree.leaves(frozen_params):
    digest.update(np.asarray(leaf, np.float32).tobytes())
  for row in inputs:
    digest.update(len(row).to_bytes(4, 'little'))
    digest.update(row.tobytes())
  return digest.hexdigest()


def frozen_params(params: Any, frozen_layers: int) -> dict:
  """The encoder parameters the frozen layers use (embeddings + layers)."""
  encoder = params['encoder']
  return {
    name: value
    for name, value in encoder.items()
    if not name.startswith('layer_') or int(name.split('_')[1]) < frozen_layers
  }


class EncoderCache:
  """Frozen-layer states of a set of inputs, looked up by token ids."""

  def __init__(self, inputs: Sequence[np.ndarray], states: np.ndarray):
    """inputs: trimmed token rows; states [sum of lengths, width] float16."""
    lengths = np.array([len(r) for r in inputs], np.int64)
    if states.shape[0] != lengths.sum():
      raise ValueError(
        f'{states.shape[0]} state rows for {lengths.sum()} input tokens'
      )
    self.inputs = list(inputs)
    self.states = states
    self.offsets = np.concatenate([[0], np.cumsum(lengths)])
    self._row = {r.tobytes(): i for i, r in enumerate(inputs)}

  def __len__(self) -> int:
    return len(self._row)

  @property
  def width(self) -> int:
    return self.states.shape[1]

  def lookup(self, row: np.ndarray) -> np.ndarray:
    """A padded token row [Li] -> its states [Li, width] (zeros on padding).

    Raises:
      KeyError: for an input the cache was not built from.
    """
    key = _trimmed(np.asarray(row, np.int32))
    i = self._row.get(key.tobytes())
    if i is None:
      raise KeyError(
        f'encoder input of {len(key)} tokens (starting '
        f'{key[:8].tolist()}) is not in the encoder cache: '
        'rebuild it from the same tasks'
      )
    out = np.zeros((len(row), self.width), self.states.dtype)
    out[: len(key)] = self.states[self.offsets[i] : self.offsets[i + 1]]
    return out

  def add_states(self, batch: dict) -> dict:
    """Adds `encoder_frozen_states` [B, Li, width] for encoder_input_tokens."""
    tokens = batch['encoder_input_tokens']
    states = np.stack([self.lookup(row) for row in tokens])
    return {**batch, 'encoder_frozen_states': states}

  def with_inputs(
    self, model, params, rows: Iterable[np.ndarray]
  ) -> 'EncoderCache':
    """This cache grown by the distinct `rows` it lacks, encoded now (in
    memory: for a process that meets new inputs over time)."""
    new = [r for r in distinct_inputs(rows) if r.tobytes() not in self._row]
    if not new:
      return self
    states = encode_inputs(model, params, new)
    if len(self.states):
      states = np.concatenate([self.states, states])
    return EncoderCache(self.inputs + new, states)

  # -- building and files --

  @classmethod
  def build(
    cls, model, params, rows: Iterable[np.ndarray], cache_dir: str
  ) -> 'EncoderCache':
    """Loads the cache for these inputs and frozen params, or computes it.

    Inputs that an earlier cache file of the same frozen params holds (e.g.
    a run over the same corpus with other pseudo-queries) are taken from
    it; only the others are encoded.
    """
    inputs = distinct_inputs(rows)
    frozen = model.config.frozen_layers
    params_key = fingerprint(frozen_params(params, frozen), frozen, [])[:16]
    inputs_key = fingerprint({}, 0, inputs)[:16]
    path = os.path.join(
      cache_dir, f'{FILE_PREFIX}{params_key}_{inputs_key}.npz'
    )
    if os.path.exists(path):
      logging.info('encoder cache: reusing %s (%d inputs)', path, len(inputs))
      return cls(inputs, _read(path)[1])
    known = _earlier_caches(cache_dir, params_key)
    cache = known.with_inputs(model, params, inputs)
    logging.info(
      'encoder cache: %d of %d inputs from earlier caches',
      len(inputs) - (len(cache) - len(known)),
      len(inputs),
    )
    states = np.concatenate(
      [cache.states_of(r) for r in inputs]
      or [np.zeros((0, cache.width), np.float16)]
    )
    _write(path, inputs, states)
    return cls(inputs, states)

  def states_of(self, trimmed: np.ndarray) -> np.ndarray:
    """The states [len, width] of an input the cache holds (trimmed ids)."""
    i = self._row[trimmed.tobytes()]
    return self.states[self.offsets[i] : self.offsets[i + 1]]


FILE_PREFIX = 'frozen_encoder_'


def _write(path: str, inputs: Sequence[np.ndarray], states: np.ndarray):
  """inputs (ids and lengths) and their states in one .npz, atomically."""
  buffer = io.BytesIO()
  np.savez(
    buffer,
    states=states,
    ids=np.concatenate(list(inputs) or [np.zeros(0, np.int32)]),
    lengths=np.array([len(r) for r in inputs], np.int64),
  )
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  atomic_io.write_bytes(path, buffer.getvalue())


def _read(path: str) -> tuple[list[np.ndarray], np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    ids, lengths, states = data['ids'], data['lengths'], data['states']
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  return [ids[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])], states


def _earlier_caches(cache_dir: str, params_key: str) -> 'EncoderCache':
  """Every input of the cache files of `params_key` in `cache_dir`."""
  inputs, states = [], []
  if os.path.isdir(cache_dir):
    for name in sorted(os.listdir(cache_dir)):
      if name.startswith(f'{FILE_PREFIX}{params_key}_') and name.endswith(
        '.npz'
      ):
        file_inputs, file_states = _read(os.path.join(cache_dir, name))
        inputs += file_inputs
        states.append(file_states)
  if not states:
    return EncoderCache([], np.zeros((0, 0), np.float16))
  return EncoderCache(inputs, np.concatenate(states))


def _bucket(length: int) -> int:
  return next((b for b in BUCKETS if b >= length), length)


def encode_inputs(
  model, params, inputs: Sequence[np.ndarray], log_every_s: float = 15.0
) -> np.ndarray:
  """Runs the frozen layers over `inputs` -> [sum of lengths, width] fp16.

  Inputs are sorted by length and batched per length bucket (one compile
  per bucket); progress is logged with an ETA.
  """
  encode = jax.jit(model.frozen_encode)
  lengths = np.array([len(r) for r in inputs])
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  out = np.zeros((offsets[-1], model.config.encoder_width), np.float16)
  order = np.argsort(lengths, kind='stable')
  total, done, start, last_log = int(offsets[-1]), 0, time.time(), time.time()
  i = 0
  while i < len(order):
    width = _bucket(lengths[order[i]])
    size = max(1, TOKENS_PER_BATCH // width)
    rows = [r for r in order[i : i + size] if _bucket(lengths[r]) == width]
    i += len(rows)
    tokens = np.zeros((size, width), np.int32)
    for j, r in enumerate(rows):
      tokens[j, : lengths[r]] = inputs[r]
    states = np.asarray(encode(params, jnp.asarray(tokens)), np.float16)
    for j, r in enumerate(rows):
      out[offsets[r] : offsets[r + 1]] = states[j, : lengths[r]]
    done += int(lengths[rows].sum())
    if time.time() - last_log > log_every_s or i == len(order):
      elapsed = time.time() - start
      logging.info(
        'encoder cache: %d/%d tokens, %.0fs elapsed, ETA %.0fs',
        done,
        total,
        elapsed,
        elapsed * (total - done) / max(done, 1),
      )
      last_log = time.time()
  return out
