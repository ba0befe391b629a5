"""Replay trains on old documents only (issue 22 item 9, second half).

An update's mixtures (gr/continual's update_mixtures: `_update_mixtures` in
update.py before the package's split, `replay.update_mixtures` after) put
the new documents in one part and what the strategy replays in another.
Replay drawn from the new documents instead of the old ones passed every
test (test_dynamic checks only the part sizes). Here the parts handed to
`register_update_mixture` are captured and every replay example's target
must be an old document's docid (and every new-part target a new one's),
for experience and generative replay, with and without a per-batch budget.
"""

import importlib

import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.index import artifact as index_lib
from gr.index import vocab as vocab_lib

OLD = {
  f"old{i}": f"old body {i} about river stone and harbor lights. more text."
  for i in range(6)
}
NEW = {
  f"new{i}": f"new body {i} about glacier meadow and amber. more text here."
  for i in range(3)
}


def _continual(name: str):
  """`name` from the module of gr/continual that defines it (the package
  is being split: replay / generators, else update)."""
  for module in ("replay", "generators", "strategies", "update"):
    try:
      return getattr(importlib.import_module(f"gr.continual.{module}"), name)
    except (ImportError, AttributeError):
      continue
  raise AttributeError(f"gr.continual has no {name}")


def update_mixtures_fn():
  try:
    return importlib.import_module("gr.continual.replay").update_mixtures
  except (ImportError, AttributeError):
    return importlib.import_module("gr.continual.update")._update_mixtures  # pylint: disable=protected-access


def documents(texts):
  return {d: beir.Document(d, "", t) for d, t in texts.items()}


@pytest.fixture(scope="module")
def update_index(tmp_path_factory):
  """An index whose table holds OLD (trained) then NEW (assigned online)."""
  scheme = docids_lib.get_scheme("naive")
  table = scheme.assign(documents(OLD))
  table = scheme.assign_new(table, documents(NEW))
  return index_lib.build_index(
    table,
    list(OLD.values()) * 3,
    str(tmp_path_factory.mktemp("replay_index")),
    vocab_size=64,
  )


@pytest.mark.parametrize(
  "strategy,per_batch",
  [
    ("experience_replay", 0),
    ("experience_replay", 2),
    ("generative_replay", 0),
    ("generative_replay", 2),
  ],
)
def test_replay_targets_are_old_documents_docids_only(
  update_index, monkeypatch, strategy, per_batch
):
  update_mixtures = update_mixtures_fn()
  module = importlib.import_module(update_mixtures.__module__)
  parts_seen = {}

  def capture(name, index, parts, rates):
    del index, rates
    for part, examples in parts.items():
      parts_seen.setdefault(part, []).extend(examples)
    return f"{name}.{len(parts_seen)}"

  monkeypatch.setattr(module, "register_update_mixture", capture)
  corpus = documents({**OLD, **NEW})
  queries = {f"q_{d}": f"where is {d}" for d in OLD}
  memory = beir.BeirDataset(
    corpus, queries, {"train": {f"q_{d}": {d: 1} for d in OLD}}
  )
  source = _continual("ReplaySource")(_continual("TextPseudoQueries")())
  update_mixtures(
    "replay_test",
    _continual("get_strategy")(strategy, replay_per_batch=per_batch),
    update_index,
    memory,
    documents(NEW),
    source,
  )
  table, vocab = update_index.table, update_index.vocab

  def targets_of(doc_ids):
    return {
      tuple(vocab.encode_docid(docid) + [vocab_lib.EOS_ID])
      for d in doc_ids
      for docid in table.docids_of[d]
    }

  old_targets, new_targets = targets_of(OLD), targets_of(NEW)
  assert old_targets.isdisjoint(new_targets)
  replay = parts_seen["replay"]
  assert replay, "the strategy replays: its part has examples"
  for example in replay:
    assert example.doc_id in OLD, example
    assert tuple(example.targets) in old_targets, example
  assert {e.doc_id for e in replay} == set(OLD)
  for example in parts_seen["new"]:
    assert example.doc_id in NEW and tuple(example.targets) in new_targets
