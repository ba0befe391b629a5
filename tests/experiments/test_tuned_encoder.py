"""run_experiment with encoder_tuning (gr/experiments/tuned_encoder.py) on
the tiny BERT: kept when dense dev MRR@10 rises (the run's model then reads
the tuned folder, and its rows are the tuned document vectors), the start
kept when dev cannot improve."""

import json
import os

import numpy as np
import pytest

from gr.experiments import run as experiment
from gr.model import bert
from gr.model import model_config
from gr.search import evaluation
from gr.search import retrieval
from gr.serve import served_run
from gr.train import encoder_tuning
from tests.support import synonym_corpus
from tests.support import tiny_bert

SPLITS = {"train": range(0, 40), "dev": range(40, 50), "test": range(50, 60)}
SPLITS_SMALL = {
  "train": range(0, 10),
  "dev": range(10, 15),
  "test": range(15, 20),
}
TUNING = encoder_tuning.EncoderTuning(
  steps=60, batch_size=8, learning_rate=3e-3, query_length=8
)


def _run(tmp_path, name: str, dev_lexical: bool) -> dict:
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  data_dir = synonym_corpus.write_beir(
    str(tmp_path / f"{name}_data"), 60, SPLITS, dev_lexical=dev_lexical
  )
  workdir = str(tmp_path / name)
  results = experiment.run_experiment(
    data_dir=data_dir,
    workdir=workdir,
    model=tiny_bert.frozen_model(bert_dir),
    scheme="atomic",
    train_steps=0,
    batch_size=8,
    input_length=16,
    task_rates={"indexing": 1.0, "retrieval": 1.0},
    search=retrieval.SearchConfig(beam_size=5, top_k=5),
    query_sets=(evaluation.QuerySet("titles"),),
    encoder_tuning=TUNING,
  )
  return results, workdir, bert_dir


def test_a_tuned_encoder_that_helps_dev_becomes_the_runs_encoder(tmp_path):
  results, workdir, _ = _run(tmp_path, "helps", dev_lexical=False)
  record = results["encoder_tuning"]
  assert record["kept"] and record["pairs"] == 40
  assert record["dev/tuned"]["titles"] > record["dev/start"]["titles"] + 0.1
  folder = os.path.join(workdir, "tuned_encoder")
  saved = model_config.load_model_config(
    os.path.join(workdir, "model_config.json")
  )
  assert saved.model.encoder_dir == os.path.abspath(folder)
  # The run's dense baseline uses the tuned encoder: its test figure is
  # the record's.
  assert results["titles/test"]["dense"]["MRR@10"] == pytest.approx(
    record["test/tuned"]["titles"], abs=1e-6
  )
  # A run that does not train saves step 0, so it can be served; its
  # encoder is the tuned folder's.
  model, params, _, _, step = served_run.load_checkpoint(
    os.path.join(workdir, "model")
  )
  assert step == 0 and model.config.encoder_dir == os.path.abspath(folder)
  np.testing.assert_allclose(
    np.asarray(params["encoder"]["layer_0"]["output"]["kernel"]),
    np.asarray(bert.load_params(folder)["layer_0"]["output"]["kernel"]),
  )
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["encoder_tuning"]["kept"]


def test_the_start_is_kept_when_dev_cannot_improve(tmp_path):
  """Dev queries are the bodies' own words: the start ranks every one
  first, so tuning cannot win on dev and the run keeps the source folder."""
  results, workdir, bert_dir = _run(tmp_path, "perfect", dev_lexical=True)
  record = results["encoder_tuning"]
  assert record["dev/start"]["titles"] == 1.0
  assert not record["kept"]
  assert not os.path.exists(os.path.join(workdir, "tuned_encoder"))
  saved = model_config.load_model_config(
    os.path.join(workdir, "model_config.json")
  )
  assert saved.model.encoder_dir == bert_dir


def test_bm25_negatives_are_never_relevant(tmp_path):
  from gr.data import beir
  from gr.experiments import tuned_encoder

  data_dir = synonym_corpus.write_beir(
    str(tmp_path / "data"), 30, {"train": range(30)}, dev_lexical=False
  )
  dataset = beir.BeirDataset.load(data_dir)
  examples = [(dataset.corpus[f"d{i}"].text, f"d{i}", frozenset([f"d{i}"]))
    for i in range(30)] + [("zzzz qqqq", "d0", frozenset(["d0"]))]  # fmt: skip
  negatives = tuned_encoder.bm25_negatives(dataset, examples)
  assert len(negatives) == 31
  for (_, doc, _), negative in zip(examples, negatives):
    assert negative != dataset.corpus[doc].text


def test_a_model_without_a_pretrained_encoder_is_a_clear_error(tmp_path):
  from gr.model import models
  from gr.model import network

  data_dir = synonym_corpus.write_beir(str(tmp_path / "data"), 20, SPLITS_SMALL)
  with pytest.raises(ValueError, match="needs a pretrained BERT-family"):
    experiment.run_experiment(
      data_dir=data_dir,
      workdir=str(tmp_path / "work"),
      model=models.EncoderDecoderModel(network.T5Config.tiny(vocab_size=128)),
      scheme="atomic",
      train_steps=0,
      query_sets=(evaluation.QuerySet("titles"),),
      encoder_tuning=TUNING,
    )


def test_a_query_relevant_to_every_document_has_no_negative(tmp_path):
  from gr.data import beir
  from gr.experiments import tuned_encoder

  data_dir = synonym_corpus.write_beir(
    str(tmp_path / "data"), 3, {"train": range(3)}
  )
  dataset = beir.BeirDataset.load(data_dir)
  every = frozenset(dataset.corpus)
  with pytest.raises(ValueError, match="every document is judged relevant"):
    tuned_encoder.bm25_negatives(dataset, [("zzzz", "d0", every)])
