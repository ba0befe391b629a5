"""The dynamic-corpus experiment (DSI++ protocol) and its metrics.

Train on D0, then apply D1..D4 (the news benchmark's temporal periods) one
update at a time with a continual strategy (gr/continual/update.py). After step n
the model is evaluated on the held-out queries of every period seen so far,
giving a matrix a[n][i] (performance on D_i's queries after step n; NaN for
i > n). DSI++'s metrics (Mehta et al. 2023, after Chaudhry et al. 2018):

  average performance  A_n  = mean_{i<=n} a[n][i]
  forgetting           F_n  = mean_{i<n} max_{i<=l<n} (a[l][i] - a[n][i])
  learning accuracy    LA_n = mean_{i<=n} a[i][i]

(F_0 = 0. DSI++ writes the max over l in 0..n-1; a[l][i] only exists for
l >= i.) Each is computed for Hits@1 and Hits@10. BM25 re-indexed over the
documents seen so far is the reference row.

`run_dynamic_experiment` (the entry point; gin binds it through
gr/experiments/configurables.py) runs every docid scheme x strategy, writes
results.json / results.csv / results.md and PNG plots under `workdir`
(gr/continual/dynamic_report.py).
Each (scheme, strategy) cell's results are saved as it finishes, so a run
started again skips finished cells.
"""

import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from gr import atomic_io
from gr.train import checkpoints
from gr.continual import update as continual
from gr import docids as docids_lib
from gr.continual import dynamic_report as report
from gr.train import indexing
from gr.search import metrics
from gr.model import models
from gr.search import retrieval
from gr.continual import versions
from gr.search import bm25
from gr.data import beir
from gr.data import news

METRICS = report.METRICS


# ---------------------------------------------------------------- metrics --


def average_performance(a: np.ndarray, n: int) -> float:
  """A_n = mean_{i<=n} a[n][i]; `a` is [steps, steps], NaN above diagonal."""
  return float(np.mean(a[n, : n + 1]))


def forgetting(a: np.ndarray, n: int) -> float:
  """F_n = mean_{i<n} max_{i<=l<n} (a[l][i] - a[n][i]); F_0 = 0."""
  if n == 0:
    return 0.0
  drops = [np.max(a[i:n, i]) - a[n, i] for i in range(n)]
  return float(np.mean(drops))


def learning_accuracy(a: np.ndarray, n: int) -> float:
  """LA_n = mean_{i<=n} a[i][i]."""
  return float(np.mean(np.diag(a)[: n + 1]))


def continual_metrics(a: np.ndarray) -> dict[str, list[float]]:
  """{'A', 'F', 'LA'}: each a list over steps n = 0..len(a)-1."""
  steps = range(len(a))
  return {
    "A": [average_performance(a, n) for n in steps],
    "F": [forgetting(a, n) for n in steps],
    "LA": [learning_accuracy(a, n) for n in steps],
  }


def performance_matrix(
  rows: Sequence[Sequence[Mapping[str, float]]], metric: str
) -> np.ndarray:
  """rows[n][i] = metrics of D_i after step n -> a [steps, steps] (NaN)."""
  a = np.full((len(rows), len(rows)), np.nan)
  for n, row in enumerate(rows):
    for i, values in enumerate(row):
      a[n, i] = values[metric]
  return a


# ------------------------------------------------------------------- data --


@dataclasses.dataclass(frozen=True)
class PeriodData:
  """One period's documents and its held-out queries."""

  name: str
  corpus: dict[str, beir.Document]
  queries: dict[str, str]
  qrels: dict[str, dict[str, int]]


def sample_periods(
  periods: Sequence[news.Period],
  *,
  docs_fraction: float,
  max_docs_per_period: int,
  seed: int,
) -> list[tuple[str, list[str]]]:
  """(name, doc_ids) per period: a seeded fraction, capped (0: no cap)."""
  if not 0 < docs_fraction <= 1:
    raise ValueError(f"docs_fraction must be in (0, 1], got {docs_fraction}")
  rng = random.Random(seed)
  sampled = []
  for period in periods:
    ids = list(period.doc_ids)
    count = max(1, round(docs_fraction * len(ids)))
    if max_docs_per_period:
      count = min(count, max_docs_per_period)
    sampled.append((period.name, sorted(rng.sample(ids, count), key=ids.index)))
  return sampled


def held_out_queries(
  data_dir: str, query_files: Sequence[tuple[str, str]], splits: Sequence[str]
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
  """Queries and qrels of `splits` from each (queries file, qrels dir)."""
  queries, qrels = {}, {}
  for queries_file, qrels_dir in query_files:
    if not os.path.exists(os.path.join(data_dir, queries_file)):
      continue
    dataset = beir.BeirDataset.load(
      data_dir, queries_file=queries_file, qrels_dir=qrels_dir
    )
    for split in splits:
      for qid, docs in dataset.qrels.get(split, {}).items():
        qrels[qid] = docs
        queries[qid] = dataset.queries[qid]
  return queries, qrels


def period_data(
  corpus: Mapping[str, beir.Document],
  sampled: Sequence[tuple[str, list[str]]],
  queries: Mapping[str, str],
  qrels: Mapping[str, Mapping[str, int]],
) -> list[PeriodData]:
  """Each period's documents and the queries whose relevant docs are in it."""
  result = []
  for name, doc_ids in sampled:
    ids = set(doc_ids)
    period_qrels = {
      q: {d: s for d, s in docs.items() if d in ids and s > 0}
      for q, docs in qrels.items()
    }
    period_qrels = {q: docs for q, docs in period_qrels.items() if docs}
    result.append(
      PeriodData(
        name,
        {d: corpus[d] for d in doc_ids},
        {q: queries[q] for q in period_qrels},
        period_qrels,
      )
    )
  return result


def initial_dataset(
  dataset: beir.BeirDataset, d0: PeriodData
) -> beir.BeirDataset:
  """D0's documents with the train queries relevant to them."""
  return dataset.restricted_to(d0.corpus, splits=["train"])


# ------------------------------------------------------------- evaluation --


def evaluate_periods(
  run: Mapping[str, Mapping[str, float]], periods: Sequence[PeriodData]
) -> list[dict[str, float]]:
  """Hits@1/Hits@10 of `run` on each period's queries (trec_eval)."""
  return [
    metrics.evaluate_run(
      p.qrels,
      {q: run.get(q, {}) for q in p.qrels},
      hits_ks=(1, 10),
      recall_ks=(10,),
    )
    for p in periods
  ]


def all_queries(periods: Sequence[PeriodData]) -> dict[str, str]:
  return {q: t for p in periods for q, t in p.queries.items()}


def bm25_rows(periods: Sequence[PeriodData]) -> list[list[dict[str, float]]]:
  """BM25 re-indexed over D0..Dn at each step n, on D0..Dn's queries."""
  rows = []
  for n in range(len(periods)):
    seen = periods[: n + 1]
    corpus = {d: doc for p in seen for d, doc in p.corpus.items()}
    rows.append(
      evaluate_periods(bm25.bm25_run(corpus, all_queries(seen)), seen)
    )
  return rows


class SearcherCache:
  """One Searcher (one compiled search) per model config, re-pointed at
  each version's params and index."""

  def __init__(self, config: retrieval.SearchConfig, input_length: int):
    self.config, self.input_length = config, input_length
    self._searchers: dict[Any, retrieval.Searcher] = {}

  def get(self, model, version: versions.Version) -> retrieval.Searcher:
    model = models.fit_vocab(model, version.index.vocab.vocab_size)
    config = retrieval.retrieval_config(
      self.config, version.index.max_docid_length()
    )
    key = (model.config, config)
    if key not in self._searchers:
      self._searchers[key] = retrieval.Searcher(
        model,
        version.params,
        version.index,
        config,
        input_length=self.input_length,
      )
    searcher = self._searchers[key]
    searcher.params, searcher.index = version.params, version.index
    searcher.trie = version.index.build_trie()
    searcher.refresh_trie()
    return searcher


def evaluate_version(
  searchers: SearcherCache, model, model_dir: str, seen: Sequence[PeriodData]
) -> list[dict[str, float]]:
  """The latest version in `model_dir` on each seen period's queries."""
  version = versions.load_version(model_dir)
  searcher = searchers.get(model, version)
  return evaluate_periods(searcher.run(all_queries(seen)), seen)


# ------------------------------------------------------------- the loop --


@dataclasses.dataclass(frozen=True)
class CellConfig:
  """Everything one (scheme, strategy) sequence of updates needs."""

  model: Any
  settings: continual.TrainSettings
  generator: continual.PseudoQueryGenerator
  initial_steps: int
  update_steps: int
  embedder: Any = None
  memory_generator: Any = None
  memorised_sample: int = 0


def update_steps_for(
  strategy: continual.Strategy,
  cell: CellConfig,
  num_docs: int,
  initial_docs: int,
) -> int:
  """Gradient updates of one update; retrain scales D0's with the corpus."""
  if strategy.retrain:
    return math.ceil(cell.initial_steps * num_docs / initial_docs)
  return cell.update_steps


def run_updates(
  cell: CellConfig,
  strategy: continual.Strategy,
  periods: Sequence[PeriodData],
  base_dir: str,
  workdir: str,
  searchers: SearcherCache,
  first_row,
) -> dict:
  """D1..Dn on a copy of the initial version; evaluation after each."""
  model_dir, index_dir = (
    os.path.join(workdir, "model"),
    os.path.join(workdir, "index"),
  )
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.copytree(os.path.join(base_dir, "model"), model_dir)
  shutil.copytree(os.path.join(base_dir, "index"), index_dir)
  rows, steps = [first_row], []
  for n in range(1, len(periods)):
    num_docs = sum(len(p.corpus) for p in periods[: n + 1])
    result = continual.apply_update(
      model_dir=model_dir,
      index_dir=index_dir,
      model=cell.model,
      new_documents=periods[n].corpus,
      deleted_doc_ids=[],
      strategy=strategy,
      train_steps=update_steps_for(
        strategy, cell, num_docs, len(periods[0].corpus)
      ),
      settings=cell.settings,
      generator=cell.generator,
      embedder=cell.embedder,
      memory_generator=cell.memory_generator,
      keep=2,
    )
    rows.append(
      evaluate_version(searchers, cell.model, model_dir, periods[: n + 1])
    )
    steps.append(
      {"gradient_updates": result.gradient_updates, "seconds": result.seconds}
    )
    logging.info("%s step %d: %s", strategy.name, n, rows[-1])
  return {
    "rows": rows,
    "steps": steps,
    "memorised_d0": memorised(searchers, cell, model_dir, periods[0]),
    "storage": version_storage(model_dir),
  }


def memorised(
  searchers: "SearcherCache", cell: CellConfig, model_dir: str, d0: PeriodData
) -> Optional[float]:
  """DSI++'s memorised documents: the fraction of a seeded sample of D0
  whose own body (cut to the input length) retrieves it at rank 1 from the
  latest version (None when `cell.memorised_sample` is 0)."""
  if not cell.memorised_sample:
    return None
  rng = random.Random(0)
  ids = sorted(
    rng.sample(sorted(d0.corpus), min(cell.memorised_sample, len(d0.corpus)))
  )
  version = versions.load_version(model_dir)
  run = searchers.get(cell.model, version).run(
    {d: d0.corpus[d].text for d in ids}
  )
  top1 = [
    max(run.get(d, {"": 0}).items(), key=lambda kv: kv[1])[0] for d in ids
  ]
  return sum(t == d for t, d in zip(top1, ids)) / len(ids)


def _bytes(path: str) -> int:
  return sum(
    os.path.getsize(os.path.join(root, f))
    for root, _, files in os.walk(path)
    for f in files
  )


def version_storage(model_dir: str) -> dict[str, int]:
  """Bytes the latest checkpoint stores: all of it, and its memory/."""
  artifact = checkpoints.load_artifact(model_dir)
  step_dir = artifact.parent.parent
  return {
    "checkpoint_bytes": _bytes(os.fspath(step_dir)),
    "memory_bytes": _bytes(os.path.join(artifact, versions.MEMORY_DIR)),
  }


def run_initial(
  cell: CellConfig,
  periods: Sequence[PeriodData],
  dataset: beir.BeirDataset,
  scheme: str,
  scheme_params: Mapping[str, Any],
  vocab_size: int,
  base_dir: str,
  searchers: SearcherCache,
  sam_rho: float = 0.0,
) -> dict:
  """Version 0 on D0, indexed with SAM radius `sam_rho` (once per scheme
  and radius, reused by every strategy of that radius)."""
  result_path = os.path.join(base_dir, "initial.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  shutil.rmtree(base_dir, ignore_errors=True)
  model_dir = os.path.join(base_dir, "model")
  settings = dataclasses.replace(
    cell.settings,
    optimizer=dataclasses.replace(cell.settings.optimizer, sam_rho=sam_rho),
  )
  result = continual.build_initial_version(
    model_dir=model_dir,
    index_dir=os.path.join(base_dir, "index"),
    model=cell.model,
    dataset=initial_dataset(dataset, periods[0]),
    scheme=scheme,
    scheme_params=scheme_params,
    vocab_size=vocab_size,
    train_steps=cell.initial_steps,
    settings=settings,
    generator=cell.generator,
  )
  initial = {
    "row": evaluate_version(searchers, cell.model, model_dir, periods[:1]),
    "gradient_updates": result.gradient_updates,
    "seconds": result.seconds,
    "memorised_d0": memorised(searchers, cell, model_dir, periods[0]),
  }
  _write_json(result_path, initial)
  return initial


def bm25_summary(periods: Sequence[PeriodData]) -> dict:
  """The BM25 reference row (no gradient updates)."""
  free = {"gradient_updates": 0, "seconds": 0.0}
  return cell_summary(bm25_rows(periods), [free] * (len(periods) - 1), free)


def cell_summary(rows, steps, initial, extra=None) -> dict:
  """Matrices, DSI++ metrics and costs of one (scheme, strategy) run."""
  summary = {
    "steps": [
      {
        "gradient_updates": initial["gradient_updates"],
        "seconds": initial["seconds"],
      }
    ]
    + steps,
    **(extra or {}),
  }
  for metric in METRICS:
    a = performance_matrix(rows, metric)
    summary[metric] = {"matrix": report.nan_to_none(a), **continual_metrics(a)}
  return summary


def _write_json(path: str, content) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic_io.write_json(path, content, indent=1)


# ------------------------------------------------------------ entry point --
# (gin binds it and vector_query_generator through
# gr/experiments/configurables.py)


def run_dynamic_experiment(
  *,
  data_dir: str,
  workdir: str,
  model,
  schemes: Sequence[str] = ("naive", "semantic", "text", "multi"),
  scheme_params: Mapping[str, Mapping[str, Any]] = (),
  strategies: Sequence[str] = tuple(continual.STRATEGIES),
  strategy_overrides: Mapping[str, Mapping[str, Any]] = (),
  docs_fraction: float = 1.0,
  max_docs_per_period: int = 0,
  vocab_size: int = 2000,
  initial_steps: int = 1000,
  update_steps: int = 150,
  settings: continual.TrainSettings = continual.TrainSettings(),
  search: retrieval.SearchConfig = retrieval.SearchConfig(),
  eval_splits: Sequence[str] = ("dev", "test"),
  query_files: Sequence[tuple[str, str]] = (
    ("queries.jsonl", "qrels"),
    ("subtitles/queries.jsonl", "subtitles/qrels"),
  ),
  generator: Optional[continual.PseudoQueryGenerator] = None,
  memory_generator=None,
  memorised_sample: int = 0,
  seeds: Sequence[int] = (0,),
  strategy_seeds: Mapping[str, int] = (),
  seed: Optional[int] = None,
) -> dict:
  """Every scheme x strategy x seed on the temporal split; returns the
  results (per seed, and mean/std over seeds).

  generator: pseudo-queries for new documents (default: body sentences
  and spans, TextPseudoQueries). memory_generator: the generative memory
  (`vector_query_generator`) for generative replay; without it generative
  replay reads old bodies. strategy_overrides: {strategy: {field: value}}
  (e.g. the replay budget, replay_per_batch). seeds: each seed trains,
  samples and shuffles anew (the period split is seed 0's).
  strategy_seeds: {strategy: n} runs that strategy for the first n seeds
  only (e.g. an expensive reference); its mean is then over n. `seed` (old
  spelling) means seeds=(seed,).
  """
  start = time.time()
  seeds = (seed,) if seed is not None else tuple(seeds)
  dataset = beir.BeirDataset.load(data_dir)
  sampled = sample_periods(
    news.load_temporal_periods(data_dir),
    docs_fraction=docs_fraction,
    max_docs_per_period=max_docs_per_period,
    seed=seeds[0],
  )
  queries, qrels = held_out_queries(data_dir, query_files, eval_splits)
  periods = period_data(dataset.corpus, sampled, queries, qrels)
  searchers = SearcherCache(search, settings.input_length)
  overrides = dict(strategy_overrides)
  seeds_of = {
    name: seeds[: dict(strategy_seeds).get(name, len(seeds))]
    for name in strategies
  }
  results = {
    "periods": [
      {"name": p.name, "docs": len(p.corpus), "queries": len(p.queries)}
      for p in periods
    ],
    "bm25": bm25_summary(periods),
    "seeds": list(seeds),
    "by_seed": {},
  }
  for run_seed in seeds:
    cell = CellConfig(
      model=model,
      settings=dataclasses.replace(settings, seed=run_seed),
      generator=generator or continual.TextPseudoQueries(seed=run_seed),
      initial_steps=initial_steps,
      update_steps=update_steps,
      embedder=_shared_embedder(schemes, scheme_params),
      memory_generator=memory_generator,
      memorised_sample=memorised_sample,
    )
    seed_dir = os.path.join(workdir, f"seed{run_seed}")
    cells = results["by_seed"][str(run_seed)] = {}
    for scheme in schemes:
      params = dict(dict(scheme_params).get(scheme, {}))
      for name in strategies:
        if run_seed not in seeds_of[name]:
          continue
        strategy = continual.get_strategy(name, **dict(overrides.get(name, {})))
        base_dir = os.path.join(seed_dir, scheme, _initial_name(strategy))
        initial = run_initial(
          cell,
          periods,
          dataset,
          scheme,
          params,
          vocab_size,
          base_dir,
          searchers,
          sam_rho=strategy.sam_rho,
        )
        cells[f"{scheme}/{name}"] = run_cell(
          cell,
          strategy,
          periods,
          base_dir,
          os.path.join(seed_dir, scheme, name),
          searchers,
          initial,
        )
        results["cells"] = report.mean_over_seeds(results["by_seed"])
        report.write_report(results, workdir)  # partial results as cells finish
  results["cells"] = report.mean_over_seeds(results["by_seed"])
  results["wall_seconds"] = time.time() - start
  report.write_report(results, workdir)
  return results


def vector_query_generator(
  *,
  model_dir: str,
  model,
  num_queries: int = 1,
  max_query_len: int = 32,
  top_k: int = 10,
  batch_size: int = 64,
  seed: int = 0,
):
  """The generative memory: a doc2query model trained with vector sources
  (scripts/generate_queries.py --vector_every) loaded from `model_dir`."""
  from gr.queries import doc2query  # pylint: disable=g-import-not-at-top
  from gr.model import pretrained  # pylint: disable=g-import-not-at-top
  from gr.index import wordpiece  # pylint: disable=g-import-not-at-top

  vocab = wordpiece.WordPieceVocabulary(
    pretrained.tokenizer_path(model.config.encoder_dir)
  )
  model = models.fit_vocab(model, vocab.vocab_size)
  return doc2query.VectorQueryGenerator(
    model,
    checkpoints.restore_params(model_dir),
    vocab,
    doc2query.GenerationConfig(
      num_queries=num_queries,
      max_query_len=max_query_len,
      top_k=top_k,
      batch_size=batch_size,
      seed=seed,
    ),
  )


def _initial_name(strategy: continual.Strategy) -> str:
  return f"initial_sam{strategy.sam_rho:g}" if strategy.sam_rho else "initial"


def run_cell(
  cell, strategy, periods, base_dir, cell_dir, searchers, initial
) -> dict:
  """One (scheme, strategy): cached in cell_dir/result.json."""
  result_path = os.path.join(cell_dir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      return json.load(f)
  run = run_updates(
    cell,
    strategy,
    periods,
    base_dir,
    os.path.join(cell_dir, "work"),
    searchers,
    initial["row"],
  )
  summary = cell_summary(
    run["rows"],
    run["steps"],
    initial,
    {
      "memorised_d0": [initial.get("memorised_d0"), run["memorised_d0"]],
      "storage": run["storage"],
    },
  )
  _write_json(result_path, summary)
  shutil.rmtree(os.path.join(cell_dir, "work"), ignore_errors=True)
  return summary


def _shared_embedder(
  schemes: Sequence[str], scheme_params: Mapping[str, Mapping[str, Any]]
):
  """One MiniLM embedder for every update whose scheme needs one
  (indexing.needs_embedder; compiled once), else None."""
  if not any(
    indexing.needs_embedder(
      docids_lib.get_scheme(name, **dict(dict(scheme_params).get(name, {})))
    )
    for name in schemes
  ):
    return None
  from gr.model import embed  # pylint: disable=g-import-not-at-top

  return embed.Embedder.load()
