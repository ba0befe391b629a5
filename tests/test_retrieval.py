"""Tests for gr/retrieval.py: Searcher against the exact-ranking oracle."""
import jax
import numpy as np
import pytest

from gr import index as index_lib
from gr import models
from gr import network
from gr import retrieval
from gr.data.beir import Document
from gr.docids import get_scheme

WORDS = ("river stone cloud ember frost grove harbor island jungle kettle "
         "lantern meadow nectar orchard pepper quartz").split()


@pytest.fixture(scope="module")
def searcher(tmp_path_factory):
  corpus = {f"d{i}": Document(f"d{i}", "", " ".join(
      WORDS[(i * 3 + j) % len(WORDS)] for j in range(8))) for i in range(12)}
  table = get_scheme("multi").assign(corpus)  # several docids per document
  texts = index_lib.training_texts(corpus, {}) * 5
  index = index_lib.build_index(table, texts,
                                str(tmp_path_factory.mktemp("idx")),
                                vocab_size=80)
  sequences, _ = index.docid_sequences()
  model = models.EncoderDecoderModel(network.T5Config.tiny(
      vocab_size=-(-index.vocab.vocab_size // 128) * 128))
  params = model.init_params(jax.random.PRNGKey(0), input_length=16,
                             target_length=8)
  config = retrieval.SearchConfig(
      beam_size=len(sequences), top_k=len(sequences),
      max_decode_len=index.max_docid_length())
  return retrieval.Searcher(model, params, index, config, input_length=16,
                            batch_size=4)


def test_beam_search_with_full_beam_equals_exact_ranking(searcher):
  queries = ["river stone", "frost grove harbor", "pepper"]
  beam = searcher.search(queries)
  exact = retrieval.exact_ranking(searcher, queries, top_k=len(
      searcher.index.doc_ids))
  for b, e in zip(beam, exact):
    assert [d for d, _ in b] == [d for d, _ in e]
    np.testing.assert_allclose([s for _, s in b], [s for _, s in e],
                               atol=1e-4)


def test_every_result_is_an_indexed_document_once(searcher):
  rankings = searcher.search(["meadow nectar"] * 5)  # > batch_size: 2 chunks
  assert len(rankings) == 5
  for ranking in rankings:
    ids = [d for d, _ in ranking]
    assert len(ids) == len(set(ids))
    assert set(ids) <= set(searcher.index.doc_ids)
    scores = [s for _, s in ranking]
    assert scores == sorted(scores, reverse=True)
  assert rankings[0] == rankings[4]


def test_encode_queries_trims_and_terminates(searcher):
  tokens = retrieval.encode_queries(searcher.index.vocab,
                                    [" ".join(WORDS * 3), "river"], 16)
  assert tokens.shape == (2, 16)
  assert tokens[0, -1] == 1  # EOS kept after trimming
  assert (tokens[1] > 0).sum() == len(searcher.index.vocab.encode("river")) + 1
