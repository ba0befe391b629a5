"""The dynamic-corpus experiment (DSI++ protocol): the driver over the grid.

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

`run_dynamic_experiment` (the entry point; gin binds it, under its old
name gr.dynamic.run_dynamic_experiment, in gr/experiments/configurables.py;
the protocol's pieces are gr/continual's dynamic_cells, periods,
dsi_metrics and dynamic_report) runs every docid scheme x strategy, writes
results.json / results.csv / results.md and PNG plots under `workdir`
(gr/continual/dynamic_report.py).
Each (scheme, strategy) cell's results are saved as it finishes, so a run
started again skips finished cells.
"""

import dataclasses
import os
import time
from typing import Any, Mapping, Optional, Sequence

from gr import docids as docids_lib
from gr.continual import dynamic_cells as cells
from gr.continual import dynamic_report as report
from gr.continual import period_plan
from gr.experiments import dev_selection
from gr.experiments import tuned_encoder
from gr.continual import periods as periods_lib
from gr.continual.generators import PseudoQueryGenerator
from gr.continual.generators import TextPseudoQueries
from gr.continual.strategies import STRATEGIES
from gr.continual.strategies import Strategy
from gr.continual.strategies import TrainSettings
from gr.continual.strategies import get_strategy
from gr.data import beir
from gr.data import news
from gr.model import models
from gr.search import evaluation
from gr.search import retrieval
from gr.train import checkpoints
from gr.train import encoder_tuning as encoder_tuning_lib
from gr.train import indexing


def run_dynamic_experiment(
  *,
  data_dir: str,
  workdir: str,
  model,
  schemes: Sequence[str] = ("naive", "semantic", "text", "multi"),
  scheme_params: Mapping[str, Mapping[str, Any]] = (),
  strategies: Sequence[str] = tuple(STRATEGIES),
  strategy_overrides: Mapping[str, Mapping[str, Any]] = (),
  docs_fraction: float = 1.0,
  max_docs_per_period: int = 0,
  vocab_size: int = 2000,
  initial_steps: int = 1000,
  update_steps: int = 150,
  settings: TrainSettings = TrainSettings(),
  search: retrieval.SearchConfig = retrieval.SearchConfig(),
  eval_splits: Sequence[str] = ("dev", "test"),
  query_files: Sequence[tuple[str, str]] = (
    ("queries.jsonl", "qrels"),
    ("subtitles/queries.jsonl", "subtitles/qrels"),
  ),
  generator: Optional[PseudoQueryGenerator] = None,
  memory_generator=None,
  memorised_sample: int = 0,
  seeds: Sequence[int] = (0,),
  strategy_seeds: Mapping[str, int] = (),
  seed: Optional[int] = None,
  plan: Optional[period_plan.PlanSettings] = None,
  encoder_tuning: Optional[encoder_tuning_lib.EncoderTuning] = None,
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
  spelling) means seeds=(seed,). plan: the lexical plan beside the model
  (gr/continual/period_plan.py: D0's statistics frozen, the weight chosen
  on D0's held-out queries at each version 0); None: no plan.
  encoder_tuning: the pretrained encoder tuned first on D0's train
  queries only, kept if D0's dense dev MRR@10 rises (`tuned_for_d0`).
  """
  start = time.time()
  seeds = (seed,) if seed is not None else tuple(seeds)
  dataset = beir.BeirDataset.load(data_dir)
  periods = dynamic_periods(
    data_dir, dataset, docs_fraction=docs_fraction,
    max_docs_per_period=max_docs_per_period, seed=seeds[0],
    query_files=query_files, eval_splits=eval_splits,
  )  # fmt: skip
  grid = Grid.of(
    schemes, scheme_params, strategies, strategy_overrides, seeds,
    strategy_seeds, vocab_size,
  )  # fmt: skip
  plan = lexical_plan(data_dir, dataset, periods[0], query_files, plan)
  searchers = cells.SearcherCache(search, settings.input_length, plan)
  results = results_header(periods, seeds)
  model = tuned_for_d0(
    model, data_dir, dataset, periods[0], query_files, encoder_tuning,
    workdir, settings.input_length, results,
  )  # fmt: skip
  cell = cells.CellConfig(
    model=model, settings=settings, generator=generator,
    initial_steps=initial_steps, update_steps=update_steps,
    embedder=_shared_embedder(schemes, scheme_params),
    memory_generator=memory_generator, memorised_sample=memorised_sample,
  )  # fmt: skip
  for run_seed in seeds:
    grid.run_seed(cell, run_seed, periods, dataset, searchers, results, workdir)
  results["cells"] = report.mean_over_seeds(results["by_seed"])
  results["wall_seconds"] = time.time() - start
  report.write_report(results, workdir)
  return results


def lexical_plan(
  data_dir: str,
  dataset: beir.BeirDataset,
  d0: periods_lib.PeriodData,
  query_files: Sequence[tuple[str, str]],
  settings: Optional[period_plan.PlanSettings],
) -> Optional[period_plan.PeriodPlan]:
  """The plan over D0..Dn (None without settings or candidate weights)."""
  if settings is None or not settings.weights:
    return None
  held_out = periods_lib.held_out_queries(
    data_dir, query_files, [settings.selection_split]
  )
  return period_plan.PeriodPlan(
    dataset.corpus,
    list(d0.corpus),
    settings,
    period_plan.d0_queries(held_out, d0.corpus),
  )


def tuned_for_d0(
  model, data_dir, dataset, d0, query_files, tuning, workdir, input_length,
  results,
):  # fmt: skip
  """`model` with its encoder tuned on D0's train queries (pairs whose
  document is not in D0 are dropped, so no later period's queries are
  seen), kept only if dense dev MRR@10 over D0's documents rises
  (gr/experiments/tuned_encoder.py; a dev query of a later document
  counts as a miss for both encoders); the record goes in
  results["encoder_tuning"]. Without tuning, `model`."""
  if tuning is None:
    return model
  selection = dev_selection.LexicalSelection(
    data_dir=data_dir,
    query_sets=[
      evaluation.QuerySet(queries, queries, qrels)
      for queries, qrels in query_files
    ],
    weights=(),
    split="dev",
    eval_split="test",
    max_docs=0,
  )
  model, record = tuned_encoder.tuned_model(
    model,
    periods_lib.initial_dataset(dataset, d0),
    selection,
    tuning,
    workdir=workdir,
    input_length=input_length,
    cache_dir=os.path.join(workdir, "encoder_cache"),
  )
  results.update(record)
  return model


def results_header(periods, seeds: Sequence[int]) -> dict:
  """The results before any cell: periods, the BM25 row, the seeds."""
  return {
    "periods": [
      {"name": p.name, "docs": len(p.corpus), "queries": len(p.queries)}
      for p in periods
    ],
    "bm25": cells.bm25_summary(periods),
    "seeds": list(seeds),
    "by_seed": {},
  }


def dynamic_periods(
  data_dir: str,
  dataset: beir.BeirDataset,
  *,
  docs_fraction: float,
  max_docs_per_period: int,
  seed: int,
  query_files: Sequence[tuple[str, str]],
  eval_splits: Sequence[str],
) -> list[periods_lib.PeriodData]:
  """D0..Dn of the folder's temporal split, sampled with `seed`, with the
  held-out queries of `eval_splits` from each query file."""
  sampled = periods_lib.sample_periods(
    news.load_temporal_periods(data_dir),
    docs_fraction=docs_fraction,
    max_docs_per_period=max_docs_per_period,
    seed=seed,
  )
  queries, qrels = periods_lib.held_out_queries(
    data_dir, query_files, eval_splits
  )
  return periods_lib.period_data(dataset.corpus, sampled, queries, qrels)


@dataclasses.dataclass(frozen=True)
class Grid:
  """The experiment's schemes x strategies, and the seeds each runs."""

  schemes: Sequence[str]
  scheme_params: Mapping[str, Mapping[str, Any]]
  strategies: Mapping[str, Strategy]
  seeds_of: Mapping[str, Sequence[int]]
  vocab_size: int

  @classmethod
  def of(
    cls, schemes, scheme_params, strategies, overrides, seeds, strategy_seeds,
    vocab_size,
  ) -> "Grid":  # fmt: skip
    """The grid of run_dynamic_experiment's arguments (its docstring)."""
    overrides, strategy_seeds = dict(overrides), dict(strategy_seeds)
    return cls(
      schemes,
      dict(scheme_params),
      {
        name: get_strategy(name, **dict(overrides.get(name, {})))
        for name in strategies
      },
      {
        name: seeds[: strategy_seeds.get(name, len(seeds))]
        for name in strategies
      },
      vocab_size,
    )

  def run_seed(
    self, cell, run_seed, periods, dataset, searchers, results, workdir
  ) -> None:
    """Every (scheme, strategy) cell of one seed into results["by_seed"],
    the report rewritten as each cell finishes (partial results). The
    cell's settings take the seed, and so does the default generator
    (body spans and sentences) where the cell has none."""
    cell = dataclasses.replace(
      cell,
      settings=dataclasses.replace(cell.settings, seed=run_seed),
      generator=cell.generator or TextPseudoQueries(seed=run_seed),
    )
    cells_of_seed = results["by_seed"].setdefault(str(run_seed), {})
    seed_dir = os.path.join(workdir, f"seed{run_seed}")
    for scheme in self.schemes:
      params = dict(self.scheme_params.get(scheme, {}))
      for name, strategy in self.strategies.items():
        if run_seed not in self.seeds_of[name]:
          continue
        base_dir = os.path.join(seed_dir, scheme, cells.initial_name(strategy))
        initial = cells.run_initial(
          cell,
          periods,
          dataset,
          scheme,
          params,
          self.vocab_size,
          base_dir,
          searchers,
          sam_rho=strategy.sam_rho,
        )
        cells_of_seed[f"{scheme}/{name}"] = cells.run_cell(
          cell,
          strategy,
          periods,
          base_dir,
          os.path.join(seed_dir, scheme, name),
          searchers,
          initial,
        )
        results["cells"] = report.mean_over_seeds(results["by_seed"])
        report.write_report(results, workdir)


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
  from gr.queries import query_generators  # pylint: disable=g-import-not-at-top
  from gr.model import pretrained  # pylint: disable=g-import-not-at-top
  from gr.index import wordpiece  # pylint: disable=g-import-not-at-top

  vocab = wordpiece.WordPieceVocabulary(
    pretrained.tokenizer_path(model.config.encoder_dir)
  )
  model = models.fit_vocab(model, vocab.vocab_size)
  return query_generators.VectorQueryGenerator(
    model,
    checkpoints.restore_params(model_dir),
    vocab,
    query_generators.GenerationConfig(
      num_queries=num_queries,
      max_query_len=max_query_len,
      top_k=top_k,
      batch_size=batch_size,
      seed=seed,
    ),
  )


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
