"""Docid schemes and DocidTable: hypothesis properties for every scheme."""

import json
import os
import zlib

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st

from gr import atomic_io
from gr import docids
from gr.data.beir import Document
from gr.docids import base, stats, text

BODY_WORDS = (
  "apple",
  "banana",
  "Cherry",
  "delta",
  "echo",
  "fig",
  "grape",
  "hotel",
  "india",
  "kilo",
  "lima",
  "mango",
  "olive",
  "papaya",
  "the",
  "and",
  "x1",
  "42",
  "Café",
  "naïve",
)
# Never in a body, never a counter or "empty": any docid holding one leaked it.
TITLE_WORDS = ("quartz", "zephyr", "wombat", "jazz", "quiz")
EMBED_DIM = 6

SCHEMES = {
  "naive": lambda: docids.get_scheme("naive"),
  "naive_shuffled": lambda: docids.get_scheme("naive", shuffle=True, seed=3),
  "atomic": lambda: docids.get_scheme("atomic"),
  "semantic": lambda: docids.get_scheme("semantic", k=3, c=3),
  "semantic_position": lambda: docids.get_scheme(
    "semantic", k=2, c=4, token_style="position"
  ),
  "semantic_node": lambda: docids.get_scheme(
    "semantic", k=2, c=3, token_style="node"
  ),
  "text_tfidf": lambda: docids.get_scheme("text", num_words=2),
  "text_appearance": lambda: docids.get_scheme(
    "text", num_words=3, order="appearance"
  ),
  "text_prefix": lambda: docids.get_scheme(
    "text", method="prefix", num_words=2
  ),
  "multi": lambda: docids.get_scheme(
    "multi",
    parts=[
      {"scheme": "semantic", "k": 3, "c": 3},
      {"scheme": "text", "num_words": 1},
      {"scheme": "text", "method": "prefix", "num_words": 2},
    ],
  ),
  "multi_naive": lambda: docids.get_scheme(
    "multi", parts=[{"scheme": "text", "num_words": 2}, {"scheme": "naive"}]
  ),
}
PROPERTY_SETTINGS = hypothesis.settings(
  max_examples=20,
  deadline=None,
  suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)


@st.composite
def corpora(draw, min_size=1, max_size=20):
  """{doc_id: Document} with titles made only of TITLE_WORDS."""
  bodies = draw(
    st.lists(
      st.lists(st.sampled_from(BODY_WORDS), max_size=10),
      min_size=min_size,
      max_size=max_size,
    )
  )
  separators = draw(st.sampled_from([" ", ", ", " - ", "\n"]))
  corpus = {}
  for i, words in enumerate(bodies):
    title = " ".join(
      draw(st.lists(st.sampled_from(TITLE_WORDS), min_size=1, max_size=3))
    )
    corpus[f"doc{i}"] = Document(f"doc{i}", title, separators.join(words))
  return corpus


def fake_embeddings(corpus) -> np.ndarray:
  """Deterministic per body text: equal bodies get equal rows [n, EMBED_DIM]."""
  rows = [
    np.random.default_rng(zlib.crc32(d.text.encode())).normal(size=EMBED_DIM)
    for d in corpus.values()
  ]
  return np.array(rows, np.float32).reshape(len(corpus), EMBED_DIM)


def uses_embeddings(scheme) -> bool:
  return isinstance(scheme, (docids.SemanticScheme, docids.MultiScheme))


def assign(scheme, corpus):
  if uses_embeddings(scheme):
    return scheme.assign(corpus, embeddings=fake_embeddings(corpus))
  return scheme.assign(corpus)


def assign_new(scheme, table, new_docs):
  if uses_embeddings(scheme):
    return scheme.assign_new(
      table, new_docs, embeddings=fake_embeddings(new_docs)
    )
  return scheme.assign_new(table, new_docs)


def split(corpus, at):
  items = list(corpus.items())
  return dict(items[:at]), {f"new{k}": v for k, v in items[at:]}


def assert_one_doc_per_docid(table):
  pairs = table.all_docids()
  assert len({s for s, _ in pairs}) == len(pairs)
  for docid, doc_id in pairs:
    assert table.docid_to_doc[docid] == doc_id
  assert all(len(ids) >= 1 for ids in table.docids_of.values())


@pytest.mark.parametrize("name", sorted(SCHEMES))
class TestEveryScheme:
  @PROPERTY_SETTINGS
  @hypothesis.given(corpus=corpora())
  def test_assign_is_valid_deterministic_and_ordered(self, name, corpus):
    table = assign(SCHEMES[name](), corpus)
    assert table.doc_ids == tuple(corpus)
    assert_one_doc_per_docid(table)
    assert assign(SCHEMES[name](), corpus) == table
    tokens = {t for s, _ in table.all_docids() for t in s.split(" ")}
    assert {t for t in tokens if t.startswith("<")} <= set(
      table.reserved_tokens
    )

  @PROPERTY_SETTINGS
  @hypothesis.given(corpus=corpora(min_size=2), data=st.data())
  def test_assign_new_keeps_existing_docids(self, name, corpus, data):
    old, new = split(corpus, data.draw(st.integers(1, len(corpus) - 1)))
    scheme = SCHEMES[name]()
    table = assign(scheme, old)
    grown = assign_new(scheme, table, new)
    assert grown.version == table.version + 1
    assert {d: grown.docids_of[d] for d in old} == dict(table.docids_of)
    assert grown.doc_ids == tuple(old) + tuple(new)
    old_tokens = table.reserved_tokens
    assert grown.reserved_tokens[: len(old_tokens)] == old_tokens
    assert_one_doc_per_docid(grown)
    with pytest.raises(docids.DocidTableError, match="already in the table"):
      assign_new(scheme, grown, {next(iter(old)): next(iter(old.values()))})

  @PROPERTY_SETTINGS
  @hypothesis.given(corpus=corpora(min_size=2))
  def test_removed_docids_are_never_reused(self, name, corpus):
    scheme = docids.scheme_for_table(assign(SCHEMES[name](), corpus))
    table = assign(scheme, corpus)
    removed = list(corpus)[-1:] + list(corpus)[:1]
    retired = {s for d in removed for s in table.docids_of[d]}
    shrunk = table.remove(removed)
    assert shrunk.retired_docids == retired
    assert shrunk.reserved_tokens == table.reserved_tokens
    regrown = assign_new(
      scheme, shrunk, {f"back{d}": corpus[d] for d in removed}
    )
    assert not retired & set(regrown.docid_to_doc)
    assert_one_doc_per_docid(regrown)

  @PROPERTY_SETTINGS
  @hypothesis.given(corpus=corpora())
  def test_no_title_word_in_any_docid(self, name, corpus):
    table = assign(SCHEMES[name](), corpus)
    words = {w for s, _ in table.all_docids() for w in s.split(" ")}
    assert not words & set(TITLE_WORDS)

  def test_save_load_round_trip_and_corruption(self, name, tmp_path):
    corpus = {
      f"d{i}": Document(f"d{i}", "quiz", f"{BODY_WORDS[i]} kilo {i}")
      for i in range(12)
    }
    scheme = SCHEMES[name]()
    table = assign_new(
      scheme,
      assign(scheme, corpus).remove(["d3"]),
      {"z": Document("z", "jazz", "mango papaya")},
    )
    table.save(tmp_path)
    loaded = docids.DocidTable.load(tmp_path)
    assert loaded == table and loaded.version == 2
    assert loaded.retired_docids == table.retired_docids
    grown = assign_new(scheme, loaded, {"y": Document("y", "", "olive kilo")})
    assert dict(grown.docids_of) == {
      **table.docids_of,
      "y": grown.docids_of["y"],
    }
    for victim in (base.TABLE_FILE, base.ARRAYS_FILE):
      data = bytearray((tmp_path / victim).read_bytes())
      data[len(data) // 2] ^= 0xFF
      (tmp_path / victim).write_bytes(bytes(data))
      with pytest.raises(docids.DocidTableError, match=victim):
        docids.DocidTable.load(tmp_path)
      table.save(tmp_path)


def test_each_scheme_is_reachable_by_name_and_rebuilt_from_its_table():
  corpus = {f"d{i}": Document(f"d{i}", "", f"olive {i}") for i in range(5)}
  examples = {
    "naive": "naive",
    "atomic": "atomic",
    "semantic": "semantic",
    "text": "text_tfidf",
    "multi": "multi",
  }
  for name, example in examples.items():
    scheme = SCHEMES[example]()
    table = assign(scheme, corpus)
    assert table.scheme == name
    assert docids.scheme_for_table(table) == scheme
  with pytest.raises(ValueError, match="unknown docid scheme"):
    docids.get_scheme("nope")


def test_load_refuses_consistent_checksum_but_inconsistent_table(tmp_path):
  table = docids.get_scheme("naive").assign(
    {f"d{i}": Document(f"d{i}", "", "x") for i in range(3)}
  )
  table.save(tmp_path)
  fields = json.loads((tmp_path / base.TABLE_FILE).read_text())
  fields["docids"]["d2"] = fields["docids"]["d1"]  # Two docs, one docid.
  data = json.dumps(fields).encode()
  (tmp_path / base.TABLE_FILE).write_bytes(data)
  manifest = json.loads((tmp_path / base.MANIFEST_FILE).read_text())
  manifest["sha256"][base.TABLE_FILE] = atomic_io.sha256_bytes(data)
  (tmp_path / base.MANIFEST_FILE).write_text(json.dumps(manifest))
  with pytest.raises(docids.DocidTableError, match="names both"):
    docids.DocidTable.load(tmp_path)
  os.remove(tmp_path / base.MANIFEST_FILE)
  with pytest.raises(docids.DocidTableError, match="manifest.json"):
    docids.DocidTable.load(tmp_path)


@pytest.mark.parametrize(
  "bad, message",
  [
    (dict(docids_of={"a": ()}), "has no docid"),
    (dict(docids_of={"a": ("<1>",), "b": ("<1>",)}), "names both"),
    (dict(docids_of={"a": ("<9>",)}), "not a reserved token"),
    (dict(docids_of={"a": ("x  y",)}), "single spaces"),
    (dict(reserved_tokens=("<1>", "<1>")), "duplicates"),
    (dict(reserved_tokens=("one",)), "shaped like"),
    (dict(config={"f": object()}), "JSON"),
  ],
)
def test_invalid_tables_are_refused(bad, message):
  fields = dict(
    scheme="naive",
    docids_of={"a": ("<1>",)},
    reserved_tokens=("<1>",),
    config={},
  )
  with pytest.raises(docids.DocidTableError, match=message):
    docids.DocidTable(**{**fields, **bad})


def test_naive_numbers_are_a_permutation_and_continue_after_the_largest():
  corpus = {f"d{i}": Document(f"d{i}", "", "") for i in range(23)}
  table = docids.get_scheme("naive", shuffle=True, seed=1).assign(corpus)
  numbers = [naive_number(ids[0]) for ids in table.docids_of.values()]
  assert sorted(numbers) == list(range(23)) and numbers != list(range(23))
  table = table.remove(
    [d for d, ids in table.docids_of.items() if naive_number(ids[0]) == 22]
  )
  grown = docids.get_scheme("naive").assign_new(
    table, {"n": Document("n", "", "")}
  )
  assert grown.docids_of["n"] == ("<2> <3>",)


def naive_number(docid):
  from gr.docids import naive  # pylint: disable=g-import-not-at-top

  return naive.docid_to_number(docid)


def test_atomic_reserves_one_token_per_document_append_only():
  corpus = {f"d{i}": Document(f"d{i}", "", "") for i in range(4)}
  scheme = docids.get_scheme("atomic")
  table = scheme.assign(corpus).remove(["d3"])
  grown = scheme.assign_new(table, {"e": Document("e", "", "")})
  assert grown.reserved_tokens == ("<d_0>", "<d_1>", "<d_2>", "<d_3>", "<d_4>")
  assert grown.docids_of["e"] == ("<d_4>",)


def test_text_tfidf_prefers_rare_words_and_keeps_idf_for_new_docs():
  corpus = {
    "a": Document("a", "", "common zebra"),
    "b": Document("b", "", "common yak"),
    "c": Document("c", "", "common, the Common!"),
  }
  scheme = docids.get_scheme("text", num_words=1)
  table = scheme.assign(corpus)
  assert table.docids_of == {"a": ("zebra",), "b": ("yak",), "c": ("common",)}
  # A new doc about "common yak yak" would score yak first; "yak" is taken,
  # so the next keyword is appended; "common" keeps its assign-time idf.
  grown = scheme.assign_new(table, {"d": Document("d", "", "common yak yak")})
  assert grown.docids_of["d"] == ("yak common",)
  again = scheme.assign_new(grown, {"e": Document("e", "", "yak common")})
  assert again.docids_of["e"] == ("yak common 2",)
  assert text.Idf.from_arrays(again.arrays) == text.Idf.from_arrays(
    table.arrays
  )


def test_text_prefix_and_appearance_order():
  body = "Zebras, the zebras and Éclair éclair-makers run: quickly 42"
  corpus = {"a": Document("a", "", body), "b": Document("b", "", "zebras run")}
  prefix = docids.get_scheme("text", method="prefix", num_words=4).assign(
    corpus
  )
  assert prefix.docids_of["a"] == ("zebras eclair makers run",)
  empty = docids.get_scheme("text").assign(
    {"a": Document("a", "", "the and"), "b": Document("b", "", "")}
  )
  assert empty.docids_of == {"a": ("empty",), "b": ("empty 2",)}


def test_semantic_routes_a_known_embedding_to_its_own_leaf_and_overflows():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(60, 8)).astype(np.float32)
  corpus = {f"d{i}": Document(f"d{i}", "", f"body {i}") for i in range(60)}
  scheme = docids.get_scheme("semantic", k=3, c=4, token_style="position")
  table = scheme.assign(corpus, embeddings=x)
  paths = [scheme.docid_to_path(ids[0]) for ids in table.docids_of.values()]
  leaves = {}
  for path in paths:
    leaves.setdefault(path[:-1], []).append(path[-1])
  assert all(
    sorted(p) == list(range(len(p))) and len(p) <= 4 for p in leaves.values()
  )
  new = {f"n{i}": Document(f"n{i}", "", "copy") for i in range(6)}
  grown = scheme.assign_new(table, new, embeddings=np.repeat(x[:1], 6, axis=0))
  new_paths = [scheme.docid_to_path(grown.docids_of[d][0]) for d in new]
  assert {p[:-1] for p in new_paths} == {paths[0][:-1]}
  start = len(leaves[paths[0][:-1]])
  assert [p[-1] for p in new_paths] == list(range(start, start + 6))
  level = len(paths[0]) - 1
  assert f"<c{level}_{start + 5}>" in grown.reserved_tokens
  assert_one_doc_per_docid(grown)


def test_semantic_node_tokens_name_one_cluster_each():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(40, 8)).astype(np.float32)
  corpus = {f"d{i}": Document(f"d{i}", "", f"body {i}") for i in range(40)}
  scheme = docids.get_scheme("semantic", k=3, c=4, token_style="node")
  table = scheme.assign(corpus, embeddings=x)
  members = {}
  for doc_id, (docid,) in table.docids_of.items():
    path = scheme.docid_to_path(docid)
    assert docid == scheme.path_to_docid(path)
    for depth, token in enumerate(docid.split()):
      assert token == "<n" + "_".join(map(str, path[: depth + 1])) + ">"
      members.setdefault(token, set()).add(doc_id)
  # A token's documents are exactly those under one tree node, and the last
  # token of a docid belongs to that document alone.
  assert set(members) == set(table.reserved_tokens)
  for doc_id, (docid,) in table.docids_of.items():
    assert members[docid.split()[-1]] == {doc_id}
  assert scheme.docid_to_path("<n0> <n1_0>") is None
  new = {"n0": Document("n0", "", "copy")}
  grown = scheme.assign_new(table, new, embeddings=x[:1])
  first = table.docids_of["d0"][0].split()
  assert grown.docids_of["n0"][0].split()[:-1] == first[:-1]
  assert_one_doc_per_docid(grown)


def test_semantic_embeds_bodies_only_with_the_given_embedder():

  class RecordingEmbedder:
    texts = []

    def embed(self, texts):
      self.texts.extend(texts)
      return fake_embeddings(
        {str(i): Document(str(i), "", t) for i, t in enumerate(texts)}
      )

  corpus = {
    "a": Document("a", "quiz title", "body one"),
    "b": Document("b", "jazz title", "body two"),
  }
  embedder = RecordingEmbedder()
  docids.get_scheme("semantic", embedder=embedder).assign(corpus)
  assert embedder.texts == ["body one", "body two"]
  with pytest.raises(ValueError, match="one row per document"):
    docids.get_scheme("semantic").assign(corpus, embeddings=np.zeros((3, 4)))


def test_multi_gives_each_doc_one_id_per_part_and_refuses_two_token_parts():
  corpus = {f"d{i}": Document(f"d{i}", "", "olive mango") for i in range(4)}
  scheme = SCHEMES["multi"]()
  table = assign(scheme, corpus)
  assert all(len(ids) == 3 for ids in table.docids_of.values())
  assert_one_doc_per_docid(table)
  with pytest.raises(ValueError, match="at most one"):
    docids.get_scheme(
      "multi", parts=[{"scheme": "naive"}, {"scheme": "atomic"}]
    )


def test_statistics_count_lengths_and_branching():
  table = docids.DocidTable(
    "semantic",
    {"a": ("<0> <0>",), "b": ("<0> <1>",), "c": ("<1> <0>",)},
    ("<0>", "<1>"),
    {},
  )
  result = stats.docid_statistics(table)
  assert result["num_docids"] == 3
  assert result["docid_length"]["histogram"] == {"2": 3}
  assert [(b["nodes"], b["max_children"]) for b in result["branching"]] == [
    (1, 2),
    (2, 2),
  ]
  assert "level 1: 2 nodes" in stats.format_statistics(result)
  json.dumps(result)
