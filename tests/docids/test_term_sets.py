"""Tests for gr/docids/term_sets.py and gr/index/lexicon.py: term-set
impacts against bm25s (the oracle), truncation, frozen statistics for new
documents, and the saved file."""

import bm25s
import numpy as np
import pytest

from gr.docids import term_sets as term_sets_lib

WORDS = (
  "river stone cloud ember frost grove harbor island jungle kettle "
  "lantern meadow nectar orchard pepper quartz"
).split()


def _corpus(seed: int, num_docs: int = 30) -> list[list[int]]:
  """Documents as word-id lists of varied lengths, Zipf-ish frequencies."""
  rng = np.random.default_rng(seed)
  weights = 1.0 / np.arange(1, len(WORDS) + 1)
  return [
    rng.choice(
      len(WORDS), size=rng.integers(3, 25), p=weights / weights.sum()
    ).tolist()
    for _ in range(num_docs)
  ]


def _scores(sets: term_sets_lib.TermSets, query: list[int]) -> np.ndarray:
  """[N] sum over each document's set of occurrences-in-query * impact."""
  return sets.document_scores(np.bincount(query, minlength=len(WORDS)))


@pytest.mark.parametrize("seed", [0, 1])
def test_all_terms_score_as_bm25s(seed):
  documents = _corpus(seed)
  sets = term_sets_lib.build_term_sets(documents, len(WORDS))
  peer = bm25s.BM25()  # Lucene BM25, k1 1.5, b 0.75
  peer.index([[WORDS[t] for t in d] for d in documents], show_progress=False)
  rng = np.random.default_rng(seed + 10)
  for _ in range(5):
    query = rng.choice(len(WORDS), size=4).tolist()  # repeats possible
    want = peer.get_scores([WORDS[t] for t in query])
    np.testing.assert_allclose(_scores(sets, query), want, rtol=1e-5)


def test_max_terms_keeps_the_highest_impacts():
  documents = _corpus(2)
  full = term_sets_lib.build_term_sets(documents, len(WORDS))
  cut = term_sets_lib.build_term_sets(documents, len(WORDS), max_terms=3)
  assert cut.terms.shape[1] == 3
  for (terms, impacts), (all_terms, all_impacts) in zip(
    cut.rows(), full.rows()
  ):
    assert len(terms) == min(3, len(all_terms))
    np.testing.assert_array_equal(impacts, all_impacts[: len(impacts)])
    assert np.all(np.diff(all_impacts) <= 0)  # best first


def test_new_documents_use_the_frozen_statistics():
  documents = _corpus(3)
  sets = term_sets_lib.build_term_sets(documents[:20], len(WORDS))
  grown = sets.appended(documents[20:])
  assert len(grown) == len(documents)
  assert grown.stats == sets.stats  # frozen: N, avgdl, df unchanged
  for old, new in zip(sets.rows(), grown.rows()[:20]):
    np.testing.assert_array_equal(old[0], new[0])
    np.testing.assert_array_equal(old[1], new[1])
  # A new document's impacts: from the statistics of the first 20 only.
  alone = term_sets_lib.term_set(documents[25], sets.stats, 0)
  np.testing.assert_array_equal(grown.rows()[25][0], alone[0])
  np.testing.assert_allclose(grown.rows()[25][1], alone[1])


def test_a_term_unseen_at_indexing_gets_the_largest_idf():
  sets = term_sets_lib.build_term_sets([[0, 1], [0]], vocab_size=2)
  unseen, seen = sets.stats.idf(np.array([7, 0]))
  assert unseen == pytest.approx(np.log1p(2.5 / 0.5))
  assert unseen > seen


def test_save_and_load_round_trip(tmp_path):
  sets = term_sets_lib.build_term_sets(_corpus(4), len(WORDS), max_terms=5)
  sets.save(str(tmp_path))
  loaded = term_sets_lib.TermSets.load(str(tmp_path))
  np.testing.assert_array_equal(loaded.terms, sets.terms)
  np.testing.assert_array_equal(loaded.impacts, sets.impacts)
  np.testing.assert_array_equal(
    loaded.stats.document_frequency, sets.stats.document_frequency
  )
  assert loaded.stats.num_docs == sets.stats.num_docs
  assert loaded.max_terms == 5
  assert term_sets_lib.TermSets.load(str(tmp_path / "none")) is None


def test_load_names_a_file_of_another_format(tmp_path):
  np.savez(tmp_path / term_sets_lib.FILE_NAME, terms=np.zeros(3))
  with pytest.raises(ValueError, match=term_sets_lib.FILE_NAME):
    term_sets_lib.TermSets.load(str(tmp_path))


# -- terms folded in a language (gr/index/lexicon.py) --

SENTENCES = (
  "the cats were running across the river",
  "a runner runs by the rivers and the stones",
  "stone bridges cross many rivers",
  "clouds over the harbor",
  "the cat sleeps in the harbor",
  "running water and falling stones",
)


def test_english_term_sets_score_as_bm25s_with_stemmer_and_stopwords(
  wordpiece_vocab,
):
  import Stemmer

  from gr.index import lexicon

  for word in " ".join(SENTENCES).split():  # every word is one piece here
    assert len(wordpiece_vocab.pieces(word)) == 1, word
  terms = lexicon.document_terms(wordpiece_vocab, SENTENCES, "english")
  sets = term_sets_lib.build_term_sets(
    terms, wordpiece_vocab.vocab_size, language="english"
  )
  stemmer = Stemmer.Stemmer("english")
  peer = bm25s.BM25()
  peer.index(
    bm25s.tokenize(list(SENTENCES), stopwords="en", stemmer=stemmer),
    show_progress=False,
  )
  folding = lexicon.piece_folding(wordpiece_vocab, "english")
  for query in ("running cats", "the river stones", "a runner in the harbor"):
    query_ids = wordpiece_vocab.encode_inputs(query, 32)
    got = sets.document_scores(lexicon.query_terms(folding, query_ids))
    tokens = bm25s.tokenize(
      [query], stopwords="en", stemmer=stemmer, return_ids=False
    )
    np.testing.assert_allclose(got, peer.get_scores(tokens[0]), rtol=1e-5)


def test_term_classes_fold_stems_and_drop_stopwords(wordpiece_vocab):
  from gr.index import lexicon

  ids = lambda word: wordpiece_vocab.pieces(word)[0]
  plain = lexicon.term_classes(wordpiece_vocab)
  english = lexicon.term_classes(wordpiece_vocab, "english")
  assert plain[ids("running")] != plain[ids("run")]
  assert english[ids("running")] == english[ids("run")] > 0
  assert english[ids("the")] == 0 and plain[ids("the")] > 0
  for special in [0, *wordpiece_vocab.encode_inputs("", 8)]:  # PAD CLS SEP
    assert english[special] == 0
  continuation = wordpiece_vocab.pieces("zuckerberg")[-1]
  assert english[continuation] == continuation  # '##...': its own term
  with pytest.raises(ValueError, match="klingon"):
    lexicon.term_classes(wordpiece_vocab, "klingon")


def test_save_and_load_keep_the_language(tmp_path):
  sets = term_sets_lib.build_term_sets(
    _corpus(5), len(WORDS), language="english"
  )
  sets.save(str(tmp_path))
  assert term_sets_lib.TermSets.load(str(tmp_path)).language == "english"
  assert sets.appended(_corpus(6)[:2]).language == "english"
