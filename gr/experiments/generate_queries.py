"""The DSI-QG driver: train (or load) doc2query on a BEIR folder, write its
queries, filter them, and report their quality.

scripts/generate_queries.py parses the flags and calls `generate_queries`;
the model comes from gin (`doc2query_model.model = %MODEL`, set by the
script from the --gin_file model files), and the training loop is the
gin-bound one (configurables.train), so train.* and OptimizerConfig.*
bindings apply to what is not set here.

The model learns body -> query text from the train qrels (for the news
benchmark: body -> title) and samples `num_queries` queries per document
of the corpus from its body only. Run again with the same `model_dir`, it
resumes (or just loads) the model; the vocabulary is kept in
model_dir/vocab. Outputs are `{"_id", "queries"}` JSON lines, one per
document, written atomically.
"""

import json
import os
from typing import Mapping, Optional, Sequence

import gin

from gr import atomic_io
from gr.queries import query_generators
from gr.queries import doc2query
from gr.queries import dsi_qg
from gr.model import pretrained
from gr.queries import pseudo_queries
from gr.data import beir
from gr.experiments import configurables

QUERY_FILES = (
  ('queries.jsonl', 'qrels'),
  ('subtitles/queries.jsonl', 'subtitles/qrels'),
)


@gin.configurable
def doc2query_model(model=gin.REQUIRED):
  """The doc2query model the gin files name (MODEL)."""
  return model


def _run_name(data_dir: str) -> str:
  """The seqio task name part for `data_dir` (alphanumerics and '_')."""
  base = os.path.basename(os.path.normpath(data_dir))
  return ''.join(c if c.isalnum() else '_' for c in base)


def train_model(
  dataset: beir.BeirDataset,
  *,
  data_dir: str,
  model_dir: str,
  train_steps: int,
  batch_size: int,
  checkpoint_every: int,
  log_every: int,
  learning_rate: float,
  vocab_size: int,
  input_length: int,
  max_query_len: int,
  vector_every: int,
  seed: int,
):
  """(model, params, vocab) of doc2query trained (or resumed) in model_dir."""
  model = doc2query_model()
  vocab = doc2query.model_vocabulary(
    model,
    dataset,
    os.path.join(model_dir, 'vocab'),
    vocab_size=vocab_size,
    seed=seed,
  )
  model, params = doc2query.train_doc2query(
    model=model,
    dataset=dataset,
    vocab=vocab,
    model_dir=model_dir,
    name=_run_name(data_dir),
    train_steps=train_steps,
    batch_size=batch_size,
    input_length=input_length,
    max_query_len=max_query_len,
    seed=seed,
    checkpoint_every=checkpoint_every,
    log_every=log_every,
    vector_every=vector_every,
    train_fn=configurables.train,
    optimizer=configurables.OptimizerConfig(
      learning_rate=learning_rate,
      schedule='cosine',
      warmup_steps=min(200, train_steps // 10),
    ),
  )
  return model, params, vocab


def filtered(
  queries: Mapping[str, Sequence[str]],
  corpus: Mapping[str, beir.Document],
  *,
  filter_top_k: int,
  filter_checkpoint: Optional[str],
) -> tuple[str, dict[str, list[str]]]:
  """(kind, kept queries): those whose document the current GR model
  (`filter_checkpoint`) or else BM25 ranks in its top `filter_top_k`."""
  if filter_checkpoint:
    from gr.serve import retriever as serving  # pylint: disable=g-import-not-at-top

    retriever = serving.Retriever.from_checkpoint(filter_checkpoint)
    ranker = dsi_qg.model_ranker(retriever, filter_top_k)
    return 'model_filtered', dsi_qg.rank_filter(ranker, queries)
  ranker = dsi_qg.bm25_ranker(corpus, filter_top_k)
  return 'bm25_filtered', dsi_qg.rank_filter(ranker, queries)


def vector_queries(
  model, params, vocab, config, dataset, held_out, input_length: int
) -> dict[str, list[str]]:
  """What the generative memory writes from the held-out documents'
  vectors alone (their bodies unseen)."""
  held_docs = sorted(
    {
      d
      for _, qrels in held_out.values()
      for docs in qrels.values()
      for d in docs
    }
  )
  vectors = pretrained.body_vectors(
    model,
    params,
    vocab,
    {d: dataset.corpus[d] for d in held_docs},
    input_length,
  )
  generator = query_generators.VectorQueryGenerator(
    model, params, vocab, config
  )
  return generator.generate_vectors(vectors)


def generate_queries(
  *,
  data_dir: str,
  model_dir: str,
  output: str,
  filtered_output: Optional[str] = None,
  filter_top_k: int = 10,
  filter_checkpoint: Optional[str] = None,
  report: Optional[str] = None,
  query_files: Sequence[tuple[str, str]] = QUERY_FILES,
  train_steps: int = 2000,
  batch_size: int = 64,
  checkpoint_every: int = 500,
  log_every: int = 100,
  learning_rate: float = 1e-3,
  vocab_size: int = 8000,
  input_length: int = 256,
  max_query_len: int = 32,
  vector_every: int = 0,
  num_queries: int = 5,
  top_k: int = 10,
  top_p: float = 1.0,
  temperature: float = 1.0,
  generate_batch_size: int = 32,
  seed: int = 0,
) -> dict:
  """The DSI-QG pipeline (module docstring); returns the quality report
  ({kind: dsi_qg.query_report}, empty without `report`).

  Writes the generated queries to `output`; with `filtered_output` also
  the filtered ones (`filtered`); with `report` the JSON quality report of
  each kind (generated, filtered, and with `vector_every` > 0 the queries
  written from held-out documents' vectors).
  """
  query_files = [tuple(pair) for pair in query_files]
  dataset = dsi_qg.training_pairs(data_dir, query_files)
  model, params, vocab = train_model(
    dataset,
    data_dir=data_dir,
    model_dir=model_dir,
    train_steps=train_steps,
    batch_size=batch_size,
    checkpoint_every=checkpoint_every,
    log_every=log_every,
    learning_rate=learning_rate,
    vocab_size=vocab_size,
    input_length=input_length,
    max_query_len=max_query_len,
    vector_every=vector_every,
    seed=seed,
  )
  config = query_generators.GenerationConfig(  # its fields in order
    num_queries, input_length, max_query_len, generate_batch_size,
    temperature, top_k, top_p, seed,
  )  # fmt: skip
  queries = query_generators.generate_queries(
    model, params, vocab, dataset.corpus, config
  )
  outputs = {'generated': queries}
  write_queries(output, queries)
  if filtered_output:
    kind, outputs[kind] = filtered(
      queries,
      dataset.corpus,
      filter_top_k=filter_top_k,
      filter_checkpoint=filter_checkpoint,
    )
    pseudo_queries.write_pseudo_queries(filtered_output, outputs[kind])
  return quality_report(
    outputs,
    (model, params, vocab, config),
    dataset,
    data_dir=data_dir,
    query_files=query_files,
    vector_every=vector_every,
    report=report,
    seed=seed,
  )


def write_queries(path: str, queries: Mapping[str, Sequence[str]]) -> None:
  """Writes {doc_id: queries} as JSON lines and says how many."""
  pseudo_queries.write_pseudo_queries(path, queries)
  print(
    f'{sum(map(len, queries.values()))} queries for {len(queries)} '
    f'documents -> {path}'
  )


def quality_report(
  outputs: dict[str, Mapping[str, Sequence[str]]],
  generator_parts,
  dataset: beir.BeirDataset,
  *,
  data_dir: str,
  query_files: Sequence[tuple[str, str]],
  vector_every: int,
  report: Optional[str],
  seed: int,
) -> dict:
  """{kind: dsi_qg.query_report} of each kind of queries in `outputs`
  (with `vector_every` > 0, plus those the generative memory writes from
  held-out documents' vectors), written to `report` (empty without it).

  generator_parts: (model, params, vocab, GenerationConfig) of doc2query.
  """
  if not (vector_every or report):
    return {}
  held_out = dsi_qg.held_out_sets(data_dir, query_files)
  if vector_every:
    model, params, vocab, config = generator_parts
    outputs['from_vectors'] = vector_queries(
      model, params, vocab, config, dataset, held_out, config.input_length
    )
  if not report:
    return {}
  quality = {
    kind: dsi_qg.query_report(found, dataset, held_out, seed=seed)
    for kind, found in outputs.items()
  }
  atomic_io.write_json(report, quality, indent=1)
  print(json.dumps(quality, indent=1))
  return quality
