"""How an online add meets the searches (issue 22 item 3).

On the tiny-BERT atomic run of tests/serve/test_capacity.py (warm-started
rows, so every add writes an embedding row):

  - an add writes its docid rows into the live embedding in place (the
    buffer is reused, the old array donated), not into a copy of the table;
    with `rows_in_place = False` it copies, as before (so the check can
    fail);
  - a search completes while an add holds the update lock (stopped half-way,
    after its logs are written), and reads the state before that add; once
    the add finishes, the new document is found at rank 1;
  - the document encoder splits n bodies into passes of its buckets with
    no padding on CPU, and the vectors do not depend on the split.
"""

import threading

import jax
import numpy as np

from gr.data import beir
from gr.index import vocab as vocab_lib
from gr.serve import online_rows

from tests.serve.test_capacity import (  # noqa: F401 (tiny_run: a fixture)
  copy_run,
  ranked_first,
  serve,
  tiny_run,
)

# Not a timing: how long a search may take before the test calls it
# stuck behind the blocked add (a few seconds on a loaded 2-core machine).
STUCK_S = 300


def embedding_of(r) -> jax.Array:
  return r.params["token_embedder"]["embedding"]


def test_an_add_writes_its_rows_in_place(tiny_run, tmp_path):  # noqa: F811
  run, _ = tiny_run
  r = serve(copy_run(run, tmp_path / "run"))
  try:
    # The first add may copy: computing the row rule takes a numpy view of
    # the table, and jax copies rather than donate a viewed buffer.
    r.add_documents([beir.Document("n0", "", "glacier fjord iceberg")])
    before = embedding_of(r)
    pointer = before.unsafe_buffer_pointer()
    r.add_documents([beir.Document("n1", "", "saxophone trumpet brass")])
    after = embedding_of(r)
    assert before.is_deleted()
    assert after.unsafe_buffer_pointer() == pointer
    token = r.index.table.docids_of["n1"][0]
    row = np.asarray(after)[r.index.vocab.docid_token_id(token)]
    assert np.linalg.norm(row) > 0
    docs = {
      "n0": beir.Document("n0", "", "glacier fjord iceberg"),
      "n1": beir.Document("n1", "", "saxophone trumpet brass"),
    }
    assert ranked_first(r, docs) == 1.0

    r.rows_in_place = False  # the path before: a new table per add
    kept = embedding_of(r)
    r.add_documents([beir.Document("n2", "", "orchard cider apples")])
    assert not kept.is_deleted()
    assert embedding_of(r).unsafe_buffer_pointer() != pointer
  finally:
    r.close()


def test_a_search_completes_while_an_add_holds_the_update_lock(
  tiny_run,  # noqa: F811
  tmp_path,
):
  run, _ = tiny_run
  r = serve(copy_run(run, tmp_path / "run"))
  persisted, release = threading.Event(), threading.Event()
  persist = r._persist  # pylint: disable=protected-access

  def stopped_persist(*args, **kwargs):
    """The add's logs are written; it waits (holding the update lock)."""
    compacted = persist(*args, **kwargs)
    persisted.set()
    release.wait()
    return compacted

  r._persist = stopped_persist  # pylint: disable=protected-access
  new = beir.Document("n0", "", "glacier fjord iceberg")
  adder = threading.Thread(target=r.add_documents, args=([new],))
  try:
    adder.start()
    assert persisted.wait(STUCK_S)
    assert r._update_lock.locked()  # pylint: disable=protected-access
    found = {}
    searcher = threading.Thread(
      target=lambda: found.update(hits=r.retrieve([new.text, "lava ash"], 1))
    )
    searcher.start()
    searcher.join(STUCK_S)
    assert not searcher.is_alive(), "the search waited for the update lock"
    assert r._update_lock.locked()  # pylint: disable=protected-access
    # The state before the add: n0 is not there yet, the trained are.
    assert all(h.doc_id != "n0" for h in found["hits"][0])
    assert found["hits"][1][0].doc_id == "volcano"
    assert "n0" not in r.index.table.docids_of
  finally:
    release.set()
    adder.join(STUCK_S)
  try:
    assert not adder.is_alive()
    assert ranked_first(r, {"n0": new}) == 1.0
  finally:
    r.close()


def test_the_encoder_passes_do_not_change_the_vectors(
  tiny_run,  # noqa: F811
  tmp_path,
):
  run, words = tiny_run
  r = serve(copy_run(run, tmp_path / "run"))
  try:
    bodies = [" ".join(words[i : i + 5]) for i in range(0, 13 * 5, 5)]
    tokens = vocab_lib.encode_texts(r.index.vocab, bodies, r.input_length)
    chunked = online_rows.DocumentEncoder(
      r.model, r.input_length, buckets=(1, 2, 4, 8)
    )
    chunked.pad = False
    assert chunked.chunks(13) == [8, 4, 1]
    whole = online_rows.DocumentEncoder(r.model, r.input_length, (1, 16))
    whole.pad = True
    assert whole.chunks(13) == [13]
    vectors = chunked.vectors(r.params, tokens)  # [13, D]
    assert vectors.shape == (13, r.model.config.encoder.hidden_size)
    np.testing.assert_allclose(
      vectors, whole.vectors(r.params, tokens), atol=1e-5
    )
    singles = [chunked.vectors(r.params, row[None])[0] for row in tokens]
    np.testing.assert_allclose(vectors, np.stack(singles), atol=1e-5)
    assert len({v.tobytes() for v in vectors}) == 13  # distinct bodies
  finally:
    r.close()


def test_short_bodies_are_encoded_at_their_own_length(
  tiny_run,  # noqa: F811
  tmp_path,
):
  """Bodies of 1 to 40 words in mixed order, at input length 64: the
  passes take them shortest first, each cut to the input length bucket of
  its longest body (16 for the shortest, 64 for the longest), and give the vectors of
  full-length passes, in the bodies' order."""
  run, words = tiny_run
  r = serve(copy_run(run, tmp_path / "run"))
  try:
    sizes = [40, 1, 12, 3, 25, 2, 7]
    bodies = [" ".join(words[i : i + n]) for i, n in enumerate(sizes)]
    tokens = vocab_lib.encode_texts(r.index.vocab, bodies, 64)  # [7, 64]
    encoder = online_rows.DocumentEncoder(r.model, 64, buckets=(1, 2, 4))
    encoder.pad = False
    full_length = encoder._pooled  # pylint: disable=protected-access
    lengths = []

    def recorded(params, passed):
      lengths.append(passed.shape[1])
      return full_length(params, passed)

    encoder._pooled = recorded  # pylint: disable=protected-access
    vectors = encoder.vectors(r.params, tokens)
    assert lengths == sorted(lengths) and lengths[0] == 16 and lengths[-1] == 64
    np.testing.assert_allclose(
      vectors, full_length(r.params["encoder"], tokens), atol=1e-5
    )
  finally:
    r.close()
