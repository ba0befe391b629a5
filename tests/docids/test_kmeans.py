"""k-means and hierarchical k-means (gr/docids/kmeans.py)."""

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from gr.docids import kmeans

SETTINGS = hypothesis.settings(max_examples=25, deadline=None)


def blobs(num_blobs, per_blob, dim=5, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(num_blobs, dim)) * 20
  x = np.concatenate([c + rng.normal(size=(per_blob, dim)) for c in centres])
  return x.astype(np.float32), np.repeat(np.arange(num_blobs), per_blob)


def same_partition(a, b):
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_recovers_separated_blobs_and_centroids_are_cluster_means():
  x, truth = blobs(4, 30)
  centroids, assignment = kmeans.kmeans(x, 4, seed=0)
  assert same_partition(assignment, truth)
  for j in range(4):
    np.testing.assert_allclose(
      centroids[j], x[assignment == j].mean(0), atol=1e-4
    )


@SETTINGS
@hypothesis.given(
  n=st.integers(1, 40), k=st.integers(1, 6), seed=st.integers(0, 3)
)
def test_assignment_is_nearest_centroid_and_padding_is_ignored(n, k, seed):
  x = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32) + 50
  centroids, assignment = kmeans.kmeans(x, k, seed=seed)
  assert centroids.shape == (k, 3) and assignment.shape == (n,)
  distances = ((x[:, None] - centroids[None]) ** 2).sum(-1)
  np.testing.assert_allclose(
    distances[np.arange(n), assignment], distances.min(1), rtol=1e-4, atol=1e-3
  )
  # Padded rows sit at the origin, far from the data: no centroid may go there.
  assert np.all(np.linalg.norm(centroids, axis=1) > 40)
  assert len(np.unique(assignment)) <= min(n, k)
  again = kmeans.kmeans(x, k, seed=seed)
  np.testing.assert_array_equal(again[1], assignment)
  np.testing.assert_array_equal(again[0], centroids)


def test_fewer_points_than_clusters():
  x = np.array([[0, 0], [10, 10], [20, 0]], np.float32)
  centroids, assignment = kmeans.kmeans(x, 5, seed=1)
  assert sorted(assignment.tolist()) == sorted(set(assignment.tolist()))
  np.testing.assert_allclose(centroids[assignment], x, atol=1e-5)
  assert np.all(np.isfinite(centroids))


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="non-empty"):
    kmeans.kmeans(np.zeros((0, 3)), 2)
  with pytest.raises(ValueError, match="k >= 2"):
    kmeans.hierarchical_kmeans(np.zeros((5, 3)), 1, 2)


def test_bucket_sizes_are_powers_of_two():
  assert [kmeans.bucket_size(n) for n in (1, 16, 17, 100, 1024, 1025)] == [
    16,
    16,
    32,
    128,
    1024,
    2048,
  ]


def check_tree(tree, x, c):
  paths = tree.paths
  assert len(set(paths)) == len(paths) == len(x)
  leaves = {}
  for p in paths:
    leaves.setdefault(p[:-1], []).append(p[-1])
  for leaf, positions in leaves.items():
    assert (
      sorted(positions) == list(range(len(positions))) and len(positions) <= c
    )
    assert leaf not in tree.centroids
    for depth in range(len(leaf)):  # Every ancestor is an internal node.
      assert leaf[depth] < len(tree.centroids[leaf[:depth]])
  children = {
    p[: len(node) + 1]
    for node in tree.centroids
    for p in paths
    if p[: len(node)] == node and len(p) > len(node)
  }
  for node, centroids in tree.centroids.items():
    assert (
      len([ch for ch in children if ch[:-1] == node]) == len(centroids) >= 2
    )


@SETTINGS
@hypothesis.given(
  n=st.integers(1, 60),
  k=st.integers(2, 5),
  c=st.integers(1, 6),
  duplicates=st.booleans(),
)
def test_hierarchical_tree_is_complete_and_leaves_are_small(
  n, k, c, duplicates
):
  x = np.random.default_rng(n).normal(size=(n, 4)).astype(np.float32)
  if duplicates:  # All points equal: k-means cannot split, chunks must.
    x[:] = x[0]
  tree = kmeans.hierarchical_kmeans(x, k, c, seed=0)
  check_tree(tree, x, c)
  again = kmeans.hierarchical_kmeans(x, k, c, seed=0)
  assert again.paths == tree.paths


def test_hierarchical_follows_cluster_structure():
  x, truth = blobs(3, 8)
  tree = kmeans.hierarchical_kmeans(x, 3, 8, seed=0)
  first = np.array([p[0] for p in tree.paths])
  assert same_partition(first, truth)
  assert all(len(p) == 2 for p in tree.paths)
