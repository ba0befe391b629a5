"""A whole generative-retrieval experiment on one BEIR folder (gin driver).

`run_experiment` indexes a corpus under a docid scheme, trains the model on
a mixture of indexing, retrieval and pseudo-query tasks, then evaluates
constrained beam search next to BM25 on each query set. Everything it
makes goes under `workdir`:

  workdir/index/        the index artifact (docid table + vocabulary)
  workdir/model/        orbax checkpoints (index artifact beside each step)
                        and TensorBoard events
  workdir/runs/         TREC run files, GR and BM25
  workdir/results.json  the metrics table as data
  workdir/model_config.json  the T5Config as trained (gr/model/model_config.py),
                        so the service can load the checkpoint alone
"""

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import gin
import jax
import numpy as np

from gr.search import dense
from gr import atomic_io
from gr.search import evaluation
from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.index import artifact as index_lib
from gr.index import lexicon
from gr.model import models
from gr.train import indexing
from gr.model import pretrained
from gr.model import pretrained_t5
from gr.queries import pseudo_queries as pseudo_lib
from gr.search import retrieval
from gr.model import model_config
from gr.train import tasks
from gr.data import beir
from gr.experiments import configurables

DEFAULT_QUERY_SETS = (
  evaluation.QuerySet("titles"),
  evaluation.QuerySet(
    "subtitles", "subtitles/queries.jsonl", "subtitles/qrels"
  ),
)


def subset(dataset: beir.BeirDataset, max_docs: int) -> beir.BeirDataset:
  """The first `max_docs` documents and the queries judged entirely
  inside them."""
  if not max_docs or max_docs >= len(dataset.corpus):
    return dataset
  return dataset.restricted_to(
    list(dataset.corpus)[:max_docs], whole_queries=True
  )


def pseudo_queries(
  dataset: beir.BeirDataset,
  spans: int,
  sentences: int,
  generated_file: Optional[str],
  seed: int,
) -> dict[str, list[str]]:
  """Span/sentence pseudo-queries, plus generated ones (DSI-QG) if given.

  A generated file (scripts/generate_queries.py) must only name documents
  of this corpus; its queries come from bodies only.
  """
  pseudo = pseudo_lib.build_pseudo_queries(
    dataset.corpus.values(), num_spans=spans, num_sentences=sentences, seed=seed
  )
  if generated_file:
    generated = pseudo_lib.read_pseudo_queries(generated_file)
    unknown = sorted(set(generated) - set(dataset.corpus))
    if unknown:
      raise ValueError(
        f"{generated_file}: {len(unknown)} documents not in "
        f"the corpus, e.g. {unknown[:3]}"
      )
    for doc_id, queries in generated.items():
      pseudo[doc_id] = pseudo.get(doc_id, []) + list(queries)
  return pseudo


# module: the selector's as before the move (gr/experiment.py), so bindings
# and config strings keep their full name gr.experiment.run_experiment.
@gin.configurable(module="gr.experiment")
def run_experiment(
  *,
  data_dir: str,
  workdir: str,
  model,
  scheme: str = "naive",
  scheme_params: Optional[Mapping[str, Any]] = None,
  vocab_size: int = 8000,
  task_rates: Mapping[str, float] = (("indexing", 1.0), ("retrieval", 1.0)),
  pseudo_query_spans: int = 0,
  pseudo_query_sentences: int = 0,
  pseudo_queries_file: Optional[str] = None,
  train_steps: int = 1000,
  batch_size: int = 64,
  input_length: int = 64,
  search: retrieval.SearchConfig = retrieval.SearchConfig(),
  query_sets: Sequence[evaluation.QuerySet] = DEFAULT_QUERY_SETS,
  eval_split: str = "test",
  exact_queries: int = 0,
  max_docs: int = 0,
  seed: int = 0,
  warm_start: bool = True,
  warm_start_temperature: float = 0.05,
  encoder_cache_dir: Optional[str] = None,
  lexical_weights: Sequence[float] = (),
  term_set_size: int = 0,
  selection_split: str = "dev",
  plan_in_training: bool = False,
) -> dict:
  """Index, train, evaluate. Returns {query set name: metrics}.

  max_docs > 0 keeps the first max_docs documents of the corpus (and the
  queries judged on them): a smaller index for a quick CPU run.

  With a pretrained encoder (MODEL from gin/models/minilm_t5*.gin) the
  index uses its word pieces, the frozen encoder layers run once over all
  training inputs (cached in workdir/encoder_cache), docid rows start from
  document embeddings (`warm_start`, gr/model/warm_start.py) and the results get
  a dense baseline with the same encoder. The cache covers every docid
  task's inputs whatever `task_rates` says, so runs that differ only in
  rates or training share it (`encoder_cache_dir`, default
  workdir/encoder_cache). train_steps = 0 evaluates the initial model.

  lexical_weights: candidate weights of the lexical plan (term-set docids
  of term_set_size terms per document, 0 = all, gr/index/lexicon.py);
  they, 0 (the model alone) and inf (the term sets alone) compete, and
  the one with the best mean MRR@10 on `selection_split` (the train
  queries where a folder has no such split; never the eval split) is
  used, and the table adds its two parts. Empty: no plan.
  plan_in_training: the weight is chosen so at step 0 too, and training
  adds that plan's first-token bonus to the logits (the model learns on
  top of the plan, `plan_bias_transform`).
  """
  start = time.time()
  dataset = subset(beir.BeirDataset.load(data_dir), max_docs)
  name = "".join(
    c if c.isalnum() else "_"
    for c in os.path.basename(os.path.normpath(data_dir))
  )
  encoder_dir = (
    model.config.encoder_dir if pretrained.is_pretrained(model) else None
  )
  t5_dir = pretrained_t5.t5_dir_of(model)
  cache_dir = encoder_cache_dir or os.path.join(workdir, "encoder_cache")
  index = indexing.load_or_build_index(
    dataset,
    os.path.join(workdir, "index"),
    scheme=scheme,
    scheme_params=scheme_params or {},
    vocab_size=vocab_size,
    seed=seed,
    encoder_dir=encoder_dir,
    embedding_length=input_length,
    cache_dir=cache_dir,
    t5_dir=t5_dir,
  )
  pseudo = pseudo_queries(
    dataset,
    pseudo_query_spans,
    pseudo_query_sentences,
    pseudo_queries_file,
    seed,
  )
  mixture = tasks.register_mixture(
    name, dataset, index, pseudo, dict(task_rates)
  )
  target_length = index.max_docid_length()
  model = models.fit_vocab(model, index.vocab.vocab_size)
  model_config.save_model_config(
    workdir,
    model.config,
    input_length=input_length,
    corpus_path=os.path.join(data_dir, "corpus.jsonl"),
  )
  setup = PretrainedSetup()
  if encoder_dir:
    every_task = tasks.register_mixture(
      name,
      dataset,
      index,
      pseudo,
      {kind: 1.0 for kind in tasks.DOCID_KINDS},
      suffix="all_docid_tasks",
    )
    setup = pretrained_setup(
      model,
      index,
      dataset,
      every_task,
      cache_dir,
      input_length=input_length,
      target_length=target_length,
      seed=seed,
      warm=warm_start,
      temperature=warm_start_temperature,
    )
  elif t5_dir:  # HF T5 weights (gin/models/t5_pretrained.gin, T5_DIR)
    setup_start = time.time()
    setup = PretrainedSetup(
      params=pretrained_t5.t5_initial_params(model, t5_dir, seed=seed)
    )
    setup.seconds = time.time() - setup_start
  # Term sets before training, so that every checkpoint's artifact has them.
  term_sets = (
    index_term_sets(index, dataset, workdir, term_set_size)
    if lexical_weights
    else None
  )

  def searcher_of(params) -> retrieval.Searcher:
    return retrieval.Searcher(
      model,
      params,
      index,
      retrieval.retrieval_config(search, target_length),
      input_length=input_length,
      term_sets=term_sets,
    )

  def choose(searcher: retrieval.Searcher) -> dict:
    return choose_lexical_weight(
      searcher,
      data_dir,
      query_sets,
      lexical_weights,
      selection_split,
      eval_split,
      max_docs,
    )

  params, train_seconds = setup.params, 0.0
  transform, selection_at_start = setup.batch_transform, None
  if plan_in_training and lexical_weights and train_steps > 0:
    if params is None:
      raise ValueError("plan_in_training needs initial params to choose on")
    start_searcher = searcher_of(params)
    selection_at_start = choose(start_searcher)
    transform = plan_bias_transform(start_searcher, transform)
    del start_searcher
  if train_steps > 0:
    train_start = time.time()
    # The gin-bound train: gin files bind train.optimizer, checkpoint_every...
    params = configurables.train(
      model=model,
      mixture_or_task_name=mixture,
      train_steps=train_steps,
      batch_size=batch_size,
      model_dir=os.path.join(workdir, "model"),
      input_length=input_length,
      target_length=target_length,
      seed=seed,
      init_params=setup.params,
      batch_transform=transform,
      artifact_dir=index_lib.current_version_dir(
        os.path.join(workdir, "index")
      ),
    ).params
    train_seconds = time.time() - train_start
  if params is None:
    raise ValueError(
      "train_steps = 0 needs a pretrained encoder (there is "
      "no initial model to evaluate otherwise)"
    )
  searcher = searcher_of(params)
  selection = choose(searcher) if lexical_weights else {}
  if selection_at_start:
    selection["at_start"] = selection_at_start
  results = evaluate(
    searcher,
    data_dir,
    query_sets,
    eval_split,
    os.path.join(workdir, "runs"),
    exact_queries,
    max_docs,
    dense=setup.dense,
  )
  if selection:
    results["lexical_weight"] = selection
  results["run"] = {
    "train_steps": train_steps,
    "scheme": scheme,
    "documents": len(dataset.corpus),
    "train_seconds": round(train_seconds, 1),
    "setup_seconds": round(setup.seconds, 1),
    "total_seconds": round(time.time() - start, 1),
  }
  print(
    evaluation.format_results(
      {k: v for k, v in results.items() if "/" in k},
      f"{scheme} docids, {train_steps} steps, {name} "
      f"({len(dataset.corpus)} documents) {eval_split}",
    )
  )
  with atomic_io.atomic_open(os.path.join(workdir, "results.json")) as f:
    json.dump(results, f, indent=1)
  return results


def index_term_sets(index, dataset, workdir: str, max_terms: int):
  """The index's term sets, saved beside its current version (so every
  checkpoint's artifact carries them); built once."""
  version_dir = index_lib.current_version_dir(os.path.join(workdir, "index"))
  sets = term_sets_lib.TermSets.load(version_dir)
  if sets is None or sets.max_terms != max_terms:
    sets = lexicon.build_term_sets(index, dataset.corpus, max_terms=max_terms)
    sets.save(version_dir)
  return sets


def plan_bias_transform(
  searcher: retrieval.Searcher, inner: Optional[Callable[[dict], dict]]
) -> Optional[Callable[[dict], dict]]:
  """A batch transform: `inner`, then batch['decoder_first_bias'] [B, V],
  the searcher's plan bonus of each first token for the batch's inputs
  (models.EncoderDecoderModel.loss_fn adds it). `inner` alone when the
  searcher has no finite plan (weight 0 or inf)."""
  if searcher.plan is None or np.isinf(searcher.lexical_weight):
    return inner
  plan, arrays = searcher.plan, searcher.trie_arrays
  vocab_size = searcher.model.config.vocab_size

  def transform(batch: dict) -> dict:
    batch = inner(batch) if inner is not None else batch
    # Explicit transfers: the training loop guards against implicit ones.
    tokens = jax.device_put(batch["encoder_input_tokens"])
    bias = plan_lib.first_token_bias(plan, arrays, tokens, vocab_size)
    return {**batch, "decoder_first_bias": jax.device_get(bias)}

  return transform


def choose_lexical_weight(
  searcher: retrieval.Searcher,
  data_dir: str,
  query_sets: Sequence[evaluation.QuerySet],
  candidates: Sequence[float],
  split: str,
  eval_split: str,
  max_docs: int,
) -> dict:
  """Sets the searcher's lexical weight to the candidate best on `split`
  of every query set that has it (else on their train queries); returns
  {"split", "chosen", "MRR@10": {weight: mean MRR@10}}."""
  held_out = held_out_queries(data_dir, query_sets, split, max_docs)
  if not held_out:
    split = "train"
    held_out = held_out_queries(data_dir, query_sets, split, max_docs)
  if split == eval_split or not held_out:
    raise ValueError(
      f"{data_dir}: no {split!r} queries to choose the lexical weight on "
      f"(the {eval_split!r} split is never used for that)"
    )
  chosen, table = evaluation.select_lexical_weight(
    searcher, held_out, [0.0, *candidates, float("inf")]
  )
  searcher.lexical_weight = chosen
  logging.info("lexical weight %s (mean %s MRR@10 %s)", chosen, split, table)
  return {"split": split, "chosen": chosen, "MRR@10": table}


def held_out_queries(data_dir, query_sets, split: str, max_docs: int) -> dict:
  """{query set name: (queries, qrels of `split`)} where the split exists."""
  return {
    query_set.name: (dataset.queries, dataset.qrels[split])
    for query_set, dataset in query_set_data(
      data_dir, query_sets, split, max_docs
    )
  }


def query_set_data(data_dir, query_sets, split: str, max_docs: int):
  """Yields (query set, its BeirDataset) for each query set whose file is
  in `data_dir` and that has `split` qrels."""
  for query_set in query_sets:
    if not os.path.exists(os.path.join(data_dir, query_set.queries_file)):
      continue
    dataset = subset(
      beir.BeirDataset.load(
        data_dir,
        queries_file=query_set.queries_file,
        qrels_dir=query_set.qrels_dir,
      ),
      max_docs,
    )
    if dataset.qrels.get(split):
      yield query_set, dataset


@dataclasses.dataclass
class PretrainedSetup:
  """What the pretrained-encoder path adds to a run (all None for T5)."""

  params: Any = None
  batch_transform: Optional[Callable[[dict], dict]] = None
  dense: Optional[evaluation.Baseline] = None
  seconds: float = 0.0


def pretrained_setup(
  model,
  index: index_lib.Index,
  dataset,
  mixture: str,
  cache_dir: str,
  *,
  input_length: int,
  target_length: int,
  seed: int,
  warm: bool,
  temperature: float,
) -> PretrainedSetup:
  """Encoder cache, document vectors, initial params and dense baseline."""
  start = time.time()
  encoder_dir = model.config.encoder_dir
  base = pretrained.initial_params(
    model,
    encoder_dir,
    index=index,
    doc_vectors=None,
    seed=seed,
    input_length=input_length,
    target_length=target_length,
    warm=False,
  )
  doc_rows = pretrained.document_rows(index, dataset.corpus, input_length)
  cache = pretrained.build_encoder_cache(
    model,
    base,
    mixture,
    cache_dir,
    input_length=input_length,
    target_length=target_length,
    extra_rows=list(doc_rows),
  )
  doc_vectors = pretrained.pooled_vectors(model, base, doc_rows, cache)
  params = pretrained.initial_params(
    model,
    encoder_dir,
    index=index,
    doc_vectors=doc_vectors,
    seed=seed,
    input_length=input_length,
    target_length=target_length,
    warm=warm,
    temperature=temperature,
    encoder_params=base["encoder"],
  )
  transform = cache.add_states if model.has_frozen_encoder_layers else None
  logging.info(
    "pretrained setup (cache, document vectors, params): %.1fs",
    time.time() - start,
  )
  return PretrainedSetup(
    params,
    transform,
    dense.encoder_dense_baseline(model, base, index, doc_vectors, input_length),
    time.time() - start,
  )


def evaluate(
  searcher: retrieval.Searcher,
  data_dir: str,
  query_sets: Sequence[evaluation.QuerySet],
  split: str,
  run_dir: str,
  exact_queries: int,
  max_docs: int = 0,
  dense: Optional[evaluation.Baseline] = None,
) -> dict:
  """Metrics for each query set that exists in `data_dir`."""
  results = {}
  for query_set, dataset in query_set_data(
    data_dir, query_sets, split, max_docs
  ):
    results[f"{query_set.name}/{split}"] = evaluation.evaluate_query_set(
      searcher,
      dataset.corpus,
      dataset.queries,
      dataset.qrels[split],
      name=f"{query_set.name}.{split}",
      run_dir=run_dir,
      exact_queries=exact_queries,
      dense=dense,
    )
  return results
