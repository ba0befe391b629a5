"""oracle.restricted_to_trie: the exact scores of the sparse output layer."""

import numpy as np

from gr.decode import oracle

# A trie of four docids (EOS = 1, PAD = 0): 5-7, 5-8, 6 and 9-7-7.
TARGETS = np.array(
  [[5, 7, 1, 0], [5, 8, 1, 0], [6, 1, 0, 0], [9, 7, 7, 1]], np.int32
)


def _step_log_probs(seed: int) -> np.ndarray:
  """Each step's log-prob of the docid's token: a random [V] distribution
  per distinct prefix, so docids that share a prefix share it."""
  rng = np.random.default_rng(seed)
  tables = {}
  out = np.zeros(TARGETS.shape)
  for s, row in enumerate(TARGETS):
    for t, token in enumerate(row):
      if token == 0:
        break
      key = tuple(row[:t])
      if key not in tables:
        logits = rng.normal(size=16)
        tables[key] = logits - np.logaddexp.reduce(logits)
      out[s, t] = tables[key][token]
  return out


def test_restricted_scores_are_a_distribution_over_the_trie():
  for seed in range(3):
    scores = oracle.restricted_to_trie(_step_log_probs(seed), TARGETS)
    np.testing.assert_allclose(np.logaddexp.reduce(scores), 0.0, atol=1e-12)


def test_restricted_scores_by_hand():
  lp = _step_log_probs(0)
  got = oracle.restricted_to_trie(lp, TARGETS)
  root = np.logaddexp.reduce([lp[0, 0], lp[2, 0], lp[3, 0]])  # 5, 6, 9
  below_5 = np.logaddexp(lp[0, 1], lp[1, 1])  # 7, 8 after 5
  want = [
    lp[0, 0] - root + lp[0, 1] - below_5,  # EOS forced: 0
    lp[1, 0] - root + lp[1, 1] - below_5,
    lp[2, 0] - root,
    lp[3, 0] - root,  # 7, 7 and EOS each the only child: 0
  ]
  np.testing.assert_allclose(got, want, atol=1e-12)
