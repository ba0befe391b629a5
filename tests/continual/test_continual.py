"""Tests for gr/continual/update.py: updates, deletions, strategies, crash safety."""

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from gr.continual import dynamic_cells
from gr.continual import training
from gr.continual import strategies
from gr.continual import replay as replay_lib
from gr.continual import generators
from gr.train import checkpoints
from gr.continual import update as continual
from gr.index import artifact as index_lib
from gr.model import models
from gr.model import network
from gr.search import retrieval
from gr.train import optimizer as optimizer_lib
from gr.continual import versions
from gr.data import beir

REPO = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
WORDS = (
  "amber basalt cobalt delta ember fjord garnet harbor iris jade kelp "
  "lumen marsh nectar onyx pylon quartz raven sable tundra umber "
  "vapor willow xenon yarrow zephyr"
).split()
SETTINGS = strategies.TrainSettings(
  batch_size=16,
  input_length=32,
  log_every=1000,
  seed=0,
  optimizer=optimizer_lib.OptimizerConfig(learning_rate=1e-2),
)
INITIAL_STEPS, UPDATE_STEPS = 60, 80


def make_model():
  return models.EncoderDecoderModel(
    network.T5Config.tiny(
      128, num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0
    )
  )


def make_docs(prefix: str, count: int, seed: int) -> dict[str, beir.Document]:
  rng = np.random.default_rng(seed)
  return {
    f"{prefix}{i}": beir.Document(
      f"{prefix}{i}",
      f"title {prefix}{i}",
      " ".join(rng.choice(WORDS, 12)) + ". " + " ".join(rng.choice(WORDS, 8)),
    )
    for i in range(count)
  }


OLD_DOCS = make_docs("old", 12, 0)  # naive docids 0..15: same length
NEW_DOCS = make_docs("new", 4, 1)


def initial_dataset() -> beir.BeirDataset:
  queries = {f"q{d}": doc.text.split(".")[0] for d, doc in OLD_DOCS.items()}
  qrels = {"train": {f"q{d}": {d: 1} for d in OLD_DOCS}}
  return beir.BeirDataset(dict(OLD_DOCS), queries, qrels)


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
  """A committed version 0 (naive docids) in base/model, base/index."""
  base = tmp_path_factory.mktemp("continual")
  continual.build_initial_version(
    model_dir=str(base / "model"),
    index_dir=str(base / "index"),
    model=make_model(),
    dataset=initial_dataset(),
    scheme="naive",
    scheme_params={},
    vocab_size=200,
    train_steps=INITIAL_STEPS,
    settings=SETTINGS,
    generator=generators.TextPseudoQueries(),
  )
  return base


def copy_version(initial, dest) -> tuple[str, str]:
  shutil.copytree(initial / "model", dest / "model")
  shutil.copytree(initial / "index", dest / "index")
  return str(dest / "model"), str(dest / "index")


@pytest.fixture(scope="module")
def searchers():
  return dynamic_cells.SearcherCache(
    retrieval.SearchConfig(beam_size=16, top_k=16), SETTINGS.input_length
  )


@pytest.fixture(scope="module")
def updated(initial, tmp_path_factory):
  """Version 0 + NEW_DOCS with new_only training."""
  dest = tmp_path_factory.mktemp("updated")
  model_dir, index_dir = copy_version(initial, dest)
  result = continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=make_model(),
    new_documents=NEW_DOCS,
    strategy="new_only",
    train_steps=UPDATE_STEPS,
    settings=SETTINGS,
  )
  return model_dir, index_dir, result


def test_initial_version_is_complete(initial):
  version = versions.load_version(str(initial / "model"))
  assert version.step == INITIAL_STEPS and version.gradient_updates == 60
  assert set(version.index.table.docids_of) == set(OLD_DOCS)
  assert set(version.memory.corpus) == set(OLD_DOCS)
  assert len(version.memory.qrels["train"]) == len(OLD_DOCS)
  published = index_lib.load_index(str(initial / "index"))
  assert published.table == version.index.table


def test_update_adds_documents_the_model_returns(updated, searchers):
  model_dir, index_dir, result = updated
  version = versions.load_version(model_dir)
  assert result.step == version.step == INITIAL_STEPS + UPDATE_STEPS
  assert version.gradient_updates == INITIAL_STEPS + UPDATE_STEPS
  assert set(NEW_DOCS) <= set(version.index.table.docids_of)
  assert set(NEW_DOCS) <= set(version.memory.corpus)
  assert index_lib.load_index(index_dir).table == version.index.table
  searcher = searchers.get(make_model(), version)
  rankings = searcher.search([doc.text for doc in NEW_DOCS.values()])
  top1 = [ranking[0][0] for ranking in rankings]
  assert sum(t == d for t, d in zip(top1, NEW_DOCS)) >= 3, top1


def test_deleted_documents_never_come_back(updated, searchers, tmp_path):
  model_dir, index_dir = copy_version(
    type(tmp_path)(os.path.dirname(updated[0])), tmp_path
  )
  doomed = ["old0", "new1"]
  continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=make_model(),
    deleted_doc_ids=doomed,
    strategy="new_only",
    settings=SETTINGS,
  )
  more = make_docs("more", 3, 2)
  continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=make_model(),
    new_documents=more,
    strategy="trie_only",
    settings=SETTINGS,
  )
  version = versions.load_version(model_dir)
  table = version.index.table
  assert not set(doomed) & set(table.docids_of)
  assert not set(doomed) & set(version.memory.corpus)
  assert not set(table.docid_to_doc) & table.retired_docids
  # Beam >= number of documents: every document the trie allows comes back.
  searcher = searchers.get(make_model(), version)
  queries = [doc.text for doc in {**OLD_DOCS, **NEW_DOCS}.values()]
  returned = {d for ranking in searcher.search(queries) for d, _ in ranking}
  assert returned and not returned & set(doomed)
  assert set(more) <= set(table.docids_of)


def test_trie_only_keeps_params(initial, tmp_path):
  model_dir, index_dir = copy_version(initial, tmp_path)
  before = versions.load_version(model_dir)
  result = continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=make_model(),
    new_documents=NEW_DOCS,
    strategy="trie_only",
    settings=SETTINGS,
  )
  after = versions.load_version(model_dir)
  assert result.gradient_updates == 0 and after.step == before.step + 1
  assert after.gradient_updates == before.gradient_updates
  jax.tree.map(np.testing.assert_array_equal, before.params, after.params)


def test_extend_vocab_rows_appends_and_keeps_rows():
  params = {
    "token_embedder": {"embedding": np.ones((4, 3), np.float32)},
    "decoder": {"logits_dense": {"kernel": np.ones((3, 4), np.float32)}},
  }
  grown = models.extend_vocab_rows(params, 6, seed=0)
  assert grown["token_embedder"]["embedding"].shape == (6, 3)
  assert grown["decoder"]["logits_dense"]["kernel"].shape == (3, 6)
  np.testing.assert_array_equal(grown["token_embedder"]["embedding"][:4], 1)
  assert models.vocab_rows(grown) == 6
  with pytest.raises(ValueError, match="appended"):
    models.extend_vocab_rows(grown, 5)


def test_replay_examples_per_strategy(initial):
  version = versions.load_version(str(initial / "model"))
  old = list(OLD_DOCS)
  generator = generators.TextPseudoQueries(num_sentences=1, num_spans=1)

  def examples(name):
    return replay_lib.replay_examples(
      strategies.get_strategy(name),
      version.index,
      version.memory,
      old,
      generator,
    )

  assert examples("new_only") == []
  experience = examples("experience_replay")
  assert {e.query_id for e in experience} == {""} | {f"q{d}" for d in old}
  generative = examples("generative_replay")
  assert generative and {e.doc_id for e in generative} == set(old)
  assert all(e.query_id == "" for e in generative)


def test_get_strategy_overrides_and_errors():
  assert strategies.get_strategy("sam").sam_rho > 0
  s = strategies.get_strategy(
    "experience_replay", replay_ratio=0.5, sam_rho=None
  )
  assert s.replay_ratio == 0.5 and s.replay == "experience"
  with pytest.raises(ValueError, match="unknown strategy"):
    strategies.get_strategy("nope")
  with pytest.raises(ValueError, match="replay"):
    strategies.Strategy("x", replay="magic")


KILLED_UPDATE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {repo!r})
    from gr.train import checkpoints
    from gr.continual import training
    from gr.continual import update as continual
    from gr.continual import versions
    from tests.continual import test_continual as t

    def die(*args, **kwargs):
      os.kill(os.getpid(), signal.SIGKILL)

    def half_then_die(source, dest):
      real_copy(source, dest)  # then lose a file, as if cut off mid-copy
      os.remove(os.path.join(dest, "files", "continual.json"))
      die()

    real_copy, real_commit = checkpoints.write_artifact, versions.commit
    point = sys.argv[3]
    if point == "train":
      training.train_params = die
    elif point == "artifact":
      checkpoints.write_artifact = half_then_die
    elif point == "publish":
      def commit_then_die(*args, **kwargs):
        real_commit(*args, **kwargs)
        die()
      versions.commit = commit_then_die
    continual.update_index(
        model_dir=sys.argv[1], index_dir=sys.argv[2], model=t.make_model(),
        new_documents=t.NEW_DOCS, train_steps=5,
        strategy="new_only" if point == "train" else "trie_only",
        settings=t.SETTINGS)
    """)


class Crash(Exception):
  pass


def _crash_at(point: str, monkeypatch) -> None:
  """Makes the next update fail at `point` (in-process stand-in for a kill)."""

  def crash(*args, **kwargs):
    raise Crash(point)

  if point == "train":
    monkeypatch.setattr(training, "train_params", crash)
  elif point == "artifact":
    real_copy = checkpoints.write_artifact

    def copy_half(source, dest):
      real_copy(source, dest)
      os.remove(os.path.join(dest, "files", "continual.json"))
      crash()

    monkeypatch.setattr(checkpoints, "write_artifact", copy_half)
  else:
    real_commit = versions.commit

    def commit_then_crash(*args, **kwargs):
      real_commit(*args, **kwargs)
      crash()

    monkeypatch.setattr(versions, "commit", commit_then_crash)


def _check_after_crash(point, model_dir, index_dir, before):
  """The latest version is complete: the old one, or (after the commit)
  the new one, whose index the next publish puts back in index_dir."""
  version = versions.load_version(model_dir)  # verifies every artifact
  if point == "publish":
    assert set(NEW_DOCS) <= set(version.index.table.docids_of)
    assert index_lib.load_index(index_dir).table == before.index.table
    versions.publish_index(version.index, index_dir)
  else:
    assert version.step == before.step
    assert version.index.table == before.index.table
  assert index_lib.load_index(index_dir).table == version.index.table
  assert checkpoints.load_artifact(model_dir, version.step).is_dir()


@pytest.mark.parametrize("point", ["train", "artifact", "publish"])
def test_failed_update_leaves_a_loadable_version(
  initial, tmp_path, point, monkeypatch
):
  model_dir, index_dir = copy_version(initial, tmp_path)
  before = versions.load_version(model_dir)
  _crash_at(point, monkeypatch)
  with pytest.raises(Crash):
    continual.update_index(
      model_dir=model_dir,
      index_dir=index_dir,
      model=make_model(),
      new_documents=NEW_DOCS,
      train_steps=5,
      settings=SETTINGS,
      strategy="new_only" if point == "train" else "trie_only",
    )
  monkeypatch.undo()
  _check_after_crash(point, model_dir, index_dir, before)
  # The next update starts from the loadable version and succeeds.
  continual.update_index(
    model_dir=model_dir,
    index_dir=index_dir,
    model=make_model(),
    deleted_doc_ids=["old1"],
    strategy="trie_only",
    settings=SETTINGS,
  )
  assert "old1" not in versions.load_version(model_dir).index.table.docids_of


@pytest.mark.slow
def test_killed_update_leaves_a_loadable_version(initial, tmp_path):
  script = tmp_path / "killed_update.py"
  script.write_text(KILLED_UPDATE.format(repo=REPO))
  env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
  dirs, procs = {}, {}
  for point in ("train", "artifact", "publish"):
    (tmp_path / point).mkdir()
    dirs[point] = copy_version(initial, tmp_path / point)
    procs[point] = subprocess.Popen(
      [sys.executable, str(script), *dirs[point], point],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
    )
  before = versions.load_version(str(initial / "model"))
  for point, proc in procs.items():
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == -9, (point, stderr.decode()[-2000:])
    model_dir, index_dir = dirs[point]
    _check_after_crash(point, model_dir, index_dir, before)


def test_updates_train_on_the_configured_mesh(initial):
  """TrainSettings' ('data', 'model') mesh: 4 x 2 of the 8 fake devices
  shards the params over 'model' and gives the 8 x 1 mesh's params."""
  version = versions.load_version(str(initial / "model"))
  mixture = replay_lib.initial_mixture(
    "mesh",
    version.memory,
    version.index,
    generators.TextPseudoQueries(),
    dict(replay_lib.INITIAL_TASK_RATES),
  )
  model = models.fit_vocab(make_model(), version.index.vocab.vocab_size)

  def trained(mesh_data, mesh_model):
    settings = dataclasses.replace(
      SETTINGS,
      mesh_data=mesh_data,
      mesh_model=mesh_model,
      # eps 1: updates ~ lr * gradient, not Adam's sign of a tiny one
      # (which a different reduction order may flip).
      optimizer=optimizer_lib.OptimizerConfig(learning_rate=1.0, eps=1.0),
    )
    return training.train_params(
      model,
      mixture,
      steps=2,
      settings=settings,
      sam_rho=0.0,
      init_params=version.params,
      target_length=version.index.max_docid_length(),
    )

  one, two = trained(8, 1), trained(4, 2)
  embedding = two["token_embedder"]["embedding"]
  assert dict(embedding.sharding.mesh.shape) == {"data": 4, "model": 2}
  assert not embedding.sharding.is_fully_replicated
  moved = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(version.params))
  )
  assert moved > 1e-3  # the steps move the params far beyond the atol
  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(two), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
