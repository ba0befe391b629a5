"""A served run, loaded and verified: the checkpoint, the served index, the
params with the docid rows added online, and the corpus to read back.

Loading and verifying what `serving.Retriever` serves, apart from the
Retriever itself:

  <run>/model/                 orbax checkpoints; <step>/index_artifact/ is
                               the index the params were trained with
  <run>/model_config.json      model config fields, input_length and the
                               corpus path (titles), written by
                               gr/model/model_config.py's `save_model_config`; looked
                               up inside <run>/model/ first
  <run>/lexical_weight.json    beside model_config.json: the lexical plan's
                               weight and the step chosen on dev; it and
                               the term sets are read by gr/serve/run_plan.py
  <run>/index/                 the served index (gr/index/artifact.py versions and
                               their update logs): seeded from the
                               checkpoint's artifact if absent, and refused
                               unless it descends from that artifact; its
                               online logs and lock: gr/serve/online_logs.py
"""

import dataclasses
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr.train import checkpoints
from gr.index import artifact as index_lib
from gr.model import lexical as lexical_lib
from gr.model import models
from gr.index import vocab as vocab_lib
from gr.model import family
from gr.model import pretrained
from gr.model import model_config
from gr.model import warm_start
from gr.data import beir
from gr.docids import term_sets as term_sets_lib
from gr.serve import online_logs
from gr.serve import online_rows
from gr.serve import run_plan
from gr.serve.serving_config import RunLoadError


# ------------------------------------------------------------- loading --


def check_params(
  model: models.EncoderDecoderModel, params: Any, source: str
) -> None:
  """Raises RunLoadError unless `params` has the shapes `model` expects."""
  expected = dict(jax.tree_util.tree_flatten_with_path(model.param_shapes())[0])
  found = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in sorted(set(expected) | set(found), key=str):
    want, got = expected.get(path), found.get(path)
    if want is None or got is None or tuple(want.shape) != tuple(got.shape):
      raise RunLoadError(
        f"{source}: params do not fit the model config at "
        f"{jax.tree_util.keystr(path)}: expected "
        f"{None if want is None else tuple(want.shape)}, found "
        f"{None if got is None else tuple(got.shape)}"
      )


def check_descends(
  served: index_lib.Index, trained: index_lib.Index, served_dir: str
) -> None:
  """Raises RunLoadError unless `served` is `trained` plus online updates.

  Same scheme and base vocabulary (sentencepiece model or WordPiece
  tokenizer), docid tokens extended at the end, and every trained document
  either unchanged or removed (its docids retired, or reused by another
  document).
  """

  def refuse(reason: str):
    raise RunLoadError(
      f"{served_dir}: this index does not descend from the checkpoint's "
      f"index artifact ({reason}); serve a fresh --index_dir (it is seeded "
      "from the artifact)"
    )

  if served.table.scheme != trained.table.scheme:
    refuse(f"scheme {served.table.scheme!r} != {trained.table.scheme!r}")
  if served.vocab.base_fingerprint != trained.vocab.base_fingerprint:
    refuse("different tokenizer (sentencepiece model or WordPiece)")
  tokens = trained.vocab.docid_tokens
  if served.vocab.docid_tokens[: len(tokens)] != tokens:
    refuse("docid tokens are not an extension of the trained ones")
  owner = served.table.docid_to_doc
  for doc_id, docids in trained.table.docids_of.items():
    now = served.table.docids_of.get(doc_id)
    gone = all(  # deleted: retired, or reused by another document
      served.table.is_retired(s) or owner.get(s, doc_id) != doc_id
      for s in docids
    )
    if now != docids and not gone:
      refuse(f"document {doc_id!r} has docids {now}, trained with {docids}")


def served_index(trained: index_lib.Index, index_dir: str) -> index_lib.Index:
  """The index under `index_dir`, seeded from `trained` if it has none."""
  if not os.path.exists(os.path.join(index_dir, index_lib.CURRENT_FILE)):
    index_lib.save_index(trained, index_dir)
  try:
    served = index_lib.load_index(index_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(f"{index_dir}: corrupt served index: {e}") from e
  check_descends(served, trained, index_dir)
  return served


def load_checkpoint(checkpoint_dir: str, step: Optional[int] = None):
  """(model, params, trained index, SavedModelConfig, step) of a checkpoint.

  Raises:
    RunLoadError: missing model config, params that do not fit it, or an
      index artifact that is missing or fails its checksums.
  """
  return _load_checkpoint(checkpoint_dir, step)[:5]


def _load_checkpoint(checkpoint_dir: str, step: Optional[int] = None):
  """`load_checkpoint`'s five, and the artifact's files dir."""
  try:
    run = model_config.load_model_config(
      model_config.find_model_config(checkpoint_dir)
    )
    artifact = checkpoints.load_artifact(checkpoint_dir, step)
    step = int(artifact.parent.parent.name)  # <model_dir>/<step>/<item>/files
    trained = index_lib.load_index_version(os.fspath(artifact))
    params = checkpoints.restore_params(checkpoint_dir, step)
  except (ValueError, OSError) as e:
    raise RunLoadError(f"{checkpoint_dir}: cannot load checkpoint: {e}") from e
  model = models.EncoderDecoderModel(run.model)
  check_params(model, params, checkpoint_dir)
  if trained.vocab.vocab_size > run.model.vocab_size:
    raise RunLoadError(
      f"{checkpoint_dir}: index vocabulary has {trained.vocab.vocab_size} "
      f"ids but the model only {run.model.vocab_size} embedding rows"
    )
  return model, params, trained, run, step, os.fspath(artifact)


# ------------------------------------------------------ docid token rows --


def with_docid_rows(params: Any, vocab, rows: Mapping[str, np.ndarray]) -> Any:
  """`params` with the token embedding rows of docid tokens replaced (and
  an untied logits kernel's columns of them zeroed, as online_rows.set_rows
  does live)."""
  if not rows:
    return params
  old = params["token_embedder"]["embedding"]
  embedding = np.array(old)
  ids = [vocab.docid_token_id(token) for token in rows]
  embedding[ids] = np.stack(list(rows.values()))
  params = {
    **params,
    "token_embedder": {
      **params["token_embedder"],
      "embedding": jnp.asarray(embedding, old.dtype),
    },
  }
  return online_rows.zero_logit_columns(params, np.asarray(ids, np.int32))


def warm_docid_rows(
  model: models.EncoderDecoderModel,
  params: Any,
  index: index_lib.Index,
  new_tokens: Sequence[str],
  documents: Mapping[str, beir.Document],
  *,
  input_length: int,
) -> dict[str, np.ndarray]:
  """Rows for `new_tokens` from `documents`' embeddings under `params`.

  Pretrained-encoder models only (warm_start.new_docid_rows over the unit
  mean-pooled encoder output of each body); {} for a T5 model.
  """
  warm = family.family_of(model).warm_starts_rows
  if not warm or not new_tokens or not documents:
    return {}
  rows = vocab_lib.encode_texts(
    index.vocab, [doc.text for doc in documents.values()], input_length
  )
  vectors = pretrained.pooled_vectors(model, params, rows)  # [n, width]
  embedding = warm_start.new_docid_rows(
    np.asarray(params["token_embedder"]["embedding"]),
    index.table,
    index.vocab,
    new_tokens,
    dict(zip(documents, vectors)),
  )
  return {t: embedding[index.vocab.docid_token_id(t)] for t in new_tokens}


def restore_online_rows(
  model: models.EncoderDecoderModel,
  params: Any,
  trained: index_lib.Index,
  served: index_lib.Index,
  index_dir: str,
  online: Mapping[str, beir.Document],
  *,
  input_length: int,
) -> Any:
  """The checkpoint's params with the rows of docid tokens set online:
  the new ones, and trained or new ones reused after a delete (the last
  saved row of each token wins, as it did live).

  Saved rows are used as they are; a new token without one (a lost file)
  gets the warm-start rule over the online documents that use it.
  """
  new_tokens = served.vocab.docid_tokens[len(trained.vocab.docid_tokens) :]
  saved = online_logs.read_online_rows(index_dir)
  known = set(served.vocab.docid_tokens)
  params = with_docid_rows(
    params, served.vocab, {t: r for t, r in saved.items() if t in known}
  )
  missing = {t for t in new_tokens if t not in saved}
  if not family.family_of(model).warm_starts_rows or not missing:
    return params
  users = {
    d: doc
    for d, doc in online.items()
    if missing
    & {w for docid in served.table.docids_of[d] for w in docid.split()}
  }
  logging.warning(
    "%s: no saved rows for %d online docid tokens; "
    "recomputing them from %d documents",
    index_dir,
    len(missing),
    len(users),
  )
  return with_docid_rows(
    params,
    served.vocab,
    warm_docid_rows(
      model, params, served, sorted(missing), users, input_length=input_length
    ),
  )


# ------------------------------------------------------ trained documents --


class CorpusFile:
  """The run's corpus.jsonl, read back one document at a time: the byte
  offset of each document's line is kept, not its text."""

  def __init__(self, path: str, offsets: Mapping[str, int]):
    self.path, self._offsets = path, dict(offsets)

  @classmethod
  def scan(cls, path: str) -> tuple["CorpusFile", dict[str, str]]:
    """One pass over `path`: the file and doc_id -> title.

    Raises:
      beir.BeirFormatError: a line is not a BEIR record, or an _id repeats.
    """
    offsets, titles, offset = {}, {}, 0
    with open(path, "rb") as f:
      for line_no, raw in enumerate(f, start=1):
        if raw.strip():
          doc = beir._parse_document(path, line_no, raw.rstrip(b"\r\n"))  # pylint: disable=protected-access
          if doc.doc_id in offsets:
            raise beir.BeirFormatError(
              path, line_no, f"duplicate _id {doc.doc_id!r}"
            )
          offsets[doc.doc_id], titles[doc.doc_id] = offset, doc.title
        offset += len(raw)
    return cls(path, offsets), titles

  def get(self, doc_id: str) -> Optional[beir.Document]:
    """`doc_id`'s document; None if the corpus has none (or no longer has
    it at its offset: the file changed since the scan)."""
    offset = self._offsets.get(doc_id)
    if offset is None:
      return None
    try:
      with open(self.path, "rb") as f:
        f.seek(offset)
        raw = f.readline().rstrip(b"\r\n")
      doc = beir._parse_document(self.path, 0, raw)  # pylint: disable=protected-access
    except (OSError, beir.BeirFormatError):
      return None
    return doc if doc.doc_id == doc_id else None


@dataclasses.dataclass(frozen=True)
class ServedRun:
  """Everything a Retriever serves, loaded and verified.

  Attributes:
    params: the checkpoint's, with the rows of docid tokens added online.
    index: the served index (checkpoint artifact + online updates).
    online_documents: documents added online that the index still has.
    online_rows: docid token -> row [D] from the online rows log.
    checkpoint_rows: the checkpoint's embedding rows (`model` has more
      when docid tokens added online needed them: online_rows.grown_rows).
    titles: doc_id -> title, from the run's corpus (if found).
    corpus: the run's corpus, to read trained documents back (if found).
    term_sets: the trained documents' term sets (rows in trained_doc_ids
      order) when lexical_weight > 0, else None.
    lexical_weight: the plan's weight (0: the model alone, inf: the term
      sets alone).
    term_weight_head: the run's trained query-token weights
      (<run>/term_weight_head.npz) when lexical_weight > 0, else None.
    scoring: how the run's search scored docids (model_config.json's
      `scoring`; {} if it did not record it).
  """

  model: models.EncoderDecoderModel
  params: Any
  index: index_lib.Index
  input_length: int
  index_dir: str
  step: int
  titles: Mapping[str, str]
  corpus: Optional[CorpusFile]
  online_documents: Mapping[str, beir.Document]
  online_rows: Mapping[str, np.ndarray]
  checkpoint_rows: int = 0
  term_sets: Optional[term_sets_lib.TermSets] = None
  lexical_weight: float = 0.0
  trained_doc_ids: Sequence[str] = ()
  term_weight_head: Optional[lexical_lib.TermWeightHead] = None
  scoring: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def load_run(
  checkpoint_dir: str,
  *,
  index_dir: Optional[str] = None,
  step: Optional[int] = None,
  corpus_path: Optional[str] = None,
  lexical_weight: Optional[float] = None,
) -> ServedRun:
  """Loads a run: <run>/model checkpoints, served index <run>/index.

  Args:
    checkpoint_dir: the orbax model_dir (e.g. workdir/model).
    index_dir: served (mutable) index; default: <checkpoint_dir>/../index.
    step: checkpoint step; None: the one the run chose on dev, as its
      lexical_weight.json records it (`run_plan.recorded_step`), else the
      latest.
    corpus_path: BEIR corpus.jsonl to take titles (and trained documents,
      read back by id) from; default: the one
      model_config.json names, if it exists.
    lexical_weight: the plan's weight; None: the run's lexical_weight.json
      (`run_plan.run_lexical_weight`).

  Raises:
    RunLoadError: a file is missing, corrupt or does not fit the others;
      a weight > 0 without term sets names where the weight came from.
  """
  if step is None:
    step = run_plan.recorded_step(checkpoint_dir)
  model, params, trained, run, step, artifact_dir = _load_checkpoint(
    checkpoint_dir, step
  )
  weight, weight_source = run_plan.run_lexical_weight(
    checkpoint_dir, lexical_weight
  )
  index_dir = index_dir or os.path.join(
    os.path.dirname(os.path.abspath(checkpoint_dir)), "index"
  )
  index = served_index(trained, index_dir)
  term_sets = run_plan.plan_term_sets(
    weight, weight_source, index_dir, artifact_dir, trained
  )
  checkpoint_rows = model.config.vocab_size  # grown as the live one grew
  model, params, online = _with_online_updates(
    model, params, trained, index, index_dir, input_length=run.input_length
  )
  corpus, titles = _corpus(corpus_path or run.corpus_path)
  return ServedRun(
    model=model,
    params=params,
    index=index,
    input_length=run.input_length,
    index_dir=index_dir,
    step=step,
    titles=titles,
    corpus=corpus,
    online_documents=online,
    online_rows=online_logs.read_online_rows(index_dir),
    checkpoint_rows=checkpoint_rows,
    term_sets=term_sets,
    lexical_weight=weight,
    trained_doc_ids=trained.doc_ids,
    term_weight_head=(
      run_plan.run_term_weight_head(checkpoint_dir) if weight > 0 else None
    ),
    scoring=run.scoring,
  )


def _with_online_updates(
  model: models.EncoderDecoderModel,
  params: Any,
  trained: index_lib.Index,
  index: index_lib.Index,
  index_dir: str,
  *,
  input_length: int,
) -> tuple[models.EncoderDecoderModel, Any, dict[str, beir.Document]]:
  """(model, params, online documents) of the served index: the model's
  embedding rows grown to the served vocabulary, the docid rows added
  online restored, and the logged documents the table still has."""
  model, params = online_rows.grown_model(
    model,
    params,
    start_rows=model.config.vocab_size,
    base_size=index.vocab.base_size,
    needed=index.vocab.vocab_size,
  )
  online = {
    d: doc
    for d, doc in online_logs.read_online_documents(index_dir).items()
    if d in index.table.docids_of
  }
  params = restore_online_rows(
    model, params, trained, index, index_dir, online, input_length=input_length
  )
  return model, params, online


def _corpus(
  corpus_path: Optional[str],
) -> tuple[Optional[CorpusFile], dict[str, str]]:
  """The run's corpus file and doc_id -> title; (None, {}) without one."""
  if corpus_path and os.path.exists(corpus_path):
    return CorpusFile.scan(corpus_path)
  return None, {}
