"""A pretrained encoder's WordPiece tokenizer as the model's vocabulary.

With a BERT-family encoder (gr/model/bert_network.py) the encoder reads its own
tokenizer's ids and the decoder writes in the same word pieces, so text
docids decode in the encoder's pieces and the decoder's word embeddings
start as the encoder's. Ids, in order:

  0 [PAD] (also the decoder's BOS), 1 EOS (BERT's unused slot [unused0]),
  2 .. W-1 the tokenizer's pieces as they are ([UNK], [CLS], [SEP], ...),
  W .. W+D-1 the D docid tokens (append-only, as in gr/index/vocab.py).

`encode` gives bare pieces (targets); `input_vocabulary` is the view the
encoder reads through: [CLS] pieces [SEP], no EOS. Files: the tokenizer.json
and a JSON record (`<stem>.gr_wordpiece.json`) of its sha256 and the docid
tokens, verified on load.
"""

import copy
import functools
import hashlib
import json
import os
import re
import shutil
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tokenizers

from gr import atomic_io
from gr.index import vocab as vocab_lib
from gr.index import vocab_format

PAD_ID = vocab_lib.PAD_ID
EOS_ID = vocab_lib.EOS_ID
FORMAT = "gr.wordpiece"
TOKENIZER_NAME = "tokenizer.json"
JSON_SUFFIX = ".gr_wordpiece.json"


def _load_tokenizer(path: str) -> tokenizers.Tokenizer:
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer not found: {path}")
  tokenizer = tokenizers.Tokenizer.from_file(path)
  tokenizer.no_padding()
  tokenizer.no_truncation()
  return tokenizer


class WordPieceVocabulary(vocab_lib.DocidTokenVocabulary):
  """WordPiece pieces, then docid tokens (a seqio vocabulary)."""

  def __init__(
    self,
    tokenizer_path: str,
    docid_tokens: Sequence[str] = (),
    *,
    input_view: bool = False,
  ):
    self._path = tokenizer_path
    self._tokenizer = _load_tokenizer(tokenizer_path)
    # Hashed now, while the file is surely there: the vocabulary's identity
    # (fingerprint, ==) must not need the file later. A seqio task
    # registered with it may outlive the folder it was loaded from.
    self.tokenizer_sha256 = vocab_lib.file_sha256(tokenizer_path)
    self._docid_tokens = vocab_format.validated_docid_tokens(docid_tokens)
    self._id_by_docid_token = {
      t: self.base_size + i for i, t in enumerate(self._docid_tokens)
    }
    self._input_view = input_view
    self._cls = self._tokenizer.token_to_id("[CLS]")
    self._sep = self._tokenizer.token_to_id("[SEP]")
    self._unk = self._tokenizer.token_to_id("[UNK]")
    if self._tokenizer.id_to_token(PAD_ID) != "[PAD]" or None in (
      self._cls,
      self._sep,
      self._unk,
    ):
      raise ValueError(
        f"{tokenizer_path}: not a BERT WordPiece tokenizer "
        "([PAD] = 0, [CLS], [SEP], [UNK])"
      )
    super().__init__(extra_ids=0)

  # -- views and sizes --

  @property
  def input_vocabulary(self) -> "WordPieceVocabulary":
    """The encoder's view: `encode` gives [CLS] pieces [SEP] (a copy that
    shares this one's loaded tokenizer: no file is read again)."""
    view = copy.copy(self)
    view._input_view = True
    return view

  def with_docid_tokens(self, tokens: Sequence[str]) -> "WordPieceVocabulary":
    """A vocabulary whose docid tokens extend this one's (append-only)."""
    tokens = tuple(tokens)
    if tokens[: len(self._docid_tokens)] != self._docid_tokens:
      raise ValueError(
        "docid tokens are append-only: the new list does not "
        f"start with the current {len(self._docid_tokens)}"
      )
    extended = self._with_appended(tokens)
    extended._input_view = False  # as a fresh vocabulary of the tokenizer
    return extended

  @property
  def tokenizer_path(self) -> str:
    return self._path

  @property
  def base_size(self) -> int:
    """Tokenizer pieces: the first docid id."""
    return self._tokenizer.get_vocab_size()

  @property
  def unk_id(self) -> int:
    return self._unk

  def text_token_ids(self) -> np.ndarray:
    """Ids a generated text may use: every piece but the bracketed specials
    ([PAD], [UNK], [CLS], [SEP], [MASK], [unused*])."""
    return np.array(
      [
        i
        for i in range(self.base_size)
        if not re.fullmatch(r"\[[^\]]+\]", self._tokenizer.id_to_token(i))
      ],
      np.int64,
    )

  def word_pieces(self, ids) -> list[str]:
    """Each id's piece: a word's first piece as its text, a continuation
    as '##' + text (WordPiece's own spelling)."""
    return [self._tokenizer.id_to_token(int(i)) for i in ids]

  @functools.cached_property
  def base_fingerprint(self) -> str:
    """sha256 of what fixes the ids before the docid tokens (the
    tokenizer): equal iff two vocabularies encode text alike."""
    payload = json.dumps([FORMAT, self.tokenizer_sha256])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

  @functools.cached_property
  def fingerprint(self) -> str:
    payload = json.dumps(
      [FORMAT, self.tokenizer_sha256, list(self._docid_tokens)]
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()

  # -- text --

  input_eos = False  # inputs end in [SEP], added by the input view

  def pieces(self, text: str) -> list[int]:
    """Bare WordPiece ids of `text` (no [CLS]/[SEP])."""
    return self._tokenizer.encode(text, add_special_tokens=False).ids

  def encode_inputs(self, text: str, max_length: int) -> list[int]:
    """Encoder input: [CLS] pieces [SEP] cut to max_length ids.

    Cut like seqio trims the `inputs` feature (a long text loses its
    [SEP]), so a query and a training input of the same text agree.
    """
    return ([self._cls] + self.pieces(text) + [self._sep])[:max_length]

  def _encode(self, s: str) -> Sequence[int]:
    pieces = self.pieces(s)
    return [self._cls] + pieces + [self._sep] if self._input_view else pieces

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    def encode(text):
      return np.asarray(self._encode(text.decode("utf-8")), np.int32)

    ids = tf.numpy_function(encode, [s], tf.int32, stateful=False)
    return tf.ensure_shape(ids, [None])

  def _decode(self, ids: Sequence[int]) -> str:
    """Pieces detokenised; docid ids rendered as their tokens."""
    parts, run = [], []
    for i in (int(i) for i in ids):
      if i < self.base_size:
        run.append(i)
        continue
      parts += [
        self._tokenizer.decode(run),
        self._docid_tokens[i - self.base_size],
      ]
      run = []
    parts.append(self._tokenizer.decode(run))
    return " ".join(p for p in parts if p)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    def decode(row):
      return np.asarray(self._decode([i for i in row if i > 0]), object)

    return tf.numpy_function(decode, [ids], tf.string, stateful=False)

  # -- docids --

  def encode_docid(self, docid: str) -> list[int]:
    """Docid string -> ids without EOS (docid tokens one id, words pieces)."""
    words = docid.split()
    if not words:
      raise ValueError(f"empty docid: {docid!r}")
    ids, run = [], []
    for word in words + [None]:
      if word is None or word in self._id_by_docid_token:
        ids += self._encode_words(run, docid)
        run = []
        if word is not None:
          ids.append(self._id_by_docid_token[word])
      elif vocab_format.RESERVED_LOOKING.match(word):
        raise ValueError(
          f"docid {docid!r}: token {word!r} is not a docid "
          "token of this vocabulary"
        )
      else:
        run.append(word)
    return ids

  def _encode_words(self, words: list[str], docid: str) -> list[int]:
    if not words:
      return []
    ids = self.pieces(" ".join(words))
    if self._unk in ids:
      raise ValueError(
        f"docid {docid!r}: words {' '.join(words)!r} contain "
        f"characters unknown to {self._path}"
      )
    return ids

  # -- files --

  def default_json_path(self) -> str:
    return os.path.splitext(self._path)[0] + JSON_SUFFIX

  def save(self, path: Optional[str] = None) -> str:
    """Writes the docid tokens and the tokenizer's sha256, atomically."""
    path = path or self.default_json_path()
    record = {
      "format": FORMAT,
      "tokenizer": os.path.relpath(
        os.path.abspath(self._path), os.path.dirname(os.path.abspath(path))
      ),
      "tokenizer_sha256": self.tokenizer_sha256,
      "docid_tokens": list(self._docid_tokens),
    }
    atomic_io.write_text(path, json.dumps(record, indent=1))
    return path

  def copy_to(self, directory: str) -> "WordPieceVocabulary":
    """Copies the tokenizer into `directory`, saves the record there."""
    target = os.path.join(directory, TOKENIZER_NAME)
    shutil.copyfile(self._path, target)
    vocab = WordPieceVocabulary(target, self._docid_tokens)
    vocab.save()
    return vocab

  @classmethod
  def load(cls, path: str) -> "WordPieceVocabulary":
    """Reads a record written by `save`; verifies the tokenizer's sha256."""
    try:
      with open(path) as f:
        record = json.load(f)
      tokenizer = os.path.join(
        os.path.dirname(os.path.abspath(path)), record["tokenizer"]
      )
      expected, tokens = record["tokenizer_sha256"], record["docid_tokens"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise ValueError(
        f"{path}: not a WordPiece vocabulary record: {e!r}"
      ) from e
    if record.get("format") != FORMAT:
      raise ValueError(f"{path}: field 'format' must be {FORMAT!r}")
    found = vocab_lib.file_sha256(tokenizer)
    if found != expected:
      raise ValueError(
        f"{path}: tokenizer {tokenizer} has sha256 {found}, "
        f"saved with {expected}"
      )
    return cls(tokenizer, tokens)

  def __eq__(self, other) -> bool:
    return (
      isinstance(other, WordPieceVocabulary)
      and self.fingerprint == other.fingerprint
    )

  def __hash__(self) -> int:
    return hash(self.fingerprint)

  def __repr__(self) -> str:
    return (
      f"WordPieceVocabulary({self._path!r}, pieces={self.base_size}, "
      f"docid_tokens={len(self._docid_tokens)})"
    )


def load_vocabulary(directory: str):
  """The vocabulary saved in `directory` by `copy_to` (either kind).

  Lives here, not in vocab.py, so that vocab never imports wordpiece.
  """
  sp_json = vocab_lib.vocab_json_path(
    os.path.join(directory, vocab_lib.SP_MODEL_NAME)
  )
  if os.path.exists(sp_json):
    return vocab_lib.Vocabulary.load(sp_json)
  wp_json = os.path.join(
    directory,
    os.path.splitext(TOKENIZER_NAME)[0] + JSON_SUFFIX,
  )
  if os.path.exists(wp_json):
    return WordPieceVocabulary.load(wp_json)
  raise FileNotFoundError(
    f"{directory}: no vocabulary record ({sp_json} or {wp_json})"
  )
