"""The vocabulary: a sentencepiece model plus docid tokens as extra ids.

Ids, in order (T5 convention for the first three):

  0 PAD, 1 EOS, 2 UNK, 3 .. S-1   sentencepiece pieces (S = piece count,
                                   including any T5 `<extra_id_*>` sentinels)
  S .. S+D-1                       the D docid tokens (`<3>`, `<c1_7>`, ...),
                                   in the order given (append-only)

Adding documents under the atomic scheme only appends docid tokens: the
sentencepiece model is never retrained and no existing id moves.

A docid is a string of space-separated tokens. A token in `docid_tokens` is
one id; maximal runs of other words (text docids) go through sentencepiece
together.

Files: gr/index/sentencepiece_training.py writes `<prefix>.model`;
`Vocabulary.save` writes a JSON file (default `<model stem>.gr_vocab.json`,
next to the model; its format in gr/index/vocab_format.py) holding the docid
token list and the model's sha256, which `load` verifies.
"""

import copy
import functools
import hashlib
import json
import os
import shutil
from typing import Iterable, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from gr import atomic_io
from gr import batching
from gr.index import vocab_format

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
SP_MODEL_NAME = "spm.model"


def file_sha256(path: str) -> str:
  """Hex sha256 of a file's bytes (local or any tf.io.gfile path)."""
  return atomic_io.sha256_file(path, opener=tf.io.gfile.GFile)


def vocab_json_path(sp_model_path: str) -> str:
  """`<model stem>.gr_vocab.json`, next to the sentencepiece model."""
  return os.path.splitext(sp_model_path)[0] + ".gr_vocab.json"


# -------------------------------------------------------------- vocabulary --


class DocidTokenVocabulary(seqio.Vocabulary):
  """What every gr vocabulary shares: `base_size` ids of text pieces, then
  the docid tokens (one id each, append-only), PAD = 0, EOS = 1.

  Subclasses set `_docid_tokens`, `_id_by_docid_token` and define
  `base_size` and `_decode`.
  """

  @property
  def docid_tokens(self) -> tuple[str, ...]:
    return self._docid_tokens

  @property
  def _base_vocab_size(self) -> int:
    return self.base_size + len(self._docid_tokens)

  @property
  def vocab_size(self) -> int:
    """All ids: pieces (and sentinels) and docid tokens."""
    return self._base_vocab_size

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def bos_id(self) -> Optional[int]:
    return None

  def docid_token_id(self, token: str) -> int:
    """The single id of a docid token (KeyError if it has none)."""
    return self._id_by_docid_token[token]

  def _with_appended(self, tokens: tuple[str, ...]):
    """A copy with docid tokens `tokens` (= the current ones + more),
    sharing this one's loaded tokenizer: no file is read again and only the
    appended tokens are checked (online adds call this per update)."""
    current = self._docid_tokens
    appended = vocab_format.validated_docid_tokens(tokens[len(current) :])
    for token in appended:
      if token in self._id_by_docid_token:
        raise ValueError(
          f"docid token {token!r} appears twice (second time at position "
          f"{tokens.index(token, len(current))})"
        )
    extended = copy.copy(self)
    extended.__dict__.pop("fingerprint", None)  # depends on the tokens
    extended._docid_tokens = tokens
    first = self.base_size + len(current)
    extended._id_by_docid_token = {
      **self._id_by_docid_token,
      **{t: first + i for i, t in enumerate(appended)},
    }
    return extended

  def decode_docid(self, ids: Iterable[int]) -> str:
    """Ids -> docid string, up to the first EOS; PAD ids are skipped."""
    kept = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i != PAD_ID:
        kept.append(i)
    return self._decode(kept)


class Vocabulary(DocidTokenVocabulary):
  """A seqio vocabulary: sentencepiece pieces, then docid tokens.

  Text (`encode`, `encode_tf`) is plain sentencepiece. Docids go through
  `encode_docid` / `decode_docid`. `decode` and `decode_tf` render docid
  token ids as their token strings, so they also decode docid predictions.
  """

  def __init__(
    self,
    sp_model_path: str,
    docid_tokens: Sequence[str] = (),
    *,
    extra_ids: int = 0,
  ):
    """Builds the vocabulary.

    Args:
      sp_model_path: a sentencepiece model with PAD=0, EOS=1, UNK=2 (ours
        from gr/index/sentencepiece_training.py, or an existing T5 model file).
      docid_tokens: tokens that each get one id, after the pieces.
      extra_ids: T5 `<extra_id_*>` sentinels added to the sentencepiece model
        (100 for the public T5 models), placed before the docid tokens.
    """
    if not tf.io.gfile.exists(sp_model_path):
      raise FileNotFoundError(f"sentencepiece model not found: {sp_model_path}")
    self._sp = seqio.SentencePieceVocabulary(sp_model_path, extra_ids=extra_ids)
    self._check_t5_ids(sp_model_path)
    self._docid_tokens = vocab_format.validated_docid_tokens(docid_tokens)
    self._id_by_docid_token = {
      token: self.sp_size + i for i, token in enumerate(self._docid_tokens)
    }
    super().__init__(extra_ids=0)

  def _check_t5_ids(self, sp_model_path: str) -> None:
    """Raises unless the model uses PAD=0, EOS=1, UNK=2."""
    tokenizer = self._sp.tokenizer
    found = (tokenizer.pad_id(), tokenizer.eos_id(), tokenizer.unk_id())
    if found != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(
        f"{sp_model_path}: sentencepiece ids (pad, eos, unk) are {found}, "
        f"expected {(PAD_ID, EOS_ID, UNK_ID)} (T5 convention)"
      )

  # -- constructors --

  @classmethod
  def from_table(
    cls, sp_model_path: str, table, *, extra_ids: int = 0
  ) -> "Vocabulary":
    """The vocabulary for a DocidTable: its reserved tokens become ids."""
    return cls(sp_model_path, tuple(table.reserved_tokens), extra_ids=extra_ids)

  def with_docid_tokens(self, tokens: Sequence[str]) -> "Vocabulary":
    """A vocabulary with `tokens`, which must extend this one's docid tokens.

    Raises:
      ValueError: if `tokens` does not start with the current docid tokens
        (that would move existing ids).
    """
    tokens = tuple(tokens)
    current = self._docid_tokens
    if tokens[: len(current)] != current:
      first_bad = next(
        (i for i, (a, b) in enumerate(zip(current, tokens)) if a != b),
        len(tokens),
      )
      raise ValueError(
        "docid tokens are append-only: new list differs from the current "
        f"one at position {first_bad} (current has {len(current)} tokens, "
        f"new has {len(tokens)})"
      )
    return self._with_appended(tokens)

  # -- sizes and ids --

  @property
  def sp_model_path(self) -> str:
    return self._sp.sentencepiece_model_file

  @property
  def sp_size(self) -> int:
    """Sentencepiece pieces, including T5 sentinels: the first docid id."""
    return self._sp.vocab_size

  @property
  def base_size(self) -> int:
    """Ids before the docid tokens (the first docid id)."""
    return self.sp_size

  def text_token_ids(self) -> np.ndarray:
    """Ids a generated text may use: the pieces after UNK (no PAD, EOS, UNK
    or docid tokens)."""
    return np.arange(UNK_ID + 1, self.sp_size)

  def word_pieces(self, ids) -> list[str]:
    """Each id's piece in WordPiece spelling: a piece that starts a word
    (sentencepiece's leading U+2581) as its text, a continuation as '##' +
    text."""
    pieces = [self._sp.tokenizer.id_to_piece(int(i)) for i in ids]
    return [p[1:] if p.startswith("\u2581") else "##" + p for p in pieces]

  @property
  def input_vocabulary(self) -> "Vocabulary":
    """The view encoder inputs are tokenised with (this one; EOS appended)."""
    return self

  input_eos = True  # seqio appends EOS to encoder inputs

  def encode_inputs(self, text: str, max_length: int) -> list[int]:
    """Encoder input ids: pieces trimmed to max_length - 1, then EOS."""
    return list(self.encode(text))[: max_length - 1] + [EOS_ID]

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @functools.cached_property
  def sp_sha256(self) -> str:
    return file_sha256(self.sp_model_path)

  @functools.cached_property
  def base_fingerprint(self) -> str:
    """sha256 of what fixes the ids before the docid tokens (the model
    bytes and sentinels): equal iff two vocabularies encode text alike."""
    payload = json.dumps(["sentencepiece", self.sp_sha256, self._sp.extra_ids])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

  @functools.cached_property
  def fingerprint(self) -> str:
    """sha256 over the model bytes, sentinels and docid tokens."""
    payload = json.dumps(
      [self.sp_sha256, self._sp.extra_ids, list(self._docid_tokens)]
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

  # -- text (seqio interface) --

  def _encode(self, s: str) -> Sequence[int]:
    return self._sp.encode(s)

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    return self._sp.encode_tf(s)

  def _decode(self, ids: Sequence[int]) -> str:
    """Pieces decode through sentencepiece; docid ids as their tokens."""
    parts, run = [], []
    for i in ids:
      i = int(i)
      if i < self.sp_size:
        run.append(i)
        continue
      parts.append(self._sp.decode(run))
      parts.append(self._docid_tokens[i - self.sp_size])
      run = []
    parts.append(self._sp.decode(run))
    return " ".join(part for part in parts if part)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [length] -> scalar string; [batch, length] -> [batch]."""
    ids = tf.cast(ids, tf.int32)
    if ids.shape.rank == 1:
      return self._decode_row_tf(ids)
    flat = tf.reshape(ids, [-1, tf.shape(ids)[-1]])  # --> [rows, length]
    texts = tf.map_fn(
      self._decode_row_tf, flat, fn_output_signature=tf.string
    )  # --> [rows]
    return tf.reshape(texts, tf.shape(ids)[:-1])  # --> ids.shape[:-1]

  def _decode_row_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """ids [length] -> scalar string, like `_decode`.

    The row is cut into segments (each docid id alone, pieces in runs);
    piece runs are detokenised by sentencepiece, docid ids looked up.
    """
    ids = tf.boolean_mask(ids, tf.not_equal(ids, PAD_ID))
    is_docid = ids >= self.sp_size  # [n]
    after_docid = tf.concat([[True], is_docid], axis=0)[:-1]
    starts = tf.cast(is_docid | after_docid, tf.int32)  # [n]
    segment_ids = tf.cumsum(starts) - 1  # [n]
    num_segments = tf.reduce_sum(starts)
    piece_ids = tf.where(is_docid, PAD_ID, ids)
    pieces = tf.RaggedTensor.from_value_rowids(
      piece_ids, segment_ids, nrows=num_segments
    )  # [segments, (run)]
    texts = self._sp.tf_tokenizer.detokenize(pieces)  # [segments]
    docid_index = tf.math.unsorted_segment_max(
      tf.maximum(ids - self.sp_size, 0), segment_ids, num_segments
    )
    segment_is_docid = (
      tf.math.unsorted_segment_max(
        tf.cast(is_docid, tf.int32), segment_ids, num_segments
      )
      > 0
    )
    token_table = tf.constant(list(self._docid_tokens) or [""])
    parts = tf.where(
      segment_is_docid, tf.gather(token_table, docid_index), texts
    )
    parts = tf.boolean_mask(parts, tf.strings.length(parts) > 0)
    return tf.strings.reduce_join(parts, separator=" ")

  # -- docids --

  def encode_docid(self, docid: str) -> list[int]:
    """Docid string -> ids, without EOS.

    Raises:
      ValueError: for an empty docid, a `<...>` word that is not one of this
        vocabulary's docid tokens, or a word sentencepiece maps to UNK (two
        docids could then share ids).
    """
    words = docid.split()
    if not words:
      raise ValueError(f"empty docid: {docid!r}")
    ids, run = [], []
    for word in words:
      if word in self._id_by_docid_token:
        ids.extend(self._encode_docid_words(run, docid))
        ids.append(self._id_by_docid_token[word])
        run = []
      elif vocab_format.RESERVED_LOOKING.match(word):
        raise ValueError(
          f"docid {docid!r}: token {word!r} is not a docid token of this "
          f"vocabulary ({len(self._docid_tokens)} tokens); extend it with "
          "with_docid_tokens(table.reserved_tokens)"
        )
      else:
        run.append(word)
    ids.extend(self._encode_docid_words(run, docid))
    return ids

  def _encode_docid_words(self, words: list[str], docid: str) -> list[int]:
    """A run of plain docid words -> sentencepiece ids (no UNK allowed)."""
    if not words:
      return []
    ids = list(self._sp.encode(" ".join(words)))
    if UNK_ID in ids:
      raise ValueError(
        f"docid {docid!r}: words {' '.join(words)!r} contain characters "
        f"unknown to the sentencepiece model {self.sp_model_path}"
      )
    return ids

  # -- files --

  def default_json_path(self) -> str:
    """`<model stem>.gr_vocab.json`, next to the sentencepiece model."""
    return vocab_json_path(self.sp_model_path)

  def save(self, path: Optional[str] = None) -> str:
    """Writes the docid tokens and model checksum as JSON, atomically.

    The model file is referenced relative to the JSON file's directory, so
    the two can be moved together.

    Returns:
      The path written (default: `default_json_path()`).
    """
    path = path or self.default_json_path()
    record = {
      "format": vocab_format.FORMAT,
      "format_version": vocab_format.FORMAT_VERSION,
      "sp_model": os.path.relpath(
        os.path.abspath(self.sp_model_path),
        os.path.dirname(os.path.abspath(path)),
      ),
      "sp_model_sha256": self.sp_sha256,
      "extra_ids": self._sp.extra_ids,
      "docid_tokens": list(self._docid_tokens),
    }
    atomic_io.write_bytes(path, json.dumps(record, indent=1).encode("utf-8"))
    return path

  def copy_to(self, directory: str) -> "Vocabulary":
    """Copies the model into `directory` and saves the JSON record there."""
    target = os.path.join(directory, SP_MODEL_NAME)
    shutil.copyfile(self.sp_model_path, target)
    vocab = Vocabulary(target, self._docid_tokens, extra_ids=self._sp.extra_ids)
    vocab.save()
    return vocab

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    """Reads a vocabulary saved by `save` and verifies the model checksum.

    Raises:
      ValueError: if the file is malformed or the model's sha256 differs.
    """
    record = vocab_format.read_vocab_json(path)
    sp_model_path = os.path.join(
      os.path.dirname(os.path.abspath(path)), record["sp_model"]
    )
    if not os.path.exists(sp_model_path):
      raise FileNotFoundError(
        f"{path}: sentencepiece model {sp_model_path} not found"
      )
    found = file_sha256(sp_model_path)
    if found != record["sp_model_sha256"]:
      raise ValueError(
        f"{path}: sentencepiece model {sp_model_path} has sha256 {found}, "
        f"but the vocabulary was saved with {record['sp_model_sha256']}"
      )
    return cls(
      sp_model_path, record["docid_tokens"], extra_ids=record["extra_ids"]
    )

  # -- identity --

  def __eq__(self, other) -> bool:
    return (
      isinstance(other, Vocabulary) and self.fingerprint == other.fingerprint
    )

  def __hash__(self) -> int:
    return hash(self.fingerprint)

  def __repr__(self) -> str:
    return (
      f"Vocabulary(sp_model={self.sp_model_path!r}, "
      f"sp_size={self.sp_size}, "
      f"docid_tokens={len(self._docid_tokens)})"
    )

  __str__ = __repr__


def encode_texts(
  vocab: Vocabulary, texts: Sequence[str], input_length: int
) -> np.ndarray:
  """Query texts -> [n, input_length] int32 encoder inputs, PAD after.

  The vocabulary decides the form: sentencepiece pieces + EOS, or an
  encoder's WordPiece [CLS] pieces [SEP] (gr/index/wordpiece.py).
  """
  return batching.pad_sequences(
    [vocab.encode_inputs(text, input_length) for text in texts], input_length
  )
