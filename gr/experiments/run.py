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
  workdir/lexical_weight.json  the plan's weight chosen on dev (gr/decode/plan.py
                        `save_weight`), so the service fuses as evaluated
"""

import dataclasses
import json
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
from gr.index import artifact as index_lib
from gr.index import lexicon
from gr.train import indexing
from gr.model import pretrained
from gr.queries import pseudo_queries as pseudo_lib
from gr.search import retrieval
from gr.model import model_config
from gr.train import checkpoints
from gr.train import streaming
from gr.train import tasks
from gr.data import beir
from gr.experiments import configurables
from gr.experiments import dev_selection
from gr.experiments import lexical_head
from gr.experiments import tuned_encoder
from gr.train import encoder_tuning as encoder_tuning_lib
from gr.model import lexical as lexical_lib
from gr.experiments.dev_selection import LexicalSelection, subset

DEFAULT_QUERY_SETS = (
  evaluation.QuerySet("titles"),
  evaluation.QuerySet(
    "subtitles", "subtitles/queries.jsonl", "subtitles/qrels"
  ),
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


@gin.configurable
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
  term_language: str = "",
  term_words: bool = False,
  selection_split: str = "dev",
  plan_in_training: bool = False,
  early_stopping: bool = False,
  term_weight_head: Optional[lexical_head.HeadTraining] = None,
  stream_above_docs: int = streaming.DEFAULT_ABOVE_DOCS,
  embeddings_file: Optional[str] = None,
  encoder_tuning: Optional[encoder_tuning_lib.EncoderTuning] = None,
) -> dict:
  """Index, train, evaluate. Returns {query set name: metrics}.

  max_docs > 0 keeps the first max_docs documents (and their queries). The
  family (gr/model/family.py) chooses vocabulary and start; a pretrained
  encoder's frozen layers are cached (`encoder_cache_dir`, default
  workdir/encoder_cache; not for train_steps 0: step 0) + dense baseline.
  lexical_weights, selection_split, term_*, plan_in_training: the lexical
  plan (`LexicalSelection`, `ExperimentTrainer`). early_stopping: the best
  step on dev. term_weight_head (gr/experiments/lexical_head.py) and
  encoder_tuning (gr/experiments/tuned_encoder.py): trained parts kept if
  dev improves. stream_above_docs: more documents stream tasks from
  workdir/examples. embeddings_file: a user's .npz of vectors for semantic
  / rq docids (gr/data/embeddings_file.py).
  """
  start = time.time()
  dataset = subset(beir.BeirDataset.load(data_dir), max_docs)
  name = corpus_name(data_dir)
  pseudo = pseudo_queries(dataset, pseudo_query_spans,
    pseudo_query_sentences, pseudo_queries_file, seed)  # fmt: skip
  plan = LexicalSelection(
    data_dir, query_sets, lexical_weights, selection_split, eval_split, max_docs
  )
  trainer = ExperimentTrainer(
    workdir, data_dir, dataset, plan, search, term_set_size, term_language,
    term_words, plan_in_training, train_steps, batch_size, input_length, seed,
    early_stopping, term_weight_head)  # fmt: skip
  cache_dir = encoder_cache_dir or os.path.join(workdir, "encoder_cache")
  model, tuning = tuned_encoder.tuned_model(model, dataset, plan,
    encoder_tuning, workdir=workdir, input_length=input_length,
    cache_dir=cache_dir)  # fmt: skip
  register_tasks, cache_rows = docid_tasks(
    name, dataset, pseudo, task_rates, input_length, stream_above_docs, workdir
  )
  spec = indexing.IndexSpec(scheme, scheme_params or {}, vocab_size, seed,
    embeddings_file)  # fmt: skip
  run = indexing.index_and_train(
    dataset, os.path.join(workdir, "index"), model, spec,
    input_length=input_length, register_tasks=register_tasks,
    cache_rows=cache_rows if train_steps > 0 else lambda index: (),
    warm=warm_start, train=trainer,
    temperature=warm_start_temperature, states_dir=cache_dir,
    embedding_cache_dir=cache_dir)  # fmt: skip
  results = {**trainer.evaluate(run, exact_queries), **tuning}
  return trainer.report(results, run, scheme, name, started=start)


def corpus_name(data_dir: str) -> str:
  """The folder's name with non-alphanumerics as _ (task names use it)."""
  return "".join(
    c if c.isalnum() else "_"
    for c in os.path.basename(os.path.normpath(data_dir))
  )


def docid_tasks(
  name: str,
  dataset,
  pseudo,
  task_rates,
  input_length: int,
  stream_above_docs: int = streaming.DEFAULT_ABOVE_DOCS,
  workdir: Optional[str] = None,
):
  """(register_tasks, cache_rows) of index_and_train: the run's mixture at
  `task_rates`, and the encoder inputs [input_length] of every docid task
  at rate 1 (what the frozen-layer cache covers, whatever the rates). A
  corpus of more than `stream_above_docs` documents has its tasks streamed
  from shards in workdir/examples (gr/train/streaming.py; no workdir: the
  default folder)."""
  examples_dir = os.path.join(workdir, "examples") if workdir else None
  stream = streaming.Streaming(stream_above_docs, examples_dir)

  def register_tasks(index) -> str:
    return tasks.register_mixture(
      name, dataset, index, pseudo, dict(task_rates), streaming=stream
    )

  def cache_rows(index) -> list[np.ndarray]:
    every_task = tasks.register_mixture(
      name,
      dataset,
      index,
      pseudo,
      {kind: 1.0 for kind in tasks.DOCID_KINDS},
      suffix="all_docid_tasks",
      streaming=stream,
    )
    return pretrained.mixture_encoder_inputs(
      every_task,
      input_length=input_length,
      target_length=index.max_docid_length(),
    )

  return register_tasks, cache_rows


@dataclasses.dataclass
class ExperimentTrainer:
  """run_experiment's training step (index_and_train's `train`) and its
  evaluation: the model config and term sets saved before training (so
  every checkpoint's artifact has them), then the gin-bound train().
  term_words: a word of several pieces is one term (lexicon.word_folding).
  plan_in_training: the plan's weight is chosen at step 0 too, and
  training adds that plan's first-token bonus to the logits (the model
  learns on top of the plan, `plan_bias_transform`). early_stopping: every
  saved checkpoint and step 0 are scored on dev and the best is the run's
  result (gr/experiments/dev_selection.py; the curve goes in the results)."""

  workdir: str
  data_dir: str
  dataset: beir.BeirDataset
  plan: LexicalSelection
  search: retrieval.SearchConfig
  term_set_size: int
  term_language: str
  term_words: bool
  plan_in_training: bool
  train_steps: int
  batch_size: int
  input_length: int
  seed: int
  early_stopping: bool = False
  head_training: Optional[lexical_head.HeadTraining] = None
  term_sets: Any = None
  selection_at_start: Optional[dict] = None
  seconds: float = 0.0
  curve: Optional[list] = None
  chosen_step: Optional[int] = None

  def searcher(self, run: indexing.IndexedRun, params) -> retrieval.Searcher:
    return retrieval.Searcher(
      run.model,
      params,
      run.index,
      retrieval.retrieval_config(self.search, run.target_length),
      input_length=self.input_length,
      term_sets=self.term_sets,
    )

  def __call__(self, run: indexing.IndexedRun):
    """The trained params (the initial ones for train_steps = 0)."""
    model_config.save_model_config(
      self.workdir,
      run.model.config,
      input_length=self.input_length,
      corpus_path=os.path.join(self.data_dir, "corpus.jsonl"),
      scoring={
        "sparse_output": self.search.sparse_output,
        "score_mode": self.search.score_mode,
      },
    )
    if self.plan.weights:
      self.term_sets = lexicon.saved_term_sets(
        run.index,
        self.dataset.corpus,
        os.path.join(self.workdir, "index"),
        max_terms=self.term_set_size,
        language=self.term_language,
        words=self.term_words,
      )
    transform = run.batch_transform
    if self.plan_in_training and self.plan.weights and self.train_steps > 0:
      if run.params is None:
        raise ValueError("plan_in_training needs initial params to choose on")
      start_searcher = self.searcher(run, run.params)
      self.selection_at_start = self.plan.choose(start_searcher)
      transform = plan_bias_transform(start_searcher, transform)
      del start_searcher
    if self.train_steps <= 0 and run.params is None:
      return run.params
    train_start = time.time()
    # The gin-bound train: gin files bind train.optimizer, checkpoint_every...
    params = configurables.train(
      model=run.model,
      mixture_or_task_name=run.mixture,
      train_steps=max(self.train_steps, 0),
      batch_size=self.batch_size,
      model_dir=os.path.join(self.workdir, "model"),
      input_length=self.input_length,
      target_length=run.target_length,
      seed=self.seed,
      init_params=run.start.params,
      batch_transform=transform,
      # Step 0 is saved for early stopping, and as the servable model of
      # a run that does not train.
      checkpoint_start=self.early_stopping or self.train_steps <= 0,
      artifact_dir=index_lib.current_version_dir(
        os.path.join(self.workdir, "index")
      ),
    ).params
    self.seconds = time.time() - train_start
    if self.early_stopping and self.train_steps > 0:
      return self._early_stop(run, params)
    return params

  def _early_stop(self, run: indexing.IndexedRun, final_params):
    """The params of the step (0 or a checkpoint) best on dev."""
    model_dir = os.path.join(self.workdir, "model")
    saved = checkpoints.make_manager(model_dir, keep=None).all_steps()

    def params_at(step):
      if step == 0 and run.params is not None:
        return run.params
      return checkpoints.restore_params(model_dir, step)

    # Step 0 is saved (train's checkpoint_start), so every candidate can
    # be served; it is evaluated from run.params, the same start.
    self.curve = dev_selection.learning_curve(
      self.plan,
      sorted(saved),
      lambda step: self.searcher(run, params_at(step)),
    )
    self.chosen_step = dev_selection.best_step(self.curve)
    if self.chosen_step == max(saved, default=0):
      return final_params
    return params_at(self.chosen_step)

  def evaluate(self, run: indexing.IndexedRun, exact_queries: int) -> dict:
    """Metrics of the trained run per query set (+ the plan's choice)."""
    if run.params is None:
      raise ValueError(
        "train_steps = 0 needs a pretrained encoder (there is "
        "no initial model to evaluate otherwise)"
      )
    searcher = self.searcher(run, run.params)
    selection = self._selection(searcher)
    if self.selection_at_start:
      selection["at_start"] = self.selection_at_start
    head = self._trained_head(searcher, selection)
    results = evaluate(
      searcher,
      self.data_dir,
      self.plan.query_sets,
      self.plan.eval_split,
      os.path.join(self.workdir, "runs"),
      exact_queries,
      self.plan.max_docs,
      dense=dense_baseline(run, self.input_length),
    )
    if selection:
      results["lexical_weight"] = selection
      plan_lib.save_weight(self.workdir, selection, step=self.chosen_step)
    if self.curve is not None:
      results["learning_curve"] = self.curve
      results["early_stopping"] = {"chosen_step": self.chosen_step}
    if head is not None:
      results["term_weight_head"] = head
    return results

  def _trained_head(self, searcher, selection: dict) -> Optional[dict]:
    """The term-weight head's training record (None: not trained); a head
    that beats the zero head on dev is installed in `searcher`, saved, and
    its re-chosen weight replaces `selection`'s."""
    if self.head_training is None or not selection:
      return None
    record = lexical_head.improve(searcher, self.plan, self.head_training)
    if record is not None and record["selection"] is not None:
      lexical_lib.save_head(self.workdir, searcher.term_weight_head)
      selection.clear()
      selection.update(record["selection"])
    return record

  def _selection(self, searcher: retrieval.Searcher) -> dict:
    """The plan's weight chosen on dev for `searcher` (set on it): the
    early-stopping curve's choice at the chosen step when there is one
    (the same params, so not searched again)."""
    if self.curve is not None:
      point = next(p for p in self.curve if p["step"] == self.chosen_step)
      searcher.lexical_weight = point["dev"]["chosen"]
      return dict(point["dev"])
    return self.plan.choose(searcher) if self.plan.weights else {}

  def report(self, results, run, scheme: str, name: str, *, started: float):
    """`results` with the run's facts, printed as a table and written to
    workdir/results.json."""
    results["run"] = {
      "train_steps": self.train_steps,
      "scheme": scheme,
      "documents": len(self.dataset.corpus),
      "train_seconds": round(self.seconds, 1),
      "setup_seconds": round(run.start.seconds, 1),
      "total_seconds": round(time.time() - started, 1),
    }
    steps = f"{self.train_steps} steps"
    if self.chosen_step is not None:
      steps += f", step {self.chosen_step} chosen on dev"
    print(
      evaluation.format_results(
        {k: v for k, v in results.items() if "/" in k},
        f"{scheme} docids, {steps}, {name} "
        f"({len(self.dataset.corpus)} documents) {self.plan.eval_split}",
      )
    )
    path = os.path.join(self.workdir, "results.json")
    with atomic_io.atomic_open(path) as f:
      json.dump(results, f, indent=1)
    return results


def dense_baseline(
  run: indexing.IndexedRun, input_length: int
) -> Optional[evaluation.Baseline]:
  """Exact cosine with the run's own encoder over its document vectors
  (None without document vectors: no pretrained encoder)."""
  if not run.start.vectors:
    return None
  return dense.encoder_dense_baseline(
    run.model,
    run.start.base_params,
    run.index,
    run.vector_matrix(),
    input_length,
  )


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
  for query_set, dataset in dev_selection.query_set_data(
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
