"""A served run's files: the checkpoint, the served index, the online logs.

Loading and verifying what `serving.Retriever` serves, apart from the
Retriever itself:

  <run>/model/                 orbax checkpoints; <step>/index_artifact/ is
                               the index the params were trained with
  <run>/model_config.json      model config fields, input_length and the
                               corpus path (titles), written by
                               gr/model/model_config.py's `save_model_config`; looked
                               up inside <run>/model/ first
  <run>/lexical_weight.json    beside model_config.json: the lexical plan's
                               weight chosen on dev (gr/decode/plan.py
                               `save_weight`); none = the model alone
  term_sets.npz                the documents' term sets (the plan), in the
                               served index's current version dir, else in
                               the checkpoint's index artifact
  <run>/index/                 the served index (gr/index/artifact.py versions and
                               their update logs): seeded from the
                               checkpoint's artifact if absent, and refused
                               unless it descends from that artifact
  <run>/index/online_documents.jsonl  documents added online, appended as
                               BEIR corpus lines (a doc_id added again after a
                               delete appears twice: the last line is its);
                               only those the table still has are served
  <run>/index/online_rows.jsonl  embedding rows of docid tokens created
                               online (pretrained-encoder models), appended
                               as {"token", "row": base64 float32 [D]}; the
                               last line of a token is its row
  <run>/index/.serving.lock    held while a Retriever serves the directory

Both online logs are append-only (gr/atomic_io.py `append_lines`): an add
appends its documents and rows first and commits with the index's update
record last, so a crash in between leaves lines that no table entry uses
(ignored). `compact_online_files` rewrites them (atomically) when the
index compacts.
"""

import base64
import dataclasses
import fcntl
import json
import logging
import os
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gr import atomic_io
from gr.train import checkpoints
from gr.index import artifact as index_lib
from gr.model import models
from gr.index import vocab as vocab_lib
from gr.model import family
from gr.model import pretrained
from gr.model import model_config
from gr.model import warm_start
from gr.data import beir
from gr.decode import plan as plan_lib
from gr.docids import term_sets as term_sets_lib
from gr.serve import online_rows

ONLINE_DOCUMENTS_FILE = "online_documents.jsonl"
ONLINE_ROWS_FILE = "online_rows.jsonl"
LOCK_FILE = ".serving.lock"


class ServingError(Exception):
  """Base class of the service's errors."""


class RunLoadError(ServingError):
  """A run cannot be served: missing, corrupt or mismatched files."""


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
  either unchanged or removed (retired).
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
  retired = served.table.retired_docids
  for doc_id, docids in trained.table.docids_of.items():
    now = served.table.docids_of.get(doc_id)
    if now != docids and not set(docids) <= retired:
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


# ----------------------------------------------------- the lexical plan --


def run_lexical_weight(
  checkpoint_dir: str, override: Optional[float] = None
) -> tuple[float, str]:
  """(the plan's weight, where it came from): `override` if given, else
  the run's lexical_weight.json beside model_config.json (0.0 without one:
  the model alone).

  Raises:
    RunLoadError: the file is not a weight record (naming it), or the
      override is negative or NaN.
  """
  if override is not None:
    if not override >= 0:
      raise RunLoadError(f"lexical_weight must be >= 0, got {override}")
    return float(override), "lexical_weight given"
  run_dir = os.path.dirname(model_config.find_model_config(checkpoint_dir))
  try:
    weight = plan_lib.load_weight(run_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(str(e)) from e
  path = os.path.join(run_dir, plan_lib.WEIGHT_FILE)
  return (0.0 if weight is None else weight), path


def recorded_step(checkpoint_dir: str) -> Optional[int]:
  """The checkpoint step the run chose on dev (early stopping), as its
  lexical_weight.json records it; None: none recorded (serve the latest).

  Raises:
    RunLoadError: naming the file, when it is malformed or its step has no
      checkpoint in `checkpoint_dir` (e.g. 0, the warm start, is not saved).
  """
  try:
    run_dir = os.path.dirname(model_config.find_model_config(checkpoint_dir))
    step = plan_lib.load_step(run_dir)
  except (ValueError, OSError) as e:
    raise RunLoadError(str(e)) from e
  if step is not None and not os.path.isdir(
    os.path.join(checkpoint_dir, str(step))
  ):
    raise RunLoadError(
      f"{os.path.join(run_dir, plan_lib.WEIGHT_FILE)}: the run chose step "
      f"{step}, which {checkpoint_dir} has no checkpoint of; pass the step "
      "to serve (scripts/serve.py --step)"
    )
  return step


def load_term_sets(
  index_dir: str, artifact_dir: str, trained: index_lib.Index
) -> Optional[term_sets_lib.TermSets]:
  """The run's term sets: the served index's current version dir's (the
  run's own index dir, where run_experiment saved the ones it evaluated
  with), else the checkpoint artifact's; None if neither has them.

  Raises:
    RunLoadError: a file is corrupt or its rows are not the trained
      documents'.
  """
  for directory in (index_lib.current_version_dir(index_dir), artifact_dir):
    try:
      sets = term_sets_lib.TermSets.load(directory)
    except (ValueError, OSError, KeyError) as e:
      raise RunLoadError(f"{directory}: bad term sets: {e}") from e
    if sets is None:
      continue
    if len(sets) != len(trained.doc_ids):
      raise RunLoadError(
        f"{os.path.join(directory, term_sets_lib.FILE_NAME)}: term sets of "
        f"{len(sets)} documents, the checkpoint's index has "
        f"{len(trained.doc_ids)}"
      )
    return sets
  return None


# ----------------------------------------------------- online logs --


def _documents_path(index_dir: str) -> str:
  return os.path.join(index_dir, ONLINE_DOCUMENTS_FILE)


def _rows_path(index_dir: str) -> str:
  return os.path.join(index_dir, ONLINE_ROWS_FILE)


def read_online_documents(index_dir: str) -> dict[str, beir.Document]:
  """Documents added online to `index_dir` (empty if none), the last line
  of each doc_id winning; a torn last line is left out.

  Raises:
    RunLoadError: a committed line is not a BEIR corpus record.
  """
  path = _documents_path(index_dir)
  documents = {}
  for line_no, line in atomic_io.read_lines(path):
    try:
      doc = beir._parse_document(path, line_no, line.encode("utf-8"))  # pylint: disable=protected-access
    except beir.BeirFormatError as e:
      raise RunLoadError(str(e)) from e
    documents.pop(doc.doc_id, None)  # re-added: moves to the end
    documents[doc.doc_id] = doc
  return documents


def append_online_documents(
  index_dir: str, documents: Iterable[beir.Document]
) -> None:
  """Appends BEIR corpus lines, one fsync for all of them."""
  lines = [
    json.dumps(beir._document_record(doc), ensure_ascii=False)  # pylint: disable=protected-access
    for doc in documents
  ]
  atomic_io.append_lines(_documents_path(index_dir), lines)


def read_online_rows(index_dir: str) -> dict[str, np.ndarray]:
  """Docid token -> embedding row [D] set online in `index_dir` (maybe none).

  Raises:
    RunLoadError: a committed line is malformed.
  """
  path = _rows_path(index_dir)
  rows = {}
  for line_no, line in atomic_io.read_lines(path):
    try:
      record = json.loads(line)
      rows[record["token"]] = np.frombuffer(
        base64.b64decode(record["row"]), np.float32
      )
    except (ValueError, KeyError, TypeError) as e:
      raise RunLoadError(f"{path}:{line_no}: bad row record: {e}") from e
  return rows


def _row_line(token: str, row: np.ndarray) -> str:
  encoded = base64.b64encode(np.asarray(row, np.float32).tobytes())
  return json.dumps({"token": token, "row": encoded.decode("ascii")})


def append_online_rows(index_dir: str, rows: Mapping[str, np.ndarray]) -> None:
  """Appends one line per token, one fsync for all of them."""
  lines = [_row_line(token, row) for token, row in rows.items()]
  atomic_io.append_lines(_rows_path(index_dir), lines)


def repair_online_logs(index_dir: str) -> None:
  """Cuts torn last lines off both logs and the index's update log (the
  lock holder does this before it appends)."""
  atomic_io.repair_log(_documents_path(index_dir))
  atomic_io.repair_log(_rows_path(index_dir))
  index_lib.repair_updates(index_dir)


def compact_online_files(
  index_dir: str,
  documents: Mapping[str, beir.Document],
  rows: Mapping[str, np.ndarray],
) -> None:
  """Rewrites both logs with only `documents` and `rows`, atomically."""
  beir.write_corpus(_documents_path(index_dir), documents)
  with atomic_io.atomic_open(_rows_path(index_dir)) as f:
    for token, row in rows.items():
      f.write(_row_line(token, row) + "\n")


# ------------------------------------------------------ docid token rows --


def with_docid_rows(params: Any, vocab, rows: Mapping[str, np.ndarray]) -> Any:
  """`params` with the token embedding rows of docid tokens replaced."""
  if not rows:
    return params
  old = params["token_embedder"]["embedding"]
  embedding = np.array(old)
  for token, row in rows.items():
    embedding[vocab.docid_token_id(token)] = row
  return {
    **params,
    "token_embedder": {
      **params["token_embedder"],
      "embedding": jnp.asarray(embedding, old.dtype),
    },
  }


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
  """The checkpoint's params with the rows of docid tokens added online.

  Saved rows are used as they are; a token without one (a lost file)
  gets the warm-start rule over the online documents that use it.
  """
  new_tokens = served.vocab.docid_tokens[len(trained.vocab.docid_tokens) :]
  if not family.family_of(model).warm_starts_rows or not new_tokens:
    return params
  saved = read_online_rows(index_dir)
  params = with_docid_rows(
    params, served.vocab, {t: saved[t] for t in new_tokens if t in saved}
  )
  missing = {t for t in new_tokens if t not in saved}
  if not missing:
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


def hold_lock(index_dir: str):
  """An open file holding an exclusive flock on the index dir's lock file."""
  handle = open(os.path.join(index_dir, LOCK_FILE), "a")
  try:
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    handle.close()
    raise RunLoadError(
      f"{index_dir} is already served by another Retriever "
      f"(lock {LOCK_FILE} is held)"
    ) from None
  return handle


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
      lexical_weight.json records it (`recorded_step`), else the latest.
    corpus_path: BEIR corpus.jsonl to take titles (and trained documents,
      read back by id) from; default: the one
      model_config.json names, if it exists.
    lexical_weight: the plan's weight; None: the run's lexical_weight.json
      (`run_lexical_weight`).

  Raises:
    RunLoadError: a file is missing, corrupt or does not fit the others;
      a weight > 0 without term sets names where the weight came from.
  """
  if step is None:
    step = recorded_step(checkpoint_dir)
  model, params, trained, run, step, artifact_dir = _load_checkpoint(
    checkpoint_dir, step
  )
  weight, weight_source = run_lexical_weight(checkpoint_dir, lexical_weight)
  index_dir = index_dir or os.path.join(
    os.path.dirname(os.path.abspath(checkpoint_dir)), "index"
  )
  index = served_index(trained, index_dir)
  term_sets = None
  if weight > 0:
    term_sets = load_term_sets(index_dir, artifact_dir, trained)
    if term_sets is None:
      raise RunLoadError(
        f"{weight_source}: lexical weight {weight} needs the run's term sets, "
        f"but neither {index_lib.current_version_dir(index_dir)} nor "
        f"{artifact_dir} has {term_sets_lib.FILE_NAME}; serve the model "
        "alone with lexical_weight 0 (scripts/serve.py --lexical_weight=0)"
      )
  checkpoint_rows = model.config.vocab_size  # grown as the live one grew
  model, params = online_rows.grown_model(
    model,
    params,
    start_rows=checkpoint_rows,
    base_size=index.vocab.base_size,
    needed=index.vocab.vocab_size,
  )
  online = {
    d: doc
    for d, doc in read_online_documents(index_dir).items()
    if d in index.table.docids_of
  }
  params = restore_online_rows(
    model,
    params,
    trained,
    index,
    index_dir,
    online,
    input_length=run.input_length,
  )
  corpus, titles = None, {}
  corpus_path = corpus_path or run.corpus_path
  if corpus_path and os.path.exists(corpus_path):
    corpus, titles = CorpusFile.scan(corpus_path)
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
    online_rows=read_online_rows(index_dir),
    checkpoint_rows=checkpoint_rows,
    term_sets=term_sets,
    lexical_weight=weight,
    trained_doc_ids=trained.doc_ids,
  )
