"""Residual-quantisation docids (gr/docids/rq.py): codes, names, new documents."""

import numpy as np
import pytest

from gr import docids as docids_lib
from gr.data import beir
from gr.docids import base
from gr.docids import rq
from gr.index.docid_trie import DocidTrie


def _unit(rng, n, d=16):
  x = rng.standard_normal((n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _corpus(n):
  return {f"d{i}": beir.Document(f"d{i}", "", f"text {i}") for i in range(n)}


def test_more_levels_reconstruct_better():
  x = _unit(np.random.default_rng(0), 300)
  errors = []
  for levels in (1, 2, 3, 4):
    codebooks, codes = rq.residual_kmeans(x, levels, 8, seed=0)
    assert codebooks.shape == (levels, 8, 16) and codes.shape == (300, levels)
    errors.append(rq.reconstruction_error(codebooks, codes, x))
  assert all(b < a for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.6 * errors[0]
  # Greedy encoding by the frozen codebooks gives the fitted codes back.
  np.testing.assert_array_equal(rq.encode(codebooks, x), codes)


def test_docids_are_unique_and_collisions_disambiguated():
  rng = np.random.default_rng(1)
  x = _unit(rng, 40)
  x[5] = x[3]  # identical vectors: identical codes
  x[9] = x[3]
  scheme = docids_lib.get_scheme("rq", levels=2, codebook_size=4)
  table = scheme.assign(_corpus(40), embeddings=x)
  docids = [table.docids_of[f"d{i}"][0] for i in range(40)]
  assert len(set(docids)) == 40
  group = [docids[i] for i in (3, 5, 9)]
  assert len({d.split()[-1] for d in group}) == 3
  assert all(d.split()[-1].startswith("<qx_") for d in group)
  assert len({" ".join(d.split()[:2]) for d in group}) == 1
  # Every code token of every level is reserved, then the <qx_j> used.
  assert table.reserved_tokens[:8] == tuple(
    f"<q{level}_{k}>" for level in range(2) for k in range(4)
  )
  extras = table.reserved_tokens[8:]
  assert extras == tuple(f"<qx_{j}>" for j in range(len(extras)))
  assert len(extras) >= 3
  for docid in docids:
    codes, extra = rq.parse(docid)
    assert len(codes) == 2
  # Docids name their codes: the codes reconstruct the vectors as fitted.
  codebooks = rq.codebooks_of(table)
  np.testing.assert_array_equal(rq.level_codes(docids), rq.encode(codebooks, x))


def test_new_documents_get_codes_from_the_frozen_codebooks(tmp_path):
  rng = np.random.default_rng(2)
  x = _unit(rng, 30)
  scheme = docids_lib.get_scheme("rq", levels=3, codebook_size=4)
  table = scheme.assign(_corpus(30), embeddings=x)
  table.save(tmp_path / "t")
  table = base.DocidTable.load(tmp_path / "t")
  scheme = docids_lib.scheme_for_table(table)
  new = {f"n{i}": beir.Document(f"n{i}", "", "new") for i in range(3)}
  y = _unit(rng, 3)
  y[2] = x[0]  # collides with an existing document's codes
  grown = scheme.assign_new(table, new, embeddings=y)
  codebooks = rq.codebooks_of(table)
  np.testing.assert_array_equal(rq.codebooks_of(grown), codebooks)  # frozen
  new_docids = [grown.docids_of[f"n{i}"][0] for i in range(3)]
  np.testing.assert_array_equal(
    rq.level_codes(new_docids), rq.encode(codebooks, y)
  )
  old = table.docids_of["d0"][0]
  assert grown.docids_of["d0"][0] == old  # existing docids unchanged
  assert new_docids[2].startswith(old + " ") and "<qx_" in new_docids[2]
  # No new code token: the whole codebook was reserved at assign time.
  assert [
    t for t in grown.reserved_tokens if t.startswith("<q") and "x" not in t
  ] == [t for t in table.reserved_tokens if "x" not in t]
  # The trie holds a docid and its disambiguated extension side by side.
  tokens = {t: i + 3 for i, t in enumerate(grown.reserved_tokens)}
  sequences = [
    [tokens[t] for t in d.split()] + [1] for d, _ in grown.all_docids()
  ]
  trie = DocidTrie.build(sequences, list(range(len(sequences))))
  assert trie is not None
  # A second add with the same codes takes the next <qx_j>.
  again = scheme.assign_new(
    grown, {"m": beir.Document("m", "", "x")}, embeddings=x[:1]
  )
  assert again.docids_of["m"][0] not in {d for d, _ in grown.all_docids()}


def test_token_vectors_are_the_codebook_vectors():
  x = _unit(np.random.default_rng(3), 20)
  x[1] = x[0]
  table = rq.RQScheme(levels=2, codebook_size=4).assign(
    _corpus(20), embeddings=x
  )
  vectors = rq.token_vectors(table)
  codebooks = rq.codebooks_of(table)
  np.testing.assert_array_equal(vectors["<q1_2>"], codebooks[1, 2])
  np.testing.assert_array_equal(vectors["<qx_0>"], np.zeros(16))
  # A docid's vectors sum to its document's reconstruction.
  docid = table.docids_of["d7"][0]
  total = sum(vectors[t] for t in docid.split())
  codes = rq.level_codes([docid])
  np.testing.assert_allclose(total, rq.reconstruct(codebooks, codes)[0])


def test_rejects_bad_settings():
  with pytest.raises(ValueError):
    rq.RQScheme(levels=0)
  with pytest.raises(ValueError):
    rq.RQScheme(codebook_size=1)


def test_residual_tokens_complete_each_vector():
  rng = np.random.default_rng(4)
  x = _unit(rng, 25)
  x[1] = x[0]  # identical codes: the residual tokens still tell them apart
  scheme = rq.RQScheme(levels=2, codebook_size=4, residual_token=True)
  table = scheme.assign(_corpus(25), embeddings=x)
  docids = [table.docids_of[f"d{i}"][0] for i in range(25)]
  assert len(set(docids)) == 25
  assert all(d.split()[-1] == f"<qr_{i}>" for i, d in enumerate(docids))
  assert not any("<qx_" in t for t in table.reserved_tokens)
  vectors = rq.token_vectors(table)
  for i, docid in enumerate(docids):
    total = sum(vectors[t] for t in docid.split())
    np.testing.assert_allclose(total, x[i], atol=1e-6)
  y = _unit(rng, 2)
  grown = scheme.assign_new(
    table,
    {"n0": beir.Document("n0", "", "a"), "n1": beir.Document("n1", "", "b")},
    embeddings=y,
  )
  np.testing.assert_array_equal(rq.codebooks_of(grown), rq.codebooks_of(table))
  vectors = rq.token_vectors(grown)
  for j, doc_id in enumerate(("n0", "n1")):
    docid = grown.docids_of[doc_id][0]
    assert docid.split()[-1] == f"<qr_{25 + j}>"
    total = sum(vectors[t] for t in docid.split())
    np.testing.assert_allclose(total, y[j], atol=1e-6)
