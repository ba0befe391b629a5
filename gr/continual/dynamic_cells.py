"""One cell of the dynamic-corpus experiment: a scheme x strategy run.

Version 0 on D0 (`run_initial`, once per scheme and SAM radius), then
D1..Dn one update at a time on a copy of it (`run_updates`), evaluated on
every period seen so far after each step (`SearcherCache`: one compiled
search per model config). Each cell's summary (`cell_summary`: matrices,
DSI++ metrics, costs) is saved as it finishes, so a run started again
skips finished cells.
"""

import dataclasses
import json
import logging
import math
import os
import random
import shutil
from typing import Any, Mapping, Optional, Sequence

from gr import atomic_io
from gr.continual import dsi_metrics
from gr.continual import dynamic_report as report
from gr.continual import period_plan
from gr.continual import periods as periods_lib
from gr.continual import update as continual
from gr.continual import versions
from gr.continual.generators import PseudoQueryGenerator
from gr.continual.strategies import Strategy
from gr.continual.strategies import TrainSettings
from gr.continual.periods import PeriodData
from gr.data import beir
from gr.model import models
from gr.search import retrieval
from gr.train import checkpoints

METRICS = report.METRICS


class SearcherCache:
  """One Searcher (one compiled search) per model config, re-pointed at
  each version's params and index (once per version: its trie and plan
  are built once), and with a `plan` (PeriodPlan) at the weight it is
  given."""

  def __init__(
    self,
    config: retrieval.SearchConfig,
    input_length: int,
    plan: Optional[period_plan.PeriodPlan] = None,
  ):
    self.config, self.input_length, self.plan = config, input_length, plan
    self._searchers: dict[Any, retrieval.Searcher] = {}
    self._pointed_at: dict[Any, versions.Version] = {}

  def get(
    self, model, version: versions.Version, lexical_weight: float = 0.0
  ) -> retrieval.Searcher:
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
    if self._pointed_at.get(key) is not version:
      term_sets = self.plan.term_sets(version.index) if self.plan else None
      searcher.repoint(version.params, version.index, term_sets)
      self._pointed_at[key] = version
    searcher.lexical_weight = lexical_weight if self.plan else 0.0
    return searcher

  def choose_weight(self, model, version: versions.Version) -> Optional[dict]:
    """{"chosen", "MRR@10": {weight: mean}} of the plan on `version`
    (None without a plan)."""
    if self.plan is None:
      return None
    weight, table = self.plan.choose(self.get(model, version))
    return {"chosen": weight, "MRR@10": table}


def evaluate_version(
  searchers: SearcherCache,
  model,
  version: versions.Version,
  seen: Sequence[PeriodData],
  lexical_weight: float = 0.0,
) -> list[dict[str, float]]:
  """`version` on each seen period's queries."""
  searcher = searchers.get(model, version, lexical_weight)
  return periods_lib.evaluate_periods(
    searcher.run(periods_lib.all_queries(seen)), seen
  )


def chosen_weight(initial: Mapping[str, Any]) -> float:
  """The plan's weight version 0 chose (0: no plan)."""
  return (initial.get("lexical_weight") or {}).get("chosen", 0.0)


@dataclasses.dataclass(frozen=True)
class CellConfig:
  """Everything one (scheme, strategy) sequence of updates needs."""

  model: Any
  settings: TrainSettings
  generator: PseudoQueryGenerator
  initial_steps: int
  update_steps: int
  embedder: Any = None
  memory_generator: Any = None
  memorised_sample: int = 0


def update_steps_for(
  strategy: Strategy,
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
  strategy: Strategy,
  periods: Sequence[PeriodData],
  base_dir: str,
  workdir: str,
  searchers: SearcherCache,
  initial: Mapping[str, Any],
) -> dict:
  """D1..Dn on a copy of the initial version; evaluation after each, at
  the plan weight version 0 chose."""
  model_dir, index_dir = (
    os.path.join(workdir, "model"),
    os.path.join(workdir, "index"),
  )
  shutil.rmtree(workdir, ignore_errors=True)
  shutil.copytree(os.path.join(base_dir, "model"), model_dir)
  shutil.copytree(os.path.join(base_dir, "index"), index_dir)
  rows, steps, weight = [initial["row"]], [], chosen_weight(initial)
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
    version = versions.load_version(model_dir)
    rows.append(
      evaluate_version(searchers, cell.model, version, periods[: n + 1], weight)
    )
    steps.append(
      {"gradient_updates": result.gradient_updates, "seconds": result.seconds}
    )
    logging.info("%s step %d: %s", strategy.name, n, rows[-1])
  return {
    "rows": rows,
    "steps": steps,
    "memorised_d0": memorised(searchers, cell, version, periods[0], weight),
    "storage": version_storage(model_dir),
  }


def memorised(
  searchers: "SearcherCache",
  cell: CellConfig,
  version: versions.Version,
  d0: PeriodData,
  lexical_weight: float = 0.0,
) -> Optional[float]:
  """DSI++'s memorised documents: the fraction of a seeded sample of D0
  whose own body (cut to the input length) retrieves it at rank 1 from
  `version` (None when `cell.memorised_sample` is 0)."""
  if not cell.memorised_sample:
    return None
  rng = random.Random(0)
  ids = sorted(
    rng.sample(sorted(d0.corpus), min(cell.memorised_sample, len(d0.corpus)))
  )
  run = searchers.get(cell.model, version, lexical_weight).run(
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
    dataset=periods_lib.initial_dataset(dataset, periods[0]),
    scheme=scheme,
    scheme_params=scheme_params,
    vocab_size=vocab_size,
    train_steps=cell.initial_steps,
    settings=settings,
    generator=cell.generator,
  )
  version = versions.load_version(model_dir)
  initial = {"lexical_weight": searchers.choose_weight(cell.model, version)}
  weight = chosen_weight(initial)
  initial.update(
    row=evaluate_version(searchers, cell.model, version, periods[:1], weight),
    gradient_updates=result.gradient_updates,
    seconds=result.seconds,
    memorised_d0=memorised(searchers, cell, version, periods[0], weight),
  )
  _write_json(result_path, initial)
  return initial


def bm25_summary(periods: Sequence[PeriodData]) -> dict:
  """The BM25 reference row (no gradient updates)."""
  free = {"gradient_updates": 0, "seconds": 0.0}
  return cell_summary(
    periods_lib.bm25_rows(periods), [free] * (len(periods) - 1), free
  )


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
    a = dsi_metrics.performance_matrix(rows, metric)
    summary[metric] = {
      "matrix": report.nan_to_none(a),
      **dsi_metrics.continual_metrics(a),
    }
  return summary


def _write_json(path: str, content) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  atomic_io.write_json(path, content, indent=1)


def initial_name(strategy: Strategy) -> str:
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
    initial,
  )
  summary = cell_summary(
    run["rows"],
    run["steps"],
    initial,
    {
      "memorised_d0": [initial.get("memorised_d0"), run["memorised_d0"]],
      "storage": run["storage"],
      "lexical_weight": initial.get("lexical_weight"),
    },
  )
  _write_json(result_path, summary)
  shutil.rmtree(os.path.join(cell_dir, "work"), ignore_errors=True)
  return summary
