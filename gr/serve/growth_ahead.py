"""The next rows growth of a served index, compiled ahead.

When an online add needs a docid row past the model's embedding rows,
`ServedIndex._grown_for` grows them (gr/serve/online_rows.py) and every
search bucket compiles for the new shapes before the grown state goes live
(about 45 s for the demo's 12 buckets on 2 cores), while that add waits.
`GrowthAhead` moves the compile off the add: once fewer than
`prepare_growth_below` of the docid rows are spare, an add starts a thread
that compiles every bucket of the grown model's search on zero arrays of
the live shapes (committed to the device as the live arrays are, since a
jitted function compiles again for a committed argument where it had an
uncommitted one). The process's search registry (gr/serve/live_state.py)
then hands that search to the add that grows the rows. A rows growth keeps
the trie, slots and plan where the trie's arrays hold the new vocabulary
(`DocidTrie.holds_vocab`), so the shapes compiled ahead are the ones it
uses. A trie or plan capacity growth in between resets the preparation.
"""

import dataclasses
import logging
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gr import partitioning
from gr.model import models
from gr.serve import live_state
from gr.serve import online_rows
from gr.serve.live_state import LiveState


def _zeros(shapes: Any) -> Any:
  """Zero arrays of a tree of shapes (jax.ShapeDtypeStruct leaves)."""
  return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)


class GrowthAhead:
  """ServedIndex's part that compiles the next rows growth ahead (module
  docstring); it uses LiveIndex's live state, locks and warm_up."""

  # Once fewer than this share of the docid rows is spare, the next rows
  # growth's searches compile in the background (`_prepare_growth`; 0: off).
  # The growth itself comes at about 0.2 (online_rows.SPARE_SHARE of the
  # ids in use), so on the demo index about 1,500 adds lie between them.
  prepare_growth_below = 0.4
  _preparing: Optional[threading.Thread] = None
  _prepared_config: Optional[models.ModelConfig] = None

  def _maybe_prepare_growth(self) -> None:
    """Once fewer than `prepare_growth_below` of the docid rows are spare,
    starts compiling the next rows growth in the background (once per
    size), where that growth will keep the trie and plan (`_grown_for`)."""
    if self._preparing is not None and self._preparing.is_alive():
      return  # a later add starts the next one
    index, rows = self._live.index, self.model.config.vocab_size
    base = index.vocab.base_size
    if rows - index.vocab.vocab_size >= self.prepare_growth_below * max(
      rows - base, 1
    ):
      return
    grown = self.model.with_vocab_size(
      online_rows.grown_rows(self.checkpoint_rows, base, rows + 1)
    )
    if grown.config == self._prepared_config or not self._trie.holds_vocab(
      grown.config.vocab_size
    ):
      return
    self._prepared_config = grown.config
    with self._dispatch_lock:  # shapes only: adds donate the live arrays
      live = self._live
      arrays = (live.params, live.trie_arrays, live.plan)
      shapes_of = jax.eval_shape(lambda tree: tree, arrays)
      # A jitted function compiles again for a committed argument where it
      # had an uncommitted one: the zeros copy each live array's.
      committed = jax.tree.map(lambda a: bool(a.committed), arrays)
    self._preparing = threading.Thread(
      target=self._prepare_growth,
      args=(grown, live, shapes_of, committed),
      name="prepare-growth",
      daemon=True,
    )
    self._preparing.start()

  def _prepare_growth(
    self,
    grown: models.EncoderDecoderModel,
    live: LiveState,
    shapes_of: Any,
    committed: Any,
  ) -> None:
    """Compiles every bucket of the search of `grown` (the model with more
    rows) on zero arrays of the live shapes `shapes_of` (params, trie
    arrays, plan; device-committed where `committed` says), the params
    grown as the growth grows them, while adds and searches go on. The add
    that grows the rows then finds them compiled: the process's search
    registry hands it this search. A failure here only costs that add the
    compile."""
    started = time.time()
    device = jax.devices()[0]
    params, trie_arrays, plan = jax.tree.map(
      lambda zeros, on_device: jax.device_put(zeros, device) if on_device
      else zeros, _zeros(shapes_of), committed)  # fmt: skip
    try:
      params = online_rows.grow_params(params, grown.config.vocab_size)
      self.warm_up(dataclasses.replace(
        live,
        params=partitioning.place(params,
          partitioning.param_specs(grown, self.mesh), self.mesh),
        trie_arrays=self._replicated(trie_arrays),
        plan=None if plan is None else self._replicated(plan),
        search=self._search_fn(live.index, fresh=True,
          model_config=grown.config),
      ))  # fmt: skip
    except Exception:  # pylint: disable=broad-except
      logging.exception("compiling the next rows growth ahead failed")
      return
    logging.info(
      "next rows growth (%d rows) compiled ahead in %.1f s",
      grown.config.vocab_size,
      time.time() - started,
    )

  def _finish_preparing(self) -> None:
    """Waits for a growth being compiled ahead (`_prepare_growth`)."""
    if self._preparing is not None:
      self._preparing.join()

  def wait_for_updates(self) -> None:
    """Returns once no update is being applied, persisted, or compiled
    ahead."""
    self._finish_preparing()
    super().wait_for_updates()

  def _prepare_again(self) -> None:
    """The trie or plan shapes changed: what was compiled ahead is for the
    old ones, so a later add prepares the growth again."""
    self._prepared_config = None

  def _forget_preparation(self, grown: models.ModelConfig) -> None:
    """After a growth to `grown`: waits for a preparation, and drops its
    search if it was for another size (the rows grew further)."""
    self._finish_preparing()
    if self._prepared_config not in (None, grown):
      live_state.forget_searches(self._prepared_config)
