"""The next growth of a served index, compiled ahead: of the docid rows, or
of the lexical plan's capacities.

When an online add needs a docid row past the model's embedding rows,
`ServedIndex._grown_for` grows them (gr/serve/online_rows.py), and when
the plan's padding cannot hold the live documents it is built again at
doubled capacities (gr/serve/served_plan.py). Either way every search
bucket compiles for the new shapes before the grown state goes live (about
45 s for the demo's 12 buckets on 2 cores), while that add, and every add
behind it, waits. `GrowthAhead` moves the compile off the add:

  - rows: once fewer than `prepare_growth_below` of the docid rows are
    spare, an add starts a thread that compiles every bucket of the grown
    model's search. The process's search registry
    (gr/serve/live_state.py) then hands that search to the add that grows
    the rows. A rows growth keeps the trie, slots and plan where the
    trie's arrays hold the new vocabulary (`DocidTrie.holds_vocab`), so
    the shapes compiled ahead are the ones it uses.
  - plan: once half the room of the plan's last build is used
    (`ServedPlan.growth_due`), an add fixes the next growth's capacities
    (`growth_capacities`) and a thread compiles the live model's search
    for a plan of those shapes; the growth builds at them and takes that
    search.

The thread compiles on zero arrays of the shapes the growth will have
(committed to the device as the live arrays are, since a jitted function
compiles again for a committed argument where it had an uncommitted one).
One preparation runs at a time; any other growth in between (the trie's
capacity, or the other kind) resets it, and the growth then compiles as
before. Nothing is wrong when a preparation misses: it only costs that
add the compile.
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
from gr.serve import served_plan
from gr.serve.live_state import LiveState


def _zeros_like(shapes: Any, committed: list[bool]) -> Any:
  """Zero arrays of a tree of shapes (jax.ShapeDtypeStruct leaves), each
  committed to the device where `committed` (by leaf) says."""
  device = jax.devices()[0]
  leaves, tree = jax.tree.flatten(shapes)
  zeros = [jnp.zeros(a.shape, a.dtype) for a in leaves]
  return jax.tree.unflatten(
    tree,
    [jax.device_put(z, device) if c else z for z, c in zip(zeros, committed)],
  )


class GrowthAhead:
  """ServedIndex's part that compiles the next growth ahead (module
  docstring); it uses LiveIndex's live state, plan, locks and warm_up."""

  # Once fewer than this share of the docid rows is spare, the next rows
  # growth's searches compile in the background (`_prepare_growth`; 0: off).
  # The growth itself comes at about 0.2 (online_rows.SPARE_SHARE of the
  # ids in use), so on the demo index about 1,500 adds lie between them.
  prepare_growth_below = 0.4
  _preparing: Optional[threading.Thread] = None
  _prepared_config: Optional[models.ModelConfig] = None
  # The plan growth being compiled ahead: its capacities, and once
  # compiled, (model config, trie shapes, plan shapes, search).
  _plan_capacities: Optional[tuple] = None
  _plan_search: Optional[tuple] = None

  def _maybe_prepare_growth(self) -> None:
    """After an add: starts compiling the next rows growth in the
    background once fewer than `prepare_growth_below` of the docid rows
    are spare (once per size, where that growth will keep the trie and
    plan: `_grown_for`), else the plan's next growth once it is due."""
    if self._preparing is not None and self._preparing.is_alive():
      return  # a later add starts the next one
    grown = self._rows_growth_due()
    if grown is not None:
      self._prepared_config = grown.config
      self._start_preparing(grown.config, rows=grown.config.vocab_size)
    elif self._plan is not None and self._plan.growth_due(self._live.slots):
      capacities = self._plan.growth_capacities(self._live.slots)
      if capacities != self._plan_capacities:
        self._plan_capacities = capacities
        self._start_preparing(self.model.config, plan_capacities=capacities)

  def _rows_growth_due(self) -> Optional[models.EncoderDecoderModel]:
    """The model of the next rows growth, if it is due to be compiled
    ahead and not yet prepared."""
    index, rows = self._live.index, self.model.config.vocab_size
    base = index.vocab.base_size
    if rows - index.vocab.vocab_size >= self.prepare_growth_below * max(
      rows - base, 1
    ):
      return None
    grown = self.model.with_vocab_size(
      online_rows.grown_rows(self.checkpoint_rows, base, rows + 1)
    )
    if grown.config == self._prepared_config or not self._trie.holds_vocab(
      grown.config.vocab_size
    ):
      return None
    return grown

  def _start_preparing(
    self,
    model_config: models.ModelConfig,
    rows: Optional[int] = None,
    plan_capacities: Optional[tuple] = None,
  ) -> None:
    """Starts the thread that compiles the search of `model_config` for
    the live shapes, the params grown to `rows` or the plan built at
    `plan_capacities` (either or neither)."""
    with self._dispatch_lock:  # shapes only: adds donate the live arrays
      live = self._live
      arrays = (live.params, live.trie_arrays, live.plan)
      shapes_of = jax.eval_shape(lambda tree: tree, arrays)
      # A jitted function compiles again for a committed argument where it
      # had an uncommitted one: the zeros copy each live array's.
      committed = [bool(a.committed) for a in jax.tree.leaves(arrays)]
    if plan_capacities is not None:
      plan = served_plan.grown_shapes(shapes_of[2], plan_capacities)
      shapes_of = (*shapes_of[:2], plan)
    self._preparing = threading.Thread(
      target=self._prepare_growth,
      args=(model_config, live, shapes_of, committed, rows),
      name="prepare-growth",
      daemon=True,
    )
    self._preparing.start()

  def _prepare_growth(
    self,
    model_config: models.ModelConfig,
    live: LiveState,
    shapes_of: Any,
    committed: list[bool],
    rows: Optional[int],
  ) -> None:
    """Compiles every bucket of the search of `model_config` on zero
    arrays of `shapes_of` (params, trie arrays, plan; device-committed
    where `committed` says), the params grown to `rows` as a rows growth
    grows them, while adds and searches go on. The add that grows then
    finds them compiled: a rows growth gets this search from the process's
    search registry, a plan growth from `_plan_search`. A failure here
    only costs that add the compile."""
    started = time.time()
    params, trie_arrays, plan = _zeros_like(shapes_of, committed)
    try:
      if rows is not None:
        params = online_rows.grow_params(params, rows)
      model = self.model.with_vocab_size(model_config.vocab_size)
      search = self._search_fn(
        live.index, fresh=True, model_config=model_config
      )
      self.warm_up(dataclasses.replace(
        live,
        params=partitioning.place(params,
          partitioning.param_specs(model, self.mesh), self.mesh),
        trie_arrays=self._replicated(trie_arrays),
        plan=None if plan is None else self._replicated(plan),
        search=search,
      ))  # fmt: skip
    except Exception:  # pylint: disable=broad-except
      logging.exception("compiling the next growth ahead failed")
      return
    if rows is None:
      self._plan_search = (
        model_config,
        live_state.shapes(trie_arrays),
        live_state.shapes(plan),
        search,
      )
    logging.info(
      "next %s growth compiled ahead in %.1f s",
      "plan" if rows is None else f"rows ({rows})",
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

  def _prepared_plan_search(self, index, trie_arrays, plan) -> Optional[Any]:
    """The search compiled ahead for a plan growth to `plan` over
    `trie_arrays` (waiting for it if it is being compiled), or None."""
    if self._plan_capacities is None:
      return None
    self._finish_preparing()
    ready = self._plan_search
    key = (
      self.model.config,
      live_state.shapes(trie_arrays),
      live_state.shapes(plan),
    )
    if ready is None or ready[:3] != key:
      logging.info("the plan growth compiled ahead was for other shapes")
      return None
    search = self._search_fn(index)  # the registry's: the one compiled
    return search if search is ready[3] else None

  def _prepare_again(self) -> None:
    """The trie or plan shapes changed: what was compiled ahead is for the
    old ones, so a later add prepares the next growth again."""
    self._prepared_config = None
    self._plan_capacities = self._plan_search = None

  def _forget_preparation(self, grown: models.ModelConfig) -> None:
    """After a rows growth to `grown`: waits for a preparation, and drops
    its search if it was for another size (the rows grew further); a plan
    growth prepared for the old rows is stale."""
    self._finish_preparing()
    if self._prepared_config not in (None, grown):
      live_state.forget_searches(self._prepared_config)
    self._plan_capacities = self._plan_search = None
