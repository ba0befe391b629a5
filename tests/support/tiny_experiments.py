"""The tiny planned run_experiment call the experiment tests share: a
synthetic BEIR folder (tests/experiments/test_experiment.py's), a tiny T5
under atomic docids, 10 training steps, the titles query set and a
lexical plan; each test adds the settings it is about."""

from gr.experiments import run as experiment
from gr.model import models
from gr.model import network
from gr.search import evaluation
from gr.search import retrieval


def run_tiny_planned(data_dir: str, workdir: str, **settings) -> dict:
  """run_experiment's results for the tiny planned run with `settings`
  (run_experiment keywords) on top."""
  base = dict(
    data_dir=data_dir,
    workdir=workdir,
    model=models.EncoderDecoderModel(
      network.T5Config.tiny(vocab_size=128, dropout_rate=0.0)
    ),
    scheme="atomic",
    vocab_size=400,
    train_steps=10,
    batch_size=16,
    input_length=16,
    search=retrieval.SearchConfig(beam_size=5, top_k=5),
    query_sets=(evaluation.QuerySet("titles"),),
    lexical_weights=(1.0,),
  )
  return experiment.run_experiment(**{**base, **settings})
