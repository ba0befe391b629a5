"""Tests for gr/index/word_terms.py and lexicon's word folding: one term
per word of several pieces, the same in numpy and on device, scoring as
bm25s over whole words, and new words keeping their pieces."""

import bm25s
import jax.numpy as jnp
import numpy as np
import Stemmer

from gr.docids import term_sets as term_sets_lib
from gr.index import lexicon
from gr.index import word_terms

# Words the MiniLM WordPiece vocabulary splits into several pieces, beside
# one-piece words; every word is alphabetic and at least two letters, as
# bm25s tokenises.
SENTENCES = (
  "zuckerberg testified about cryptocurrencies and regulators",
  "the regulators fined zuckerberg over photosynthesis research",
  "cryptocurrency exchanges collapsed in the harbor city",
  "thermodynamics lectures on photosynthesis and entropy",
  "the harbor city regulates cryptocurrency traders",
  "entropy and thermodynamic limits of the regulators",
)
QUERIES = (
  "zuckerberg cryptocurrencies",
  "thermodynamics of photosynthesis",
  "cryptocurrency regulators in the harbor",
  "entropy",
)


def _folding(vocab):
  tokens = lexicon.encoded_texts(vocab, SENTENCES)
  return lexicon.word_folding(vocab, tokens, "english")


def test_fold_is_the_same_in_numpy_and_jax(wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  texts = [*SENTENCES, *QUERIES, "unseen zorblaxian words"]
  width = 40
  tokens = np.zeros((len(texts), width), np.int64)
  for i, text in enumerate(texts):
    ids = wordpiece_vocab.encode_inputs(text, width)
    tokens[i, : len(ids)] = ids
  tokens[-1, -1] = wordpiece_vocab.vocab_size + 3  # a docid token: no term
  host = folding.terms(tokens)
  device = word_terms.fold(
    jnp, jnp.asarray(tokens, jnp.int32), jnp.asarray(folding.classes),
    jnp.asarray(folding.continuation), jnp.asarray(folding.word_codes),
    jnp.asarray(folding.word_terms), folding.word_buckets, folding.num_terms,
  )  # fmt: skip
  np.testing.assert_array_equal(np.asarray(device), host)
  assert host[-1, -1] == 0


def test_a_word_of_several_pieces_is_one_term(wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  pieces = wordpiece_vocab.pieces("zuckerberg")
  assert len(pieces) > 1
  terms = folding.terms(
    np.asarray(wordpiece_vocab.encode_inputs("zuckerberg", 16))
  )
  assert np.count_nonzero(terms) == 1
  # Plural and singular of a split word share the stem's term.
  plural = folding.text_terms(wordpiece_vocab, ["cryptocurrencies"])[0]
  singular = folding.text_terms(wordpiece_vocab, ["cryptocurrency"])[0]
  assert len(plural) == 1 and plural == singular
  assert plural[0] >= wordpiece_vocab.base_size  # a new term id
  assert folding.num_terms > plural[0]


def test_a_word_not_in_the_table_is_one_bucket_term(wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  text = ["zorblaxian"]
  assert len(wordpiece_vocab.pieces(text[0])) > 1
  (terms,) = folding.text_terms(wordpiece_vocab, text)
  assert len(terms) == 1
  first_bucket = folding.num_terms - folding.word_buckets
  assert first_bucket <= terms[0] < folding.num_terms
  # Pieces as terms (no words) keep the pieces.
  pieces = lexicon.piece_folding(wordpiece_vocab, "english")
  assert len(pieces.text_terms(wordpiece_vocab, text)[0]) > 1


def test_a_query_word_no_document_has_matches_nothing(wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  sets = _word_sets(folding, wordpiece_vocab)
  ids = wordpiece_vocab.encode_inputs("zorblaxian", 16)
  assert not sets.document_scores(lexicon.query_terms(folding, ids)).any()
  # An online document with the word is found by it.
  added = sets.appended(folding.text_terms(wordpiece_vocab, ["a zorblaxian"]))
  scores = added.document_scores(lexicon.query_terms(folding, ids))
  assert scores.argmax() == len(sets) and scores[:-1].max() == 0


def _word_sets(folding, vocab) -> term_sets_lib.TermSets:
  """SENTENCES' term sets under `folding`."""
  return term_sets_lib.build_term_sets(
    folding.text_terms(vocab, SENTENCES),
    folding.num_terms,
    language="english",
    word_table=(folding.word_codes, folding.word_terms, folding.word_buckets),
  )


def test_word_term_sets_score_as_bm25s_over_whole_words(wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  assert len(folding.word_codes) > 4  # several split words in the table
  sets = _word_sets(folding, wordpiece_vocab)
  stemmer = Stemmer.Stemmer("english")
  peer = bm25s.BM25()
  peer.index(
    bm25s.tokenize(list(SENTENCES), stopwords="en", stemmer=stemmer),
    show_progress=False,
  )
  for query in QUERIES:
    ids = wordpiece_vocab.encode_inputs(query, 32)
    got = sets.document_scores(lexicon.query_terms(folding, ids))
    tokens = bm25s.tokenize(
      [query], stopwords="en", stemmer=stemmer, return_ids=False
    )
    np.testing.assert_allclose(got, peer.get_scores(tokens[0]), rtol=1e-5)


def test_colliding_words_keep_their_pieces():
  continuation = np.array([False, False, True, True])
  spellings = {(1, 2): "ab", (1, 3): "ac"}
  codes, terms = word_terms.build_table(
    [np.array([1, 2, 0, 1, 3])],
    continuation,
    lambda ids: spellings[tuple(int(i) for i in ids)],
    lambda word: 10 if word == "ab" else None,  # "ac" is a stopword
  )
  assert len(codes) == 2 and terms.tolist() == [10, 0]  # "ab", sentinel
  # The same code for two spellings: neither is in the table.
  spelled = iter(["ab", "zz"])
  codes, _ = word_terms.build_table(
    [np.array([1, 2, 0, 1, 2])],
    continuation,
    lambda ids: next(spelled),
    lambda word: 10,
  )
  assert codes.tolist() == [word_terms.SENTINEL]


def test_save_and_load_keep_the_word_table(tmp_path, wordpiece_vocab):
  folding = _folding(wordpiece_vocab)
  sets = _word_sets(folding, wordpiece_vocab)
  sets.save(str(tmp_path))
  loaded = term_sets_lib.TermSets.load(str(tmp_path))
  assert loaded.words and loaded.num_terms == folding.num_terms
  assert loaded.word_buckets == folding.word_buckets
  np.testing.assert_array_equal(loaded.word_codes, folding.word_codes)
  again = lexicon.folding(wordpiece_vocab, loaded)
  np.testing.assert_array_equal(
    again.terms(np.asarray(wordpiece_vocab.encode_inputs(SENTENCES[0], 64))),
    folding.terms(np.asarray(wordpiece_vocab.encode_inputs(SENTENCES[0], 64))),
  )
  appended = loaded.appended([[1, 2]])
  assert appended.words and len(appended) == len(sets) + 1
