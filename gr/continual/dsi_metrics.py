"""DSI++'s continual-learning metrics over a performance matrix.

a[n][i] is the performance on D_i's queries after step n (NaN for i > n).
(Mehta et al. 2023, after Chaudhry et al. 2018):

  average performance  A_n  = mean_{i<=n} a[n][i]
  forgetting           F_n  = mean_{i<n} max_{i<=l<n} (a[l][i] - a[n][i])
  learning accuracy    LA_n = mean_{i<=n} a[i][i]

(F_0 = 0. DSI++ writes the max over l in 0..n-1; a[l][i] only exists for
l >= i.)
"""

from typing import Mapping, Sequence

import numpy as np


def average_performance(a: np.ndarray, n: int) -> float:
  """A_n = mean_{i<=n} a[n][i]; `a` is [steps, steps], NaN above diagonal."""
  return float(np.mean(a[n, : n + 1]))


def forgetting(a: np.ndarray, n: int) -> float:
  """F_n = mean_{i<n} max_{i<=l<n} (a[l][i] - a[n][i]); F_0 = 0."""
  if n == 0:
    return 0.0
  drops = [np.max(a[i:n, i]) - a[n, i] for i in range(n)]
  return float(np.mean(drops))


def learning_accuracy(a: np.ndarray, n: int) -> float:
  """LA_n = mean_{i<=n} a[i][i]."""
  return float(np.mean(np.diag(a)[: n + 1]))


def continual_metrics(a: np.ndarray) -> dict[str, list[float]]:
  """{'A', 'F', 'LA'}: each a list over steps n = 0..len(a)-1."""
  steps = range(len(a))
  return {
    "A": [average_performance(a, n) for n in steps],
    "F": [forgetting(a, n) for n in steps],
    "LA": [learning_accuracy(a, n) for n in steps],
  }


def performance_matrix(
  rows: Sequence[Sequence[Mapping[str, float]]], metric: str
) -> np.ndarray:
  """rows[n][i] = metrics of D_i after step n -> a [steps, steps] (NaN)."""
  a = np.full((len(rows), len(rows)), np.nan)
  for n, row in enumerate(rows):
    for i, values in enumerate(row):
      a[n, i] = values[metric]
  return a
