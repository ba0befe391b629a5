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

import functools
import json
import os
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from gr import atomic_io
from gr import batching
from gr.index import trie as trie_lib
from gr.model import lexical as lexical_lib


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
  leaves_only: bool = False,
) -> jax.Array:
  """Best document score beneath each node: [B, C] (0 where none).

  sequences [S, L] the docids, documents [S] the document of each (-1 =
  padding row), document_scores [B, N] >= 0. leaves_only: only each
  docid's last node (its EOS) holds its score, every other node 0.
  """
  paths = docid_paths(arrays, sequences)  # [S, L]
  paths = jnp.where(documents[:, None] >= 0, paths, -1)
  if leaves_only:
    last = jnp.sum(paths >= 0, axis=1, keepdims=True) - 1  # [S, 1]
    paths = jnp.where(jnp.arange(paths.shape[1]) == last, paths, -1)
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


@flax.struct.dataclass
class LexicalPlan:
  """The lexical plan of a search, as data (editing it does not recompile).

  lexical: the documents' term sets (gr/model/lexical.py); sequences
  [S, L] every docid (EOS then PAD) and documents [S] its document (-1 =
  padding row); weight: scalar, the plan's weight beta against the
  model's log-probs; head: the query tokens' trained weights
  (lexical_lib.TermWeightHead over the encoder states), None = 1 each;
  guided (static): the look-ahead, each node's potential the best score
  beneath it; False (the ablation): a docid gains its document's score
  only when it ends, so the beams are the model's, reranked.
  """

  lexical: lexical_lib.LexicalIndex
  sequences: jax.Array
  documents: jax.Array
  weight: jax.Array
  head: Optional[lexical_lib.TermWeightHead] = None
  guided: bool = flax.struct.field(pytree_node=False, default=True)

  def document_scores(
    self, tokens: jax.Array, states: Optional[jax.Array] = None
  ) -> jax.Array:
    """Queries tokens [B, Li] (and their encoder states [B, Li, E], which
    a plan with a head needs) -> [B, N] lexical scores (unweighted)."""
    if self.head is None:
      return lexical_lib.document_scores(self.lexical, tokens)
    if states is None:
      raise ValueError("a plan with a term-weight head needs the states")
    return lexical_lib.document_scores(
      self.lexical,
      tokens,
      self.head.token_weights(states),
      self.head.expansion,
      states,
    )

  def potential(
    self,
    arrays: trie_lib.TrieArrays,
    tokens: jax.Array,
    states: Optional[jax.Array] = None,
  ) -> jax.Array:
    """[B, C] weight * the best lexical score beneath each trie node."""
    scores = self.weight * self.document_scores(tokens, states)
    return node_potentials(
      arrays, self.sequences, self.documents, scores, not self.guided
    )


def lexical_plan(
  lexical: lexical_lib.LexicalIndex,
  sequences,
  documents,
  weight: float,
  head: Optional[lexical_lib.TermWeightHead] = None,
  guided: bool = True,
) -> LexicalPlan:
  """A `LexicalPlan` of docid `sequences` (lists, each ending in EOS) of
  `documents` [S] (head: the query tokens' weights, None = 1 each;
  guided: as LexicalPlan.guided)."""
  return LexicalPlan(
    lexical=lexical,
    sequences=jnp.asarray(batching.pad_sequences(sequences)),
    documents=jnp.asarray(np.asarray(documents, np.int32)),
    weight=jnp.asarray(weight, jnp.float32),
    head=head,
    guided=guided,
  )


@functools.partial(jax.jit, static_argnames="vocab_size")
def first_token_bias(
  plan: LexicalPlan,
  arrays: trie_lib.TrieArrays,
  tokens: jax.Array,
  vocab_size: int,
) -> jax.Array:
  """[B, V] the plan's bonus of every first token for queries tokens
  [B, Li] (0 for tokens that start no docid). For atomic docids it is the
  whole plan: weight * lexical[document]."""
  potential = plan.potential(arrays, tokens)  # [B, C]
  children = trie_lib.root_children(arrays, vocab_size)[1]  # [V]
  bonus = jnp.take(potential, jnp.maximum(children, 0), axis=1)
  return jnp.where(children[None, :] >= 0, bonus, 0.0)


WEIGHT_FILE = "lexical_weight.json"
WEIGHT_FORMAT = "gr.lexical_weight.v1"


def save_weight(
  run_dir: str, selection: dict, step: Optional[int] = None
) -> None:
  """Writes the plan's chosen weight (a `LexicalSelection.choose` record:
  {"split", "chosen", "MRR@10"}) to run_dir/lexical_weight.json, so that
  a served run scores as the evaluated one did. inf is written "inf".
  step: the checkpoint chosen on the same split (early stopping; 0 = the
  warm start), which a served run should load; None: the latest."""
  chosen = float(selection["chosen"])
  record = {
    "format": WEIGHT_FORMAT,
    "weight": "inf" if np.isinf(chosen) else chosen,
    "split": selection["split"],
    "MRR@10": {str(k): v for k, v in selection["MRR@10"].items()},
  }
  if step is not None:
    record["step"] = int(step)
  with atomic_io.atomic_open(os.path.join(run_dir, WEIGHT_FILE)) as f:
    json.dump(record, f, indent=1)


def _read_record(run_dir: str) -> tuple[str, Optional[dict]]:
  """(path, the weight file's record checked for its format; None: no
  file)."""
  path = os.path.join(run_dir, WEIGHT_FILE)
  if not os.path.exists(path):
    return path, None
  with open(path) as f:
    try:
      record = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not JSON ({e})") from e
  if not isinstance(record, dict) or record.get("format") != WEIGHT_FORMAT:
    raise ValueError(f"{path}: not a {WEIGHT_FORMAT} record")
  return path, record


def load_step(run_dir: str) -> Optional[int]:
  """The checkpoint step `save_weight` recorded (None: none recorded)."""
  path, record = _read_record(run_dir)
  if record is None:
    return None
  _weight_of(path, record)  # the whole record is checked
  step = record.get("step")
  if step is not None and (
    isinstance(step, bool) or not isinstance(step, int) or step < 0
  ):
    raise ValueError(
      f"{path}: field 'step' must be an integer >= 0, got {step!r}"
    )
  return step


def load_weight(run_dir: str) -> Optional[float]:
  """The weight `save_weight` wrote (None: no file, so no plan).

  Raises:
    ValueError: naming the file, when it is not such a record.
  """
  path, record = _read_record(run_dir)
  return None if record is None else _weight_of(path, record)


def _weight_of(path: str, record: dict) -> float:
  """The record's weight, checked (errors name `path`)."""
  weight = record.get("weight")
  if weight == "inf":
    return float("inf")
  if isinstance(weight, bool) or not isinstance(weight, (int, float)):
    raise ValueError(f"{path}: field 'weight' must be a number or 'inf'")
  if not np.isfinite(weight) or weight < 0:
    raise ValueError(f"{path}: field 'weight' must be >= 0, got {weight}")
  return float(weight)
