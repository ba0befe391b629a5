"""How a docid is scored from its steps' logits (the score mode).

"log_probs" sums each token's log-softmax (the default, DSI); "logits" sums
each token's raw logit with EOS counting 0 (RIPOR: a docid scores its summed
dot products with the decoder's outputs). gr/decode/beam_search.py and the
exact oracle (gr/decode/oracle.py, through models.step_scores) use the
same rule.
"""

import jax
import jax.numpy as jnp

SCORE_MODES = ('log_probs', 'logits')


def check_score_mode(score_mode: str) -> None:
  if score_mode not in SCORE_MODES:
    raise ValueError(
      f'score_mode must be one of {SCORE_MODES}, got {score_mode!r}'
    )


def token_scores(
  logits: jax.Array, targets: jax.Array, score_mode: str, eos_id: int = 1
) -> jax.Array:
  """Each target token's score [..., L] from logits [..., L, V]: its
  log-prob, or ("logits") its raw logit, 0 for EOS."""
  check_score_mode(score_mode)
  if score_mode == 'log_probs':
    logits = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if score_mode == 'logits':
    picked = jnp.where(targets == eos_id, 0.0, picked)
  return picked
