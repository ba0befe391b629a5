"""A per-document plan turned into look-ahead bonuses on trie nodes (PAG).

Given a score for every document (the lexical plan, times its weight),
each trie node gets a potential: the best score among the documents whose
docids pass through it. Beam search adds, to every candidate token, the
potential of the node it leads to minus that of the node it leaves, so

  - a beam's running score is its log-prob plus the best plan score still
    reachable below it (the look-ahead bonus that guides selection), and
  - a finished docid scores log-prob + plan[its document] exactly (the
    bonuses telescope from the root's 0 to the leaf, which only that
    document is beneath).

Potentials never rise along a path (a child's documents are a subset of
its parent's), so after the first step running scores still only fall and
beam search's early stop stays exact.

Shapes: B queries, N documents, S docid sequences of length L (EOS then
PAD), C trie slots (nodes).
"""

import jax
import jax.numpy as jnp

from gr.index import trie as trie_lib


def docid_paths(arrays: trie_lib.TrieArrays, sequences: jax.Array) -> jax.Array:
  """sequences [S, L] -> [S, L] the node each prefix reaches (-1 after the
  leaf or where a sequence is not in the trie)."""
  nodes = jnp.zeros((sequences.shape[0],), jnp.int32)
  active = jnp.ones((sequences.shape[0],), bool)
  path = []
  for position, tokens in enumerate(sequences.T):
    moved = trie_lib.step(arrays, nodes, tokens, max(position, 1))
    nodes = jnp.where(active, moved, -1)
    path.append(nodes)
    active &= (tokens != arrays.eos_id) & (nodes >= 0)
  return jnp.stack(path, axis=1)


def node_potentials(
  arrays: trie_lib.TrieArrays,
  sequences: jax.Array,
  documents: jax.Array,
  document_scores: jax.Array,
) -> jax.Array:
  """Best document score beneath each node: [B, C] (0 where none).

  sequences [S, L] the docids, documents [S] the document of each (-1 =
  padding row), document_scores [B, N] >= 0.
  """
  paths = docid_paths(arrays, sequences)  # [S, L]
  paths = jnp.where(documents[:, None] >= 0, paths, -1)
  scores = document_scores[:, jnp.maximum(documents, 0)]  # [B, S]
  scores = jnp.broadcast_to(scores[:, :, None], scores.shape + paths.shape[1:])
  slots = arrays.child_start.shape[0]
  flat_paths = paths.reshape(-1)
  target = jnp.where(flat_paths >= 0, flat_paths, slots)  # dropped
  potential = jnp.full((document_scores.shape[0], slots), -jnp.inf)
  potential = potential.at[:, target].max(
    scores.reshape(scores.shape[0], -1), mode="drop"
  )
  return jnp.where(jnp.isfinite(potential), potential, 0.0)
