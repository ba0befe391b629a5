"""Tests for gr/index/vocab.py: sentencepiece training, docid ids, files, seqio."""

import json
import os
import pickle
import random

from hypothesis import given, settings, strategies as st
import pytest
import seqio
import sentencepiece as spm
import tensorflow as tf

from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib

_WORDS = (
  "the city council voted on a budget for new schools and roads while "
  "markets fell sharply after the report about energy prices in europe "
  "and asia officials said growth would slow next year"
).split()
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _corpus(seed: int = 0, size: int = 400) -> list[str]:
  rng = random.Random(seed)
  return [
    " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 40)))
    + f" {rng.randint(0, 99999)} "
    + "".join(rng.sample(LETTERS, 6))
    for _ in range(size)
  ]


@pytest.fixture(scope="module")
def sp_path(tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp("sp") / "spm")
  return sp_training.train_sentencepiece(_corpus(), prefix, vocab_size=300)


@pytest.fixture(scope="module")
def vocab(sp_path):
  return vocab_lib.Vocabulary(sp_path, ("<0>", "<1>", "<c0_7>", "<d_12>"))


def test_training_is_byte_identical_and_t5_ids(tmp_path, sp_path):
  again = sp_training.train_sentencepiece(
    _corpus(), str(tmp_path / "again"), vocab_size=300
  )
  with open(sp_path, "rb") as a, open(again, "rb") as b:
    assert a.read() == b.read()
  processor = spm.SentencePieceProcessor(model_file=sp_path)
  assert (
    processor.pad_id(),
    processor.eos_id(),
    processor.unk_id(),
    processor.bos_id(),
  ) == (0, 1, 2, -1)
  assert os.listdir(tmp_path) == ["again.model"]  # atomic: no temp left


def test_digits_are_split(sp_path):
  processor = spm.SentencePieceProcessor(model_file=sp_path)
  pieces = processor.encode("90417 budget 2024", out_type=str)
  digit_pieces = [
    p.replace("\u2581", "") for p in pieces if any(c.isdigit() for c in p)
  ]
  assert all(len(p) == 1 for p in digit_pieces)
  assert "".join(digit_pieces) == "904172024"
  assert processor.unk_id() not in processor.encode("budget 90417")


def test_long_lines_are_kept_not_dropped(tmp_path):
  # One 20 kB line: sentencepiece alone would drop it and find no pieces.
  long_line = " ".join(["quux", "zzyzx"] * 2000)
  path = sp_training.train_sentencepiece(
    [long_line], str(tmp_path / "long"), vocab_size=50
  )
  processor = spm.SentencePieceProcessor(model_file=path)
  assert processor.unk_id() not in processor.encode("quux zzyzx")


def test_id_layout(vocab, sp_path):
  sp_size = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  assert vocab.sp_size == sp_size
  assert vocab.vocab_size == sp_size + 4
  assert [vocab.docid_token_id(t) for t in vocab.docid_tokens] == list(
    range(sp_size, sp_size + 4)
  )
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)


def test_text_encoding_matches_seqio_sentencepiece(vocab, sp_path):
  peer = seqio.SentencePieceVocabulary(sp_path)
  text = "the council said energy prices 2024 would fall"
  assert list(vocab.encode(text)) == list(peer.encode(text))
  tf_ids = vocab.encode_tf(tf.constant(text)).numpy().tolist()
  assert tf_ids == list(peer.encode(text))
  assert vocab.decode(tf_ids) == peer.decode(tf_ids) == text
  assert vocab.decode_tf(tf.constant(tf_ids)).numpy().decode() == text


def test_encode_docid_reserved_tokens_are_single_ids(vocab):
  ids = vocab.encode_docid("<c0_7> <1> <d_12>")
  assert ids == [
    vocab.docid_token_id("<c0_7>"),
    vocab.docid_token_id("<1>"),
    vocab.docid_token_id("<d_12>"),
  ]
  assert vocab.decode_docid(ids + [vocab.eos_id, 0, 5]) == "<c0_7> <1> <d_12>"


def test_encode_docid_mixes_words_and_tokens(vocab):
  docid = "<0> city budget <1> energy"
  ids = vocab.encode_docid(docid)
  words_ids = list(vocab.encode("city budget"))
  assert ids == (
    [vocab.docid_token_id("<0>")]
    + words_ids
    + [vocab.docid_token_id("<1>")]
    + list(vocab.encode("energy"))
  )
  assert vocab.decode_docid(ids) == docid
  assert vocab.decode(ids + [1]) == docid


def test_encode_docid_errors(vocab):
  with pytest.raises(ValueError, match="'<c9_9>' is not a docid token"):
    vocab.encode_docid("<0> <c9_9>")
  with pytest.raises(ValueError, match="empty docid"):
    vocab.encode_docid("  ")
  with pytest.raises(ValueError, match="unknown to the sentencepiece"):
    vocab.encode_docid("city \u4e16\u754c")


_TOKENS = ("<0>", "<1>", "<c0_7>", "<d_12>")


@settings(max_examples=50, deadline=None)
@given(
  st.lists(
    st.one_of(
      st.sampled_from(_TOKENS),
      st.text(LETTERS + "0123456789", min_size=1, max_size=8),
    ),
    min_size=1,
    max_size=8,
  )
)
def test_docid_round_trip(vocab, words):
  docid = " ".join(words)
  ids = vocab.encode_docid(docid)
  assert vocab.eos_id not in ids and 0 not in ids
  assert vocab.decode_docid(ids) == docid
  assert vocab.decode_tf(tf.constant(ids + [1, 0])).numpy().decode() == docid


def test_decode_tf_batch_matches_python(vocab):
  rows = [
    vocab.encode_docid(d) + [1]
    for d in ("<0> city", "roads <d_12> 17", "<c0_7>", "the council")
  ]
  width = max(map(len, rows))
  padded = [row + [0] * (width - len(row)) for row in rows]
  decoded = vocab.decode_tf(tf.constant(padded)).numpy()
  assert [d.decode() for d in decoded] == [vocab.decode(r) for r in padded]


def test_with_docid_tokens_appends_only(vocab):
  bigger = vocab.with_docid_tokens(_TOKENS + ("<d_13>",))
  assert bigger.vocab_size == vocab.vocab_size + 1
  for token in _TOKENS:
    assert bigger.docid_token_id(token) == vocab.docid_token_id(token)
  assert bigger.encode_docid("<d_13>") == [vocab.vocab_size]
  with pytest.raises(ValueError, match="append-only.*position 1"):
    vocab.with_docid_tokens(("<0>", "<c0_7>", "<1>", "<d_12>"))
  with pytest.raises(ValueError, match="append-only"):
    vocab.with_docid_tokens(_TOKENS[:2])


def test_extended_vocabulary_equals_a_fresh_one(vocab, sp_path):
  """with_docid_tokens shares the loaded model; the result is the same
  vocabulary as one built from the file, and the original is unchanged."""
  tokens = _TOKENS + ("<d_13>", "<d_14>")
  bigger = vocab.with_docid_tokens(tokens)
  fresh = vocab_lib.Vocabulary(sp_path, tokens)
  assert bigger == fresh and bigger.fingerprint == fresh.fingerprint
  assert bigger.fingerprint != vocab.fingerprint
  assert vocab.docid_tokens == _TOKENS
  assert bigger.encode_docid("<d_14> <0>") == fresh.encode_docid("<d_14> <0>")
  with pytest.raises(KeyError):
    vocab.docid_token_id("<d_14>")
  with pytest.raises(ValueError, match="appears twice"):
    vocab.with_docid_tokens(_TOKENS + ("<0>",))


def test_bad_docid_tokens_rejected(sp_path):
  with pytest.raises(ValueError, match="appears twice"):
    vocab_lib.Vocabulary(sp_path, ("<1>", "<2>", "<1>"))
  with pytest.raises(ValueError, match="without whitespace"):
    vocab_lib.Vocabulary(sp_path, ("<1> <2>",))


def test_from_table(sp_path):

  class Table:
    reserved_tokens = ("<c0_1>", "<c1_0>")

  vocab = vocab_lib.Vocabulary.from_table(sp_path, Table())
  assert vocab.docid_tokens == Table.reserved_tokens


def test_t5_style_sentinels_come_before_docid_tokens(sp_path):
  vocab = vocab_lib.Vocabulary(sp_path, ("<d_0>",), extra_ids=100)
  base = spm.SentencePieceProcessor(model_file=sp_path).get_piece_size()
  assert vocab.sp_size == base + 100
  assert vocab.docid_token_id("<d_0>") == base + 100
  assert vocab.vocab_size == base + 101
  assert vocab.decode([base + 99, vocab.docid_token_id("<d_0>")]) == (
    "<extra_id_0> <d_0>"
  )


def test_save_load_round_trip_and_checksum(tmp_path, sp_path, vocab):
  model = tmp_path / "m.model"
  model.write_bytes(open(sp_path, "rb").read())
  saved = vocab_lib.Vocabulary(str(model), vocab.docid_tokens)
  path = saved.save()
  assert path == str(tmp_path / "m.gr_vocab.json")
  loaded = vocab_lib.Vocabulary.load(path)
  assert loaded == saved == vocab  # equality is by content
  assert loaded.docid_tokens == vocab.docid_tokens
  model.write_bytes(model.read_bytes() + b"x")
  with pytest.raises(ValueError, match="sha256"):
    vocab_lib.Vocabulary.load(path)


def test_load_rejects_malformed_fields(tmp_path, vocab):
  path = vocab.save(str(tmp_path / "v.json"))
  record = json.loads(open(path).read())
  record["docid_tokens"] = "<0>"
  (tmp_path / "v.json").write_text(json.dumps(record))
  with pytest.raises(ValueError, match="v.json: field 'docid_tokens'"):
    vocab_lib.Vocabulary.load(path)
  (tmp_path / "v.json").write_text("{")
  with pytest.raises(ValueError, match="v.json: not valid JSON"):
    vocab_lib.Vocabulary.load(path)


def test_missing_model_and_wrong_ids(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.model"):
    vocab_lib.Vocabulary(str(tmp_path / "nope.model"))
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(_corpus(size=50)),
    model_prefix=str(tmp_path / "bad"),
    vocab_size=60,
    hard_vocab_limit=False,
    minloglevel=2,
  )  # default ids: unk=0, bos=1
  with pytest.raises(ValueError, match="bad.model.*T5 convention"):
    vocab_lib.Vocabulary(str(tmp_path / "bad.model"))


def test_pickle_and_seqio_feature(vocab):
  clone = pickle.loads(pickle.dumps(vocab))
  assert clone == vocab
  assert clone.encode_docid("<1> city") == vocab.encode_docid("<1> city")
  assert seqio.Feature(clone) == seqio.Feature(vocab)
