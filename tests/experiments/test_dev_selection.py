"""Choices made on the dev split (gr/experiments/dev_selection.py): the
plan's weight and the early-stopping step, never on test."""

import json
import os

import pytest

from gr.experiments import dev_selection
from gr.search import evaluation


class _FakeSearcher:
  """Ranks doc 'a' first for weight >= `good_from`, else 'b' first; with
  `good` False it always ranks 'b' first."""

  def __init__(self, good_from: float, good: bool = True):
    self.lexical_weight = 0.0
    self.good_from, self.good = good_from, good
    self.searched = []

  def run(self, queries):
    self.searched.append(sorted(queries))
    right = self.good and self.lexical_weight >= self.good_from
    first, second = ("a", "b") if right else ("b", "a")
    return {q: {first: 2.0, second: 1.0} for q in queries}


@pytest.fixture
def folder(tmp_path):
  """Two documents; query qd judged on dev, qt on test (both want 'a')."""
  docs = [{"_id": d, "title": "", "text": f"text {d}"} for d in "ab"]
  (tmp_path / "corpus.jsonl").write_text(
    "".join(json.dumps(d) + "\n" for d in docs)
  )
  queries = [
    {"_id": "qd", "text": "dev query"},
    {"_id": "qt", "text": "test query"},
  ]
  (tmp_path / "queries.jsonl").write_text(
    "".join(json.dumps(q) + "\n" for q in queries)
  )
  qrels = tmp_path / "qrels"
  qrels.mkdir()
  for split, qid in (("dev", "qd"), ("test", "qt")):
    (qrels / f"{split}.tsv").write_text(
      f"query-id\tcorpus-id\tscore\n{qid}\ta\t1\n"
    )
  return str(tmp_path)


def _selection(folder, weights=(1.0, 2.0)):
  return dev_selection.LexicalSelection(
    folder, (evaluation.QuerySet("q"),), weights, "dev", "test", 0
  )


def test_choose_uses_dev_queries_only_and_sets_the_weight(folder):
  searcher = _FakeSearcher(good_from=2.0)
  record = _selection(folder).choose(searcher)
  assert record["split"] == "dev" and record["chosen"] == 2.0
  assert searcher.lexical_weight == 2.0
  assert all(s == ["qd"] for s in searcher.searched)  # never qt
  assert record["MRR@10"]["1.0"] == 0.5 and record["MRR@10"]["inf"] == 1.0


def test_no_weights_scores_only_the_model_alone(folder):
  record = _selection(folder, weights=()).choose(_FakeSearcher(good_from=0.0))
  assert list(record["MRR@10"]) == ["0.0"] and record["chosen"] == 0.0


def test_learning_curve_and_best_step_prefer_dev_and_earlier_ties(folder):
  searchers = {
    0: _FakeSearcher(good_from=0.0, good=False),
    100: _FakeSearcher(good_from=1.0),
    200: _FakeSearcher(good_from=0.0),
    300: _FakeSearcher(good_from=0.0),
  }
  curve = dev_selection.learning_curve(
    _selection(folder), sorted(searchers), searchers.__getitem__
  )
  assert [p["step"] for p in curve] == [0, 100, 200, 300]
  assert curve[0]["eval"]["q/test"]["Hits@1"] == 0.0
  assert curve[2]["eval"]["q/test"]["Hits@1"] == 1.0
  # 100, 200 and 300 all reach dev MRR 1; the earliest wins.
  assert dev_selection.best_step(curve) == 100
  assert curve[1]["dev"]["chosen"] == 1.0


def test_a_folder_without_held_out_queries_is_an_error(folder, tmp_path):
  selection = dev_selection.LexicalSelection(
    folder, (evaluation.QuerySet("q"),), (1.0,), "dev", "dev", 0
  )
  with pytest.raises(ValueError, match="never used"):
    selection.choose(_FakeSearcher(good_from=0.0))


def test_best_step_of_nothing_is_an_error():
  with pytest.raises(ValueError):
    dev_selection.best_step([])


def test_early_stopping_serves_the_step_best_on_dev(tmp_path):
  """run_experiment with early_stopping: every checkpoint, step 0 (the
  start) included, is scored on dev; the results, the curve, the weight
  file and the saved checkpoints agree."""
  import gin

  from gr.decode import plan as plan_lib
  from gr.experiments import run as experiment
  from tests.experiments.test_experiment import _synthetic_beir

  data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "work")
  _synthetic_beir(data_dir)
  with gin.unlock_config():
    gin.bind_parameter("train.checkpoint_every", 5)
    gin.bind_parameter("train.keep_checkpoints", 5)
  try:
    out = _early_stopping_run(experiment, data_dir, workdir)
  finally:
    gin.clear_config()
  curve = out["learning_curve"]
  # Step 0 is checkpointed too, so whichever step wins can be served.
  assert [p["step"] for p in curve] == [0, 5, 10]
  chosen = out["early_stopping"]["chosen_step"]
  assert chosen == dev_selection.best_step(curve)
  at_chosen = next(p for p in curve if p["step"] == chosen)
  # The evaluated run is the chosen step: its dev table is the curve's.
  assert out["lexical_weight"]["MRR@10"] == at_chosen["dev"]["MRR@10"]
  assert out["titles/test"]["gr"]["MRR@10"] == pytest.approx(
    at_chosen["eval"]["titles/test"]["MRR@10"]
  )
  assert plan_lib.load_step(workdir) == chosen
  assert os.path.isdir(os.path.join(workdir, "model", str(chosen)))


def _early_stopping_run(experiment, data_dir, workdir):
  del experiment  # the shared tiny run calls it
  from tests.support import tiny_experiments

  return tiny_experiments.run_tiny_planned(
    data_dir, workdir, early_stopping=True
  )
