"""DSI++'s generative memory: old documents replayed without their bodies.

Experience replay stores every old document's body beside each checkpoint.
The generative memory stores, per document, only its vector: the
pretrained encoder's unit mean-pooled body states at the run's input
length ([width] float16, 768 bytes for MiniLM, against a news body's few
kilobytes), computed once when the document is indexed. One query
generator, trained once, writes queries from a vector alone: the doc2query
network (gr/queries/doc2query.py) whose decoder cross-attends to a single state,
the vector, instead of the body's token states. Its training mixes both
sources (`with_vector_sources`), so the same model serves DSI-QG (from
bodies) and the memory (from vectors). Replay then samples fresh
pseudo-queries for old documents at each update
(query_generators.VectorQueryGenerator).

This works with a frozen encoder (TRAINABLE_ENCODER_LAYERS = 0): a vector
is the pooled output of the last layer, which training never changes.

Files (`save_vectors`, `load_vectors`): `doc_vectors.npz` holding
`doc_ids` [N] and `vectors` [N, width] float16, written atomically.
"""

import io
import os
from typing import Mapping, Sequence

import numpy as np

from gr import atomic_io

VECTORS_FILE = "doc_vectors.npz"
SOURCE_ID = 1  # the one non-padding source token a vector row carries


def vector_source(
  vectors: np.ndarray, length: int = 1
) -> tuple[np.ndarray, np.ndarray]:
  """Vectors [D, E] -> (encoded [D, length, E], source ids [D, length]):
  the vector at position 0, padding after."""
  vectors = np.asarray(vectors, np.float32)
  encoded = np.zeros((len(vectors), length, vectors.shape[1]), np.float32)
  encoded[:, 0] = vectors
  source = np.zeros((len(vectors), length), np.int32)
  source[:, 0] = SOURCE_ID
  return encoded, source


def pooled(states: np.ndarray, tokens: np.ndarray) -> np.ndarray:
  """Encoder states [B, Li, E] and ids [B, Li] -> unit mean over non-pad
  positions [B, E] (bert.mean_pool_normalise, on the host)."""
  mask = (tokens > 0)[..., None].astype(np.float32)
  mean = (states.astype(np.float32) * mask).sum(1) / np.maximum(
    mask.sum(1), 1.0
  )
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def with_vector_sources(batch: dict, every: int) -> dict:
  """Every `every`-th row (1, 1 + every, ...) of a batch with final encoder
  states (`encoder_frozen_states` [B, Li, E], all layers frozen) keeps only
  its document vector: states -> [vector, 0, ...], ids -> [SOURCE_ID, 0,
  ...]. The targets are unchanged."""
  tokens = np.array(batch["encoder_input_tokens"])
  states = np.array(batch["encoder_frozen_states"])
  rows = np.arange(1, len(tokens), every)
  vectors = pooled(states[rows], tokens[rows])
  encoded, source = vector_source(vectors, tokens.shape[1])
  states[rows] = encoded.astype(states.dtype)
  tokens[rows] = source
  return {
    **batch,
    "encoder_input_tokens": tokens,
    "encoder_frozen_states": states,
  }


# ----------------------------------------------------------------- files --


def save_vectors(path: str, vectors: Mapping[str, np.ndarray]) -> None:
  """{doc_id: [E]} -> `path` (npz: doc_ids, vectors float16), atomically."""
  doc_ids = list(vectors)
  matrix = (
    np.stack([vectors[d] for d in doc_ids]).astype(np.float16)
    if doc_ids
    else np.zeros((0, 0), np.float16)
  )
  buffer = io.BytesIO()
  np.savez(buffer, doc_ids=np.array(doc_ids, dtype=str), vectors=matrix)
  atomic_io.write_bytes(path, buffer.getvalue())


def load_vectors(path: str) -> dict[str, np.ndarray]:
  """{doc_id: [E] float32} from `save_vectors`' file ({} if absent)."""
  if not os.path.exists(path):
    return {}
  with np.load(path, allow_pickle=False) as data:
    return {
      str(d): v.astype(np.float32)
      for d, v in zip(data["doc_ids"], data["vectors"])
    }


def vectors_of(
  vectors: Mapping[str, np.ndarray], doc_ids: Sequence[str]
) -> dict[str, np.ndarray]:
  """The vectors of `doc_ids`; raises naming the first one missing."""
  missing = [d for d in doc_ids if d not in vectors]
  if missing:
    raise KeyError(
      f"{len(missing)} documents have no stored vector, e.g. "
      f"{missing[:3]}: the memory was written without them"
    )
  return {d: vectors[d] for d in doc_ids}
