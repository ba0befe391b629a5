"""Tests for gr/experiments/dynamic.py: run_dynamic_experiment end to end."""

import os

import numpy as np

from gr.continual import strategies
from gr.continual import training
from gr.data import beir
from gr.data import news
from gr.experiments import dynamic
from gr.train import optimizer as optimizer_lib

TOPICS = (
  "volcano lava ash eruption crater",
  "football goal striker match",
  "election vote parliament party",
  "storm rain flood coast",
  "market shares bank profit",
  "film actor festival award",
  "school teacher pupils exam",
  "hospital doctor patients ward",
  "river bridge road traffic",
  "science space rocket moon",
)

SETTINGS = strategies.TrainSettings(
  batch_size=8,
  input_length=16,
  log_every=1000,
  optimizer=optimizer_lib.OptimizerConfig(learning_rate=1e-3),
)


def _write_toy_news(folder) -> None:
  """A BEIR + temporal.json folder: D0 of 10 documents, D1..D4 of 2 each;
  each document has a train, a dev and a test query."""
  rng = np.random.default_rng(0)
  docs, queries, train, dev, test, periods = [], {}, {}, {}, {}, []
  sizes = (10, 2, 2, 2, 2)
  for p, size in enumerate(sizes):
    ids = []
    for _ in range(size):
      i = len(docs)
      words = TOPICS[i % len(TOPICS)].split() + list(
        rng.choice("alpha beta gamma delta north south east west".split(), 4)
      )
      doc_id = f"n{i}"
      docs.append(beir.Document(doc_id, f"title {i}", " ".join(words)))
      queries[f"tr{i}"] = " ".join(words[:3])
      queries[f"te{i}"] = " ".join(words[1:4])
      queries[f"dv{i}"] = " ".join(words[2:5])
      train[f"tr{i}"] = {doc_id: 1}
      dev[f"dv{i}"] = {doc_id: 1}
      test[f"te{i}"] = {doc_id: 1}
      ids.append(doc_id)
    periods.append(
      news.Period(f"D{p}", f"2020-0{p + 1}", f"2020-0{p + 1}", tuple(ids))
    )
  beir.write_beir(
    str(folder), docs, queries, {"train": train, "dev": dev, "test": test}
  )
  news.write_temporal(os.path.join(folder, news.TEMPORAL_FILE), periods)


def _run_toy_grid(data_dir, workdir, model, **grid):
  """run_dynamic_experiment on the toy folder: atomic docids, the tiny
  settings and search, test queries; `grid` gives the rest."""
  from gr.search import retrieval

  return dynamic.run_dynamic_experiment(
    data_dir=str(data_dir),
    workdir=str(workdir),
    model=model,
    schemes=("atomic",),
    settings=SETTINGS,
    search=retrieval.SearchConfig(beam_size=4, top_k=4),
    eval_splits=("test",),
    **grid,
  )


def test_run_dynamic_experiment_end_to_end(tmp_path, monkeypatch):
  """Tiny BERT, atomic docids, warm start: trie_only, experience replay
  with a budget, generative replay + SAM from a (random) vector generator,
  retrain; two seeds. Checks costs, the replay budget, SAM at D0, the
  generative memory's storage and the report."""
  import jax
  from tests.support import tiny_bert
  from gr.queries import query_generators
  from gr.model import models
  from gr.model import pretrained
  from gr.train import data as data_lib
  from gr.model import warm_start
  from gr.index import wordpiece

  data_dir, workdir = tmp_path / "news", tmp_path / "work"
  _write_toy_news(data_dir)
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  model = tiny_bert.frozen_model(bert_dir)
  vocab = wordpiece.WordPieceVocabulary(pretrained.tokenizer_path(bert_dir))
  memory_model = models.fit_vocab(model, vocab.vocab_size)
  memory_generator = query_generators.VectorQueryGenerator(
    memory_model,
    warm_start.pretrained_params(
      memory_model,
      warm_start.load_encoder(bert_dir)[1],
      jax.random.PRNGKey(0),
      input_length=16,
      target_length=6,
      warm_start=False,
    ),
    vocab,
    query_generators.GenerationConfig(
      num_queries=1, max_query_len=6, batch_size=8
    ),
  )
  sam_radii, batch_sizes = [], []
  real_train, real_concat = (
    training.train_params,
    data_lib.concatenated_batches,
  )

  def recording_train(model, mixture, **kwargs):
    kind = "update" if ".update_" in mixture else "initial"
    sam_radii.append((kind, kwargs["sam_rho"]))
    return real_train(model, mixture, **kwargs)

  def recording_concat(*iterators):
    for batch in real_concat(*iterators):
      batch_sizes.append(len(batch["encoder_input_tokens"]))
      yield batch

  def recording_parts(*iterators):
    return recording_concat(*[_sizes(it) for it in iterators])

  part_sizes = []

  def _sizes(iterator):
    for batch in iterator:
      part_sizes.append(len(batch["encoder_input_tokens"]))
      yield batch

  monkeypatch.setattr(training, "train_params", recording_train)
  monkeypatch.setattr(data_lib, "concatenated_batches", recording_parts)
  results = _run_toy_grid(
    data_dir,
    workdir,
    model,
    strategies=(
      "trie_only",
      "experience_replay",
      "generative_replay_sam",
      "retrain",
    ),
    strategy_overrides={
      "experience_replay": {"replay_per_batch": 3},
      "generative_replay_sam": {"replay_per_batch": 3},
    },
    initial_steps=2,
    update_steps=2,
    memory_generator=memory_generator,
    memorised_sample=4,
    seeds=(0, 1),
    strategy_seeds={"retrain": 1},
  )

  cells = results["cells"]
  assert set(cells) == {
    f"atomic/{s}"
    for s in (
      "trie_only",
      "experience_replay",
      "generative_replay_sam",
      "retrain",
    )
  }
  updates = {
    name.split("/")[1]: [s["gradient_updates"] for s in c["steps"]]
    for name, c in cells.items()
  }
  assert updates["trie_only"] == [2, 0, 0, 0, 0]
  assert updates["experience_replay"] == [2, 2, 2, 2, 2]
  assert updates["retrain"][1:] == [3, 3, 4, 4]  # ceil(2 * docs / 10)
  assert {name: c["seeds"] for name, c in cells.items()} == {
    "atomic/trie_only": 2,
    "atomic/experience_replay": 2,
    "atomic/generative_replay_sam": 2,
    "atomic/retrain": 1,  # strategy_seeds
  }
  assert not os.path.exists(workdir / "seed1" / "atomic" / "retrain")
  # SAM indexed D0 of the SAM cell (and its updates); the others plain.
  assert sam_radii.count(("initial", 0.05)) == 2  # D0 of each seed
  assert sam_radii.count(("update", 0.05)) == 2 * 4  # 2 seeds x 4 updates
  assert ("update", 0.0) in sam_radii  # experience replay
  assert os.path.isdir(workdir / "seed0" / "atomic" / "initial_sam0.05")
  # The budget: 3 replayed + 5 new examples in every budgeted batch.
  assert batch_sizes and set(batch_sizes) == {8}
  assert set(part_sizes) == {3, 5}
  # The generative memory keeps ids and vectors, no bodies.
  experience = cells["atomic/experience_replay"]["storage"]["memory_bytes"]
  generative = cells["atomic/generative_replay_sam"]["storage"]["memory_bytes"]
  assert generative < experience
  for cell in cells.values():
    assert all(0.0 <= m <= 1.0 for m in cell["memorised_d0"])
    matrix = np.array(cell["Hits@10"]["matrix"], dtype=float)
    assert matrix.shape == (5, 5) and not np.isnan(np.diag(matrix)).any()
  assert "±" in (workdir / "results.md").read_text()
  # Run again: every cell is read back, none retrained.
  sam_radii.clear()
  again = _run_toy_grid(
    data_dir,
    workdir,
    model,
    strategies=("trie_only", "retrain"),
    initial_steps=2,
    update_steps=2,
    memorised_sample=4,
    seeds=(0, 1),
    strategy_seeds={"retrain": 1},
  )
  assert sam_radii == []
  assert (
    again["cells"]["atomic/retrain"]["Hits@10"]["A"]
    == cells["atomic/retrain"]["Hits@10"]["A"]
  )


def test_the_plan_weight_is_chosen_on_d0_dev_and_kept(tmp_path, monkeypatch):
  """The lexical plan in the dynamic grid: beta is chosen once, on D0's
  dev queries only, and every later version (more documents) is searched
  with term sets over all of its documents at that weight."""
  from tests.support import tiny_bert
  from gr.continual import period_plan
  from gr.search import evaluation

  data_dir, workdir = tmp_path / "news", tmp_path / "work"
  _write_toy_news(data_dir)
  model = tiny_bert.frozen_model(
    tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  )
  chosen_on, real_select = [], evaluation.select_lexical_weight

  def select(searcher, query_sets, candidates):
    chosen_on.append({q for _, qrels in query_sets.values() for q in qrels})
    _, table = real_select(searcher, query_sets, candidates)
    return 1.0, table  # the plan on, whatever the toy's dev says

  monkeypatch.setattr(evaluation, "select_lexical_weight", select)
  results = _run_toy_grid(
    data_dir,
    workdir,
    model,
    strategies=("trie_only", "experience_replay"),
    initial_steps=1,
    update_steps=1,
    seeds=(0,),
    plan=period_plan.PlanSettings(weights=(1.0,), language="english"),
  )
  # Chosen once per initial version (shared by both strategies), on the
  # dev queries of D0's ten documents only.
  assert chosen_on == [{f"dv{i}" for i in range(10)}]
  for cell in results["cells"].values():
    (weight,) = cell["lexical_weight"]  # one seed
    assert weight["chosen"] == 1.0
    assert set(weight["MRR@10"]) == {"0.0", "1.0", "inf"}
    matrix = np.array(cell["Hits@10"]["matrix"], dtype=float)
    assert matrix.shape == (5, 5) and not np.isnan(np.diag(matrix)).any()


def test_the_encoder_is_tuned_on_d0_train_queries_only(tmp_path):
  """tuned_for_d0 gives the tuning D0's train pairs and nothing of the
  later periods; the tuned folder, when kept, is under the workdir."""
  from tests.support import tiny_bert
  from gr.train import encoder_tuning

  data_dir, workdir = tmp_path / "news", tmp_path / "work"
  _write_toy_news(data_dir)
  model = tiny_bert.frozen_model(
    tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  )
  dataset = beir.BeirDataset.load(str(data_dir))
  periods = dynamic.dynamic_periods(
    str(data_dir), dataset, docs_fraction=1.0, max_docs_per_period=0,
    seed=0, query_files=(("queries.jsonl", "qrels"),), eval_splits=("test",),
  )  # fmt: skip
  results = {}
  tuned = dynamic.tuned_for_d0(
    model, str(data_dir), dataset, periods[0], (("queries.jsonl", "qrels"),),
    encoder_tuning.EncoderTuning(steps=2, batch_size=4), str(workdir), 16,
    results,
  )  # fmt: skip
  record = results["encoder_tuning"]
  assert record["pairs"] == 10  # one train query per D0 document
  assert record["steps_run"] == 2
  if record["kept"]:
    assert tuned.config.encoder_dir == str(workdir / "tuned_encoder")
  else:
    assert tuned is model
  assert dynamic.tuned_for_d0(
    model, str(data_dir), dataset, periods[0], (), None, str(workdir), 16, {}
  ) is model  # fmt: skip
