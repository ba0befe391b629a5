"""run_experiment with RQ docids on the tiny BERT: index, warm start, the
plan and logits-mode search end to end (step 0)."""

import os

from gr.experiments import run as experiment
from gr.index import artifact as index_lib
from gr.docids import rq
from gr.search import evaluation
from gr.search import retrieval
from tests.model import test_pretrained_encoder as tpe
from tests.support import tiny_bert


def test_rq_experiment_at_step0(tmp_path):
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path / "bert"))
  data_dir, workdir = str(tmp_path / "toy"), str(tmp_path / "work")
  tpe._toy_beir(data_dir)
  model = tpe._gin_model(bert_dir)
  out = experiment.run_experiment(
    data_dir=data_dir,
    workdir=workdir,
    model=model,
    scheme="rq",
    scheme_params={"levels": 2, "codebook_size": 8},
    train_steps=0,
    batch_size=16,
    input_length=tpe.LENGTH,
    task_rates={"indexing": 1.0, "retrieval": 1.0},
    search=retrieval.SearchConfig(beam_size=5, top_k=5, score_mode="logits"),
    query_sets=(evaluation.QuerySet("titles"),),
    warm_start_temperature=tpe.TEMPERATURE,
    exact_queries=5,
    lexical_weights=(1.0,),
    selection_split="train",
  )
  result = out["titles/test"]
  # A smoke test of the path (scheme, warm start, plan, logits mode, the
  # oracle); step-0 quality is measured on news (WORKSPACE.md).
  assert set(result["gr"]) >= {"Hits@1", "Hits@10", "MRR@10"}, result
  assert result["beam_vs_exact"]["top1_agreement"] >= 0.6, result
  index = index_lib.load_index(os.path.join(workdir, "index"))
  assert index.table.scheme == "rq"
  assert rq.codebooks_of(index.table).shape[:2] == (2, 8)
