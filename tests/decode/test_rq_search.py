"""RQ docids on a tiny BERT + T5 decoder: the warm start and logits mode.

The warm start (gr/model/warm_start.py) sets each code token's row to its
codebook vector and makes the decoder output the query's direction at every
step, so a docid's summed raw logits (SearchConfig.score_mode 'logits') are
cos(query, reconstruction) / temperature; beam search in logits mode equals
the exact oracle (gr/decode/oracle.py through models.step_scores).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.decode import beam_search as beam_lib
from gr.docids import rq
from gr.index import vocab as vocab_lib
from gr.model import bert
from gr.model import bert_network
from gr.model import models
from gr.model import score_modes
from gr.model import pretrained
from gr.model import warm_start
from gr.search import exact as exact_lib
from gr.search import retrieval
from tests.model.test_pretrained_encoder import decoder_config
from tests.support import tiny_bert

LENGTH = 16
TEMPERATURE = 0.05
TEXTS = [
  "the central bank raised interest rates",
  "a cat sat on the mat",
  "the football match ended in a draw",
  "a new vaccine was approved by regulators",
  "stock markets fell as investors sold shares in banks",
  "rain and storms are expected this weekend",
  "the team won the cup final at home",
  "a dog chased the cat across the garden",
  "regulators fined the bank for poor controls",
  "snow and ice closed roads in the north",
  "the election result surprised the markets",
  "doctors warn about the flu season",
]
QUERIES = [
  "bank interest rates",
  "cat on a mat",
  "storms this weekend",
  "vaccine regulators",
  "football draw",
  "dog in the garden",
  "snow closed roads",
  "flu season",
  "election markets",
  "team cup final",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  bert_dir = tiny_bert.write_tiny_bert(str(tmp_path_factory.mktemp("bert")))
  bert_config = bert.BertConfig.from_folder(bert_dir)
  bert_params = bert.load_params(bert_dir, bert_config)
  vocab0 = pretrained.wordpiece_index(
    docids_lib.get_scheme("atomic").assign({}), bert_dir
  ).vocab

  @jax.jit
  def dense(tokens):
    hidden = bert.BertEncoder(bert_config).apply(
      {"params": bert_params}, tokens, tokens > 0
    )
    return bert.mean_pool_normalise(hidden, tokens > 0)

  corpus = {f"d{i}": beir.Document(f"d{i}", "", t) for i, t in enumerate(TEXTS)}
  doc_vectors = np.asarray(
    dense(jnp.asarray(vocab_lib.encode_texts(vocab0, TEXTS, LENGTH)))
  )
  table = docids_lib.get_scheme("rq", levels=2, codebook_size=3).assign(
    corpus, embeddings=doc_vectors
  )
  index = pretrained.wordpiece_index(table, bert_dir)
  config = bert_network.BertT5Config(
    bert_config, decoder_config(128), 1, bert_dir
  )
  model = models.fit_vocab(
    models.EncoderDecoderModel(config), index.vocab.vocab_size
  )
  params = pretrained.initial_params(
    model,
    bert_dir,
    index=index,
    doc_vectors=doc_vectors,
    seed=0,
    input_length=LENGTH,
    target_length=4,
    temperature=TEMPERATURE,
  )
  queries = np.asarray(
    dense(jnp.asarray(vocab_lib.encode_texts(index.vocab, QUERIES, LENGTH)))
  )
  return model, params, index, queries


def test_rows_are_the_codebook_vectors(setup):
  _, params, index, _ = setup
  rows = np.asarray(params["token_embedder"]["embedding"])
  codebooks = rq.codebooks_of(index.table)
  for level in range(codebooks.shape[0]):
    for code in range(codebooks.shape[1]):
      token = index.vocab.docid_token_id(rq.code_token(level, code))
      np.testing.assert_allclose(rows[token], codebooks[level, code], atol=1e-6)
  for token in index.table.reserved_tokens:
    if token.startswith("<qx_"):
      assert not rows[index.vocab.docid_token_id(token)].any()


def _reconstructions(index):
  codebooks = rq.codebooks_of(index.table)
  docids = [index.table.docids_of[d][0] for d in index.doc_ids]
  return rq.reconstruct(codebooks, rq.level_codes(docids))  # [docs, dim]


def test_summed_logits_are_the_reconstruction_cosine(setup):
  """Every step outputs the query's direction (QUERY_GAIN), not only the
  first: the teacher-forced logits-mode score of each docid is
  q . reconstruction / temperature."""
  model, params, index, queries = setup
  score = retrieval.make_score_fn(model, score_mode="logits")
  sequences, values = index.docid_sequences()
  targets = jnp.asarray(
    np.stack([np.pad(s, (0, 4 - len(s))) for s in sequences])
  )
  recon = _reconstructions(index)[np.asarray(values)]  # [n, dim]
  tokens = vocab_lib.encode_texts(index.vocab, QUERIES, LENGTH)
  for query, vector in zip(tokens, queries):
    got = np.asarray(score(params, jnp.asarray(query), targets))
    np.testing.assert_allclose(got, recon @ vector / TEMPERATURE, atol=2e-2)


def test_query_gain_only_for_rq(setup):
  model, params, _, _ = setup
  out = np.asarray(
    params["decoder"]["layers_0"]["encoder_decoder_attention"]["out"]["kernel"]
  )
  width = out.shape[-1]
  np.testing.assert_allclose(
    out.reshape(width, width), warm_start.QUERY_GAIN * np.eye(width)
  )


def test_beam_search_equals_the_exact_oracle_in_logits_mode(setup):
  model, params, index, _ = setup
  config = retrieval.SearchConfig(
    beam_size=5, top_k=5, max_decode_len=4, score_mode="logits"
  )
  searcher = retrieval.Searcher(
    model, params, index, config, input_length=LENGTH, batch_size=len(QUERIES)
  )
  beams = searcher.search(QUERIES)
  exact = exact_lib.exact_ranking(searcher, QUERIES, top_k=5, batch_size=16)
  for found, oracle in zip(beams, exact):
    assert [d for d, _ in found] == [d for d, _ in oracle]
    np.testing.assert_allclose(
      [s for _, s in found], [s for _, s in oracle], rtol=1e-4, atol=1e-3
    )
  # Logits and log-probs rank differently once per-step normalisers differ;
  # both modes run through the same compiled search code.
  assert all(np.isfinite(s) for r in beams for _, s in r)


def test_score_mode_is_checked():
  with pytest.raises(ValueError, match="score_mode"):
    score_modes.check_score_mode("probs")
  with pytest.raises(ValueError, match="score_mode"):
    beam_lib.beam_search(
      lambda t, c, s: (jnp.zeros((1, 4)), c), {}, 1, beam_size=1,
      max_decode_len=2, score_mode="probs",
    )  # fmt: skip
