"""A run's pretrained encoder, tuned on the train queries before indexing.

`tuned_model` trains the encoder contrastively (gr/train/encoder_tuning.py)
on every query set's train split (query, relevant body) and, optionally,
one lead-sentence pseudo-query per document. It then scores dense
retrieval on the selection split with the start and with the tuned encoder
(exact cosine over the whole corpus, mean MRR@10 over the query sets). The
tuned encoder is kept only if it is better there (ties: the start), and is
written as a HF folder under the run, `<workdir>/tuned_encoder`, which the
returned model's config points at. Everything after it (document vectors,
warm-started rows, the encoder cache, the service's online adds) uses that
folder like any other encoder.

The record (results.json's `encoder_tuning`) holds the settings, the loss
curve's summary, and the dev (and, for the record only, eval-split) dense
figures of start and end.
"""

import dataclasses
import logging
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from gr.data import beir
from gr.model import bert
from gr.model import embed
from gr.search import bm25
from gr.search import dense
from gr.search import metrics
from gr.train import encoder_tuning
from gr.experiments import dev_selection

TUNED_FOLDER = "tuned_encoder"


def training_pairs(
  dataset: beir.BeirDataset,
  train_sets: Sequence[tuple[dict, dict]],
  tuning: encoder_tuning.EncoderTuning,
) -> list[tuple[str, str, frozenset]]:
  """(query text, relevant doc id, every doc id judged relevant for the
  query) for each judged train pair, then (lead sentence, doc id, {doc
  id}) per document when tuning.lead_pseudo_queries.

  train_sets: (queries {qid: text}, qrels {qid: {doc id: relevance}}) per
  query set; pairs with relevance <= 0 or a document outside the corpus
  are skipped.
  """
  pairs = []
  for queries, qrels in train_sets:
    for qid, judged in qrels.items():
      relevant = frozenset(d for d, r in judged.items() if r > 0)
      pairs += [(queries[qid], d, relevant) for d in sorted(relevant)
        if d in dataset.corpus and qid in queries]  # fmt: skip
  if tuning.lead_pseudo_queries:
    rng = np.random.default_rng(tuning.seed)
    for doc_id, doc in dataset.corpus.items():
      lead = encoder_tuning.lead_pseudo_query(doc.text, rng)
      if lead:
        pairs.append((lead, doc_id, frozenset([doc_id])))
  return pairs


def bm25_negatives(
  dataset: beir.BeirDataset, pairs: Sequence[tuple[str, str, frozenset]]
) -> list[str]:
  """Each pair's hard negative body: its query's best BM25 document that is
  not judged relevant (a seeded random such document where BM25 finds
  none)."""
  run = bm25.bm25_run(
    dataset.corpus, {str(i): pair[0] for i, pair in enumerate(pairs)}, k=10
  )
  doc_ids = list(dataset.corpus)
  rng = np.random.default_rng(0)
  negatives = []
  for i, (query, _, relevant) in enumerate(pairs):
    ranked = [d for d in run.get(str(i), {}) if d not in relevant]
    if not ranked and len(relevant & set(doc_ids)) == len(doc_ids):
      raise ValueError(
        f"hard negatives: every document is judged relevant to {query!r}"
      )
    while not ranked:
      candidate = doc_ids[int(rng.integers(len(doc_ids)))]
      ranked = [] if candidate in relevant else [candidate]
    negatives.append(dataset.corpus[ranked[0]].text)
  return negatives


def tuning_inputs(
  dataset: beir.BeirDataset,
  train_sets: Sequence[tuple[dict, dict]],
  tuning: encoder_tuning.EncoderTuning,
) -> tuple[list[tuple[str, str]], Optional[list[str]]]:
  """`encoder_tuning.tune`'s (query, body) pairs and, with
  tuning.hard_negatives, each pair's BM25 negative body (else None), from
  the train sets as `training_pairs` takes them."""
  examples = training_pairs(dataset, train_sets, tuning)
  pairs = [(query, dataset.corpus[doc].text) for query, doc, _ in examples]
  negatives = None
  if tuning.hard_negatives:
    negatives = bm25_negatives(dataset, examples)
  return pairs, negatives


def dense_mrr(
  embedder: embed.Embedder,
  doc_ids: Sequence[str],
  doc_vectors: np.ndarray,
  held_out: dict,
) -> dict[str, float]:
  """{query set: MRR@10 of exact cosine} for held_out {name: (queries,
  qrels)}; doc_vectors [len(doc_ids), dim]."""
  out = {}
  for name, (queries, qrels) in held_out.items():
    qids = [q for q in qrels if q in queries]
    vectors = embedder.embed([queries[q] for q in qids])
    run = dense.dense_run(doc_ids, doc_vectors, vectors, qids, k=10)
    out[name] = metrics.evaluate_run(
      {q: qrels[q] for q in qids}, run, hits_ks=(1,), recall_ks=(10,)
    )["MRR@10"]
  return out


def tuned_model(
  model,
  dataset: beir.BeirDataset,
  plan: dev_selection.LexicalSelection,
  tuning: Optional[encoder_tuning.EncoderTuning],
  *,
  workdir: str,
  input_length: int,
  cache_dir: str,
) -> tuple[Any, dict]:
  """(model, {"encoder_tuning": record}): `model` with its encoder tuned
  if dense MRR@10 on plan.split improves; (model, {}) without tuning.

  plan gives the folder, query sets, selection and eval splits. Both
  encoders' document vectors are cached under cache_dir (keyed by the
  encoder), where the run's warm start finds the kept one's.
  """
  if tuning is None or tuning.steps == 0:
    return model, {}
  if not getattr(model.config, "encoder_dir", ""):
    raise ValueError(
      "run_experiment.encoder_tuning needs a pretrained BERT-family encoder "
      "(gin/models/minilm_t5.gin); this model has none"
    )
  data_dir, query_sets, max_docs = plan.data_dir, plan.query_sets, plan.max_docs
  started = time.time()
  source = model.config.encoder_dir
  start = embed.Embedder.load(source, max_length=input_length)
  train_sets = list(
    dev_selection.held_out_queries(
      data_dir, query_sets, "train", max_docs
    ).values()
  )
  pairs, negatives = tuning_inputs(dataset, train_sets, tuning)
  params, losses = encoder_tuning.tune(start, pairs, tuning, negatives)
  tuned = embed.Embedder(start.config, params, start.tokenizer, input_length)
  doc_ids = list(dataset.corpus)
  vectors = {
    name: embed.document_embeddings(dataset.corpus, embedder, cache_dir)
    for name, embedder in (("start", start), ("tuned", tuned))
  }
  record = {
    "settings": dataclasses.asdict(tuning),
    "pairs": len(pairs),
    "steps_run": len(losses),
    "loss_first_25": float(np.mean(losses[:25])),
    "loss_last_25": float(np.mean(losses[-25:])),
  }
  for split in (plan.split, plan.eval_split):
    held_out = dev_selection.held_out_queries(
      data_dir, query_sets, split, max_docs
    )
    for name, embedder in (("start", start), ("tuned", tuned)):
      record[f"{split}/{name}"] = dense_mrr(
        embedder, doc_ids, vectors[name], held_out
      )
  gain = np.mean(list(record[f"{plan.split}/tuned"].values())) - np.mean(
    list(record[f"{plan.split}/start"].values())
  )
  record["kept"] = bool(gain > 0)
  record["seconds"] = round(time.time() - started, 1)
  logging.info("encoder tuning: dev dense MRR@10 %+.4f, kept %s", gain,
    record["kept"])  # fmt: skip
  if not record["kept"]:
    return model, {"encoder_tuning": record}
  folder = os.path.abspath(os.path.join(workdir, TUNED_FOLDER))
  bert.save_folder(params, start.config, source, folder)
  config = dataclasses.replace(model.config, encoder_dir=folder)
  return type(model)(config), {"encoder_tuning": record}
