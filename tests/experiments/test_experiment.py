"""End to end: index a small corpus, train the tiny model, retrieve.

A broken pipeline (data, docids, vocabulary, tasks, training, decoding or
evaluation) makes the trained model no better than chance, and this fails.
As in flax's examples, the run is the driver called with its arguments and a
work directory; the checks read what it returns and writes, and nothing in
the library is patched.
"""

import json
import os
import random

import pytest

from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.search import evaluation
from gr.model import models
from gr.model import network
from gr.search import exact as exact_lib
from gr.search import retrieval
from gr.data import beir
from gr.experiments import run as experiment
from gr.serve import served_run
from tests.support import tiny_experiments

NUM_DOCS = 24
SEARCH = retrieval.SearchConfig(beam_size=5, top_k=5)
EXACT_QUERIES = 4


def _synthetic_beir(folder):
  rng = random.Random(0)
  words = [f"w{i}" for i in range(300)]
  corpus, queries, qrels = {}, {}, {"train": {}, "dev": {}, "test": {}}
  for i in range(NUM_DOCS):
    body = rng.sample(words, 20)
    corpus[f"doc{i}"] = beir.Document(f"doc{i}", f"t{i}", " ".join(body))
    for j, split in enumerate(("train", "train", "train", "dev")):
      qid = f"q{i}_{j}"
      start = rng.randrange(0, 14)
      queries[qid] = " ".join(body[start : start + 6])
      qrels[split][qid] = {f"doc{i}": 1}
  qrels["test"] = dict(qrels["train"])  # evaluate memorised train queries
  # Test queries must not leak into training: use fresh ids for them.
  test = {}
  for qid, rel in qrels["train"].items():
    queries[f"test_{qid}"] = queries[qid]
    test[f"test_{qid}"] = rel
  qrels["test"] = test
  beir.write_beir(folder, corpus, queries, qrels)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  workdir = str(tmp_path_factory.mktemp("work"))
  _synthetic_beir(data_dir)
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(vocab_size=128, dropout_rate=0.0)
  )
  out = experiment.run_experiment(
    data_dir=data_dir,
    workdir=workdir,
    model=model,
    scheme="naive",
    vocab_size=400,
    train_steps=300,
    batch_size=32,
    input_length=16,
    task_rates={"indexing": 1.0, "retrieval": 2.0},
    search=SEARCH,
    query_sets=(evaluation.QuerySet("titles"),),
    exact_queries=EXACT_QUERIES,
  )
  return workdir, out, data_dir


def test_trained_model_retrieves_far_above_chance(results):
  _, out, _ = results
  gr = out["titles/test"]["gr"]
  assert gr["Hits@1"] > 10 / NUM_DOCS, gr  # chance is 1/24
  assert gr["Hits@10"] > 0.5, gr


def test_run_leaves_index_checkpoint_runs_and_results(results):
  workdir, out, _ = results
  assert os.path.exists(os.path.join(workdir, "index", "CURRENT"))
  assert os.path.isdir(os.path.join(workdir, "model", "300"))
  runs = os.listdir(os.path.join(workdir, "runs"))
  assert sorted(runs) == ["titles.test.bm25.trec", "titles.test.gr.trec"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(out))
  assert out["titles/test"]["beam_vs_exact"]["queries"] == EXACT_QUERIES


def test_top1_agreement_is_recomputed_from_the_run_file(results):
  """Beam's rank-1 lines on disk against the exact ranking's first doc.

  The searcher is rebuilt from the run's files (its last checkpoint, the
  index artifact in it, the saved model config); the compared queries are
  the first EXACT_QUERIES of the test qrels, as evaluate_query_set takes
  them."""
  workdir, out, data_dir = results
  model, params, index, saved, _ = served_run.load_checkpoint(
    os.path.join(workdir, "model")
  )
  searcher = retrieval.Searcher(
    model,
    params,
    index,
    retrieval.retrieval_config(SEARCH, index.max_docid_length()),
    input_length=saved.input_length,
  )
  dataset = beir.BeirDataset.load(data_dir)
  qids = list(dataset.qrels["test"])[:EXACT_QUERIES]
  queries = {qid: dataset.queries[qid] for qid in qids}
  beam_top1 = {}
  with open(os.path.join(workdir, "runs", "titles.test.gr.trec")) as f:
    for line in f:
      qid, _, doc_id, rank, _, _ = line.split()
      if rank == "1":
        beam_top1[qid] = doc_id
  exact = exact_lib.exact_ranking(searcher, list(queries.values()), top_k=1)
  agree = [
    beam_top1.get(qid) == ranking[0][0] for qid, ranking in zip(queries, exact)
  ]
  comparison = out["titles/test"]["beam_vs_exact"]
  assert comparison["top1_agreement"] == sum(agree) / len(agree)
  # A query whose two top-1 documents agree is a hit for both or for neither.
  assert abs(comparison["beam_Hits@1"] - comparison["exact_Hits@1"]) <= (
    1 - comparison["top1_agreement"]
  )


def test_subset_keeps_first_documents_and_their_queries(tmp_path):
  _synthetic_beir(str(tmp_path))
  dataset = beir.BeirDataset.load(str(tmp_path))
  small = experiment.subset(dataset, 5)
  assert list(small.corpus) == list(dataset.corpus)[:5]
  for judged in small.qrels.values():
    for qid, rel in judged.items():
      assert set(rel) <= small.corpus.keys() and qid in small.queries
  assert len(small.qrels["train"]) == 5 * 3
  assert experiment.subset(dataset, 0) is dataset


def test_the_lexical_plan_weight_is_chosen_on_dev(tmp_path):
  data_dir, workdir = str(tmp_path / "data"), str(tmp_path / "work")
  _synthetic_beir(data_dir)
  out = tiny_experiments.run_tiny_planned(
    data_dir, workdir, lexical_weights=(1.0, 4.0)
  )
  selection = out["lexical_weight"]
  assert selection["split"] == "dev"
  assert set(selection["MRR@10"]) == {"0.0", "1.0", "4.0", "inf"}
  best = max(selection["MRR@10"].values())
  assert selection["MRR@10"][str(selection["chosen"])] == best
  result = out["titles/test"]
  # Sentencepiece at 400 pieces spells these "w123" words in characters,
  # so the term sets are weak here, but well above chance (1 / 24).
  assert result["gr:terms"]["Hits@1"] > 3 / NUM_DOCS
  assert result["gr"]["MRR@10"] >= result["gr:model"]["MRR@10"]
  version = index_lib.current_version_dir(os.path.join(workdir, "index"))
  assert os.path.exists(os.path.join(version, term_sets_lib.FILE_NAME))
  checkpoints = [
    root
    for root, _, files in os.walk(os.path.join(workdir, "model"))
    if term_sets_lib.FILE_NAME in files
  ]
  assert checkpoints  # every checkpoint's artifact carries the term sets
