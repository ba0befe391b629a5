"""The next growth of a served index, compiled ahead: of the docid rows,
the lexical plan's capacities, or the trie's node capacity.

When an online add needs a docid row past the model's embedding rows,
`ServedIndex._grown_for` grows them (gr/serve/online_rows.py); when the
plan's padding cannot hold the live documents it is built again at doubled
capacities (gr/serve/served_plan.py); when the trie needs a node slot past
its capacity it doubles it (gr/index/docid_trie.py). Each time every search
bucket compiles for the new shapes before the grown state goes live (about
45 s for the demo's 12 buckets on 2 cores), while that add, and every add
behind it, waits. `GrowthAhead` moves the compile off the add:

  - rows: once fewer than `prepare_growth_below` of the docid rows are
    spare, a thread compiles the grown model's search. A rows growth keeps
    the trie, slots and plan where the trie's arrays hold the new
    vocabulary (`DocidTrie.holds_vocab`), so those shapes stay.
  - plan: once an eighth of the room its last growth left is used
    (`ServedPlan.growth_due`), the next growth's capacities are fixed
    (`growth_capacities`) and a thread compiles the search for a plan of
    those shapes; the growth builds at them.
  - trie: once `prepare_trie_above` of the trie's node slots are used, a
    thread compiles for arrays of twice the slots (`DocidTrie.slot_use`).
    A level whose width outgrows its capacity is not foreseen.

The growth then takes that search instead of compiling. The thread
compiles on zero arrays of the shapes the growth will have (committed to
the device as the live arrays are, since a jitted function compiles again
for a committed argument where it had an uncommitted one). One preparation
runs at a time; a growth takes a search compiled ahead only where the
state it makes has the very shapes and search key it was compiled for,
and any growth resets every preparation. A preparation that misses only
costs that growth the compile, as before.
"""

import dataclasses
import logging
import threading
import time
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gr import partitioning
from gr.index import trie as trie_lib
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
  docstring); it uses LiveIndex's live state, plan, trie, locks and
  warm_up. Growths: "rows" (the docid rows), "plan" (the plan's
  capacities), "trie" (the trie's node capacity)."""

  # Once fewer than this share of the docid rows is spare, the next rows
  # growth's searches compile in the background (0: off). The growth
  # itself comes at about 0.2 (online_rows.SPARE_SHARE of the ids in use),
  # so on the demo index about 1,500 adds lie between them.
  prepare_growth_below = 0.4
  # Once this share of the trie's node slots is used, its next node growth
  # (to twice the slots) compiles in the background; it comes when all are.
  prepare_trie_above = 0.75

  def __init__(self, *args, **kwargs):
    self._preparing: Optional[threading.Thread] = None
    self._preparing_kind: Optional[str] = None
    self._started: dict = {}  # growth -> what its preparation is for
    # growth -> (search key, trie shapes, plan shapes, search) compiled
    self._ready: dict = {}
    super().__init__(*args, **kwargs)

  def _maybe_prepare_growth(self) -> None:
    """After an add: starts compiling the first growth that is due and not
    prepared yet, in the background (one at a time)."""
    if self._preparing is not None and self._preparing.is_alive():
      return  # a later add starts the next one
    for kind, target in self._growths_due():
      if self._started.get(kind) != target:
        self._started[kind] = target
        self._start_preparing(kind, target)
        return

  def _growths_due(self):
    """(growth, its target) for each growth due to be compiled ahead: the
    grown model config, the plan's next capacities, the trie's next node
    capacity."""
    index, rows = self._live.index, self.model.config.vocab_size
    base = index.vocab.base_size
    spare = rows - index.vocab.vocab_size
    if spare < self.prepare_growth_below * max(rows - base, 1):
      grown = self.model.with_vocab_size(
        online_rows.grown_rows(self.checkpoint_rows, base, rows + 1)
      )
      # Where the trie cannot keep its arrays, the growth rebuilds it.
      if self._trie.holds_vocab(grown.config.vocab_size):
        yield "rows", grown.config
    if self._plan is not None and self._plan.growth_due(self._live.slots):
      yield "plan", self._plan.growth_capacities(self._live.slots)
    used, capacity = self._trie.slot_use
    if used >= self.prepare_trie_above * capacity:
      yield "trie", 2 * capacity

  def _start_preparing(self, kind: str, target: Any) -> None:
    """Starts the thread that compiles the search for the live shapes as
    growth `kind` to `target` changes them."""
    with self._dispatch_lock:  # shapes only: adds donate the live arrays
      live = self._live
      arrays = (live.params, live.trie_arrays, live.plan)
      shapes_of = jax.eval_shape(lambda tree: tree, arrays)
      # A jitted function compiles again for a committed argument where it
      # had an uncommitted one: the zeros copy each live array's.
      committed = [bool(a.committed) for a in jax.tree.leaves(arrays)]
    params, trie, plan = shapes_of
    model_config, rows = self.model.config, None
    if kind == "rows":
      model_config, rows = target, target.vocab_size
    elif kind == "plan":
      plan = served_plan.grown_shapes(plan, target)
    else:
      trie = trie_lib.shapes_at(trie, target)
    self._preparing_kind = kind
    self._preparing = threading.Thread(
      target=self._prepare_growth,
      args=(kind, model_config, live, (params, trie, plan), committed, rows),
      name=f"prepare-{kind}-growth",
      daemon=True,
    )
    self._preparing.start()

  def _prepare_growth(
    self,
    kind: str,
    model_config: models.ModelConfig,
    live: LiveState,
    shapes_of: Any,
    committed: list[bool],
    rows: Optional[int],
  ) -> None:
    """Compiles every bucket of a new search of `model_config` on zero
    arrays of `shapes_of` (params, trie arrays, plan; device-committed
    where `committed` says), the params grown to `rows` as a rows growth
    grows them, while adds and searches go on; the growth `kind` then
    takes it (`_search_ahead`). A failure here only costs that growth the
    compile."""
    started = time.time()
    params, trie_arrays, plan = _zeros_like(shapes_of, committed)
    try:
      if rows is not None:
        params = online_rows.grow_params(params, rows)
      model = self.model.with_vocab_size(model_config.vocab_size)
      key = self._search_key(live.index, model_config)
      search = live_state.build_search(key)
      self.warm_up(dataclasses.replace(
        live,
        params=partitioning.place(params,
          partitioning.param_specs(model, self.mesh), self.mesh),
        trie_arrays=self._replicated(trie_arrays),
        plan=None if plan is None else self._replicated(plan),
        search=search,
      ))  # fmt: skip
    except Exception:  # pylint: disable=broad-except
      logging.exception("compiling the next %s growth ahead failed", kind)
      return
    ready = (key, live_state.shapes(trie_arrays), live_state.shapes(plan))
    self._ready[kind] = (*ready, search)
    logging.info(
      "next %s growth compiled ahead in %.1f s", kind, time.time() - started
    )

  def _search_ahead(self, kind: str, index, trie_arrays, plan) -> Optional[Any]:
    """The search compiled ahead for growth `kind` (waiting for it if it is
    being compiled), if it was for the current model over `index`,
    `trie_arrays` and `plan` (the grown state), else None."""
    if kind not in self._started:
      return None
    self._finish_preparing(kind)
    ready = self._ready.get(kind)
    key = (
      self._search_key(index),
      live_state.shapes(trie_arrays),
      live_state.shapes(plan),
    )
    if ready is None or ready[:3] != key:
      logging.info("the %s growth compiled ahead was for other shapes", kind)
      return None
    return ready[3]

  def _finish_preparing(self, kind: Optional[str] = None) -> None:
    """Waits for a growth being compiled ahead: any, or only of `kind`."""
    if self._preparing is not None and kind in (None, self._preparing_kind):
      self._preparing.join()

  def _growth_done(self) -> None:
    """After any growth: what was compiled ahead is for the old shapes or
    model, so later adds prepare the next growths again (a thread still
    compiling one is not waited for: its search would be stale)."""
    self._started.clear()
    self._ready.clear()

  def wait_for_updates(self) -> None:
    """Returns once no update is being applied, persisted, or compiled
    ahead."""
    self._finish_preparing()
    super().wait_for_updates()
