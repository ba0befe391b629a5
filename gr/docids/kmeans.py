"""k-means and hierarchical k-means in JAX (for semantic docids).

`kmeans` runs k-means++ seeding then jitted Lloyd iterations in a
lax.while_loop (stops after `iters` steps or when no centroid moves more than
`tol` in squared distance). Points are padded to a power-of-two bucket and k
to a power of two (>= 8), both with masks, so clusters of different sizes and
different k share a few compiled functions.

Policies:
  * n < k: k-means++ runs out of distinct points and repeats some, so at most
    n clusters are non-empty; the rest are empty.
  * empty clusters keep their previous centroid (they are reported, not
    reseeded); `hierarchical_kmeans` drops them and renumbers the children.
  * ties go to the lowest cluster index. Same inputs and seed, same result.
"""

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np

_MIN_BUCKET = 16


def bucket_size(n: int) -> int:
  """Smallest power of two >= n (at least 16): the padded number of points."""
  return max(_MIN_BUCKET, 1 << max(n - 1, 0).bit_length())


def _squared_distances(
  x: jax.Array, centroids: jax.Array, valid: jax.Array | None = None
) -> jax.Array:
  """x [n, d], centroids [k, d] -> [n, k]; +inf where valid [k] is False."""
  cross = jnp.dot(x, centroids.T, precision=jax.lax.Precision.HIGHEST)
  x_norm = jnp.sum(x * x, axis=1, keepdims=True)
  c_norm = jnp.sum(centroids * centroids, axis=1)
  distances = jnp.maximum(x_norm - 2 * cross + c_norm[None, :], 0.0)
  return distances if valid is None else jnp.where(valid, distances, jnp.inf)


def _kmeans_plus_plus(x, mask, key, k: int) -> jax.Array:
  """Seeds k centroids [k, d] from valid rows of x [n, d] (mask [n]).

  Seeds are picked one after another, so the first j of them do not depend
  on k: padding k (and masking the extra centroids) changes nothing.
  """
  uniform = jnp.where(mask, 0.0, -jnp.inf)
  first = x[jax.random.categorical(jax.random.fold_in(key, 0), uniform)]
  centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)
  nearest = _squared_distances(x, first[None])[:, 0]

  def pick(i, carry):
    centroids, nearest = carry
    positive = mask & (nearest > 0)
    logits = jnp.where(
      positive, jnp.log(jnp.where(positive, nearest, 1.0)), -jnp.inf
    )
    # All valid points coincide with a centroid (n < k): pick uniformly.
    logits = jnp.where(jnp.any(positive), logits, uniform)
    chosen = x[jax.random.categorical(jax.random.fold_in(key, i), logits)]
    distance = _squared_distances(x, chosen[None])[:, 0]
    return centroids.at[i].set(chosen), jnp.minimum(nearest, distance)

  return jax.lax.fori_loop(1, k, pick, (centroids, nearest))[0]


def _lloyd_step(x, mask, centroids, valid):
  """One assignment + mean update; empty clusters keep their centroid."""
  k = centroids.shape[0]
  assignment = jnp.argmin(_squared_distances(x, centroids, valid), axis=1)
  one_hot = jax.nn.one_hot(assignment, k, dtype=x.dtype) * mask[:, None]
  sums = jnp.dot(one_hot.T, x, precision=jax.lax.Precision.HIGHEST)
  counts = one_hot.sum(axis=0)[:, None]
  return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centroids)


@functools.partial(jax.jit, static_argnames=("k_padded", "iters"))
def _kmeans_padded(x, mask, key, tol, k, *, k_padded: int, iters: int):
  """x [N, d], mask [N], k <= k_padded.

  Returns (centroids [k_padded, d], assignment [N]); rows >= k are unused.
  """
  valid = jnp.arange(k_padded) < k

  def not_done(state):
    step, _, shift = state
    return (step < iters) & (shift > tol)

  def step_fn(state):
    step, centroids, _ = state
    updated = _lloyd_step(x, mask, centroids, valid)
    shift = jnp.max(jnp.where(valid, jnp.sum((updated - centroids) ** 2, 1), 0))
    return step + 1, updated, shift

  centroids = _kmeans_plus_plus(x, mask, key, k_padded)
  init = (jnp.int32(0), centroids, jnp.array(jnp.inf, x.dtype))
  _, centroids, _ = jax.lax.while_loop(not_done, step_fn, init)
  return centroids, jnp.argmin(_squared_distances(x, centroids, valid), axis=1)


def kmeans(
  x: np.ndarray, k: int, *, seed: int = 0, iters: int = 50, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
  """k-means++ then Lloyd: x [n, d] -> (centroids [k, d], assignment [n])."""
  x = np.asarray(x, np.float32)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"kmeans needs a non-empty [n, d] array, got {x.shape}")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  n = x.shape[0]
  padded = np.zeros((bucket_size(n), x.shape[1]), np.float32)
  padded[:n] = x
  mask = np.arange(padded.shape[0]) < n
  k_padded = max(8, 1 << (k - 1).bit_length())
  centroids, assignment = _kmeans_padded(
    padded,
    mask,
    jax.random.PRNGKey(seed),
    np.float32(tol),
    np.int32(k),
    k_padded=k_padded,
    iters=iters,
  )
  return np.asarray(centroids)[:k], np.asarray(assignment)[:n]


@dataclasses.dataclass(frozen=True)
class ClusterTree:
  """Result of hierarchical k-means over n points.

  Attributes:
    paths: per point, child indices from the root down to its leaf, then its
      position in the leaf (0..c-1), e.g. (3, 1, 7).
    centroids: internal node path -> centroids of its children [children, d]
      (root is ()). Leaves (<= c points) have no entry.
  """

  paths: list[tuple[int, ...]]
  centroids: dict[tuple[int, ...], np.ndarray]


def hierarchical_kmeans(
  x: np.ndarray, k: int, c: int, *, seed: int = 0, iters: int = 50
) -> ClusterTree:
  """DSI-style recursive clustering of x [n, d]: k children, leaves <= c.

  A node with more than c points is split by k-means into its non-empty
  clusters (renumbered 0..); one with at most c points is a leaf whose points
  get positions 0.. in corpus order. If k-means cannot split a node (all
  points identical) it is cut into k contiguous chunks instead.
  """
  if k < 2 or c < 1:
    raise ValueError(f"need k >= 2 and c >= 1, got k={k}, c={c}")
  x = np.asarray(x, np.float32)
  paths: list[tuple[int, ...]] = [()] * len(x)
  centroids = {}
  pending = [((), np.arange(len(x)))]
  while pending:
    prefix, members = pending.pop()
    if len(members) <= c:
      for position, i in enumerate(members):
        paths[i] = prefix + (position,)
      continue
    node_centroids, groups = _split(
      x[members], k, _node_seed(seed, prefix), iters
    )
    centroids[prefix] = node_centroids
    pending.extend((prefix + (j,), members[g]) for j, g in enumerate(groups))
  return ClusterTree(paths, centroids)


def _node_seed(seed: int, prefix: tuple[int, ...]) -> int:
  return (seed * 1_000_003 + zlib.crc32(repr(prefix).encode())) % (2**31)


def _split(
  x: np.ndarray, k: int, seed: int, iters: int
) -> tuple[np.ndarray, list[np.ndarray]]:
  """x [m, d] -> (centroids [g, d], g index arrays), g >= 2 non-empty groups."""
  centroids, assignment = kmeans(x, k, seed=seed, iters=iters)
  used = np.unique(assignment)
  if len(used) >= 2:
    return centroids[used], [np.flatnonzero(assignment == j) for j in used]
  groups = np.array_split(np.arange(len(x)), min(k, len(x)))
  return np.stack([x[g].mean(axis=0) for g in groups]), groups
