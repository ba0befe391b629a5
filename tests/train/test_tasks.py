"""Tests for gr/train/tasks.py: seqio tasks/mixtures over a tiny BEIR dataset.

Oracles: seqio's own EncDecFeatureConverter (t5x features) and the
DocidTable (which docids each document has).
"""

import collections
import random

import numpy as np
import pytest
import seqio
import tensorflow as tf

from gr.train import tasks
from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib
from gr.data.beir import BeirDataset, Document
from gr.docids import multi, naive, text

WORDS = (
  "river bank loan market energy price school teacher budget vote "
  "storm coast harbor train station museum garden bridge farmer wheat "
  "doctor clinic vaccine court judge"
).split()
NUM_DOCS = 14
LENGTHS = {"inputs": 24, "targets": 12}


def _dataset() -> BeirDataset:
  rng = random.Random(0)
  corpus = {
    f"d{i}": Document(
      f"d{i}",
      f"Headline number {i}",
      " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30))),
    )
    for i in range(NUM_DOCS)
  }
  queries = {
    f"q{i}": f"who asked question {i} about {WORDS[i]}" for i in range(NUM_DOCS)
  }
  qrels = {
    "train": {f"q{i}": {f"d{i}": 1} for i in range(0, 8)},
    "dev": {f"q{i}": {f"d{i}": 1} for i in range(8, 11)},
    "test": {f"q{i}": {f"d{i}": 1} for i in range(11, 14)},
  }
  qrels["train"]["q0"]["d1"] = 0  # not relevant: must not become an example
  return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


@pytest.fixture(scope="module")
def data():
  return _dataset()


@pytest.fixture(scope="module")
def tables(data):
  return {
    "naive": naive.NaiveScheme().assign(data.corpus),
    "text": text.TextScheme(num_words=2).assign(data.corpus),
    "multi": multi.MultiScheme(
      parts=(
        {"scheme": "naive"},
        {"scheme": "text", "method": "prefix", "num_words": 3},
      )
    ).assign(data.corpus),
  }


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, data, tables):
  texts = [d.text for d in data.corpus.values()] + list(data.queries.values())
  path = sp_training.train_sentencepiece(
    texts, str(tmp_path_factory.mktemp("sp") / "spm"), vocab_size=120
  )
  tokens = list(
    dict.fromkeys(t for table in tables.values() for t in table.reserved_tokens)
  )
  return vocab_lib.Vocabulary(path, tokens)


@pytest.fixture(scope="module")
def pseudo(data):
  return {
    doc_id: [f"pseudo {doc.text.split()[0]} {k}" for k in range(2)]
    for doc_id, doc in data.corpus.items()
  }


@pytest.fixture(scope="module")
def names(data, tables, vocab, pseudo):
  return {
    scheme: tasks.register_gr_tasks(
      name="tt", dataset=data, table=table, vocab=vocab, pseudo_queries=pseudo
    )
    for scheme, table in tables.items()
  }


def _examples(task_name, split="train", lengths=LENGTHS):
  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset(lengths, split=split, shuffle=False)
  return [{k: v.numpy() for k, v in ex.items()} for ex in dataset]


def _text(value) -> str:
  return value.decode("utf-8")


def test_names_kinds_and_splits(names, tables):
  assert names["naive"] == {
    kind: f"gr.tt.naive.v0.{kind}.v1" for kind in tasks.KINDS
  }
  splits = {
    kind: set(seqio.get_mixture_or_task(name).splits)
    for kind, name in names["naive"].items()
  }
  assert splits == {
    "indexing": {"train"},
    "pseudo_query": {"train"},
    "retrieval": {"train", "validation", "test"},
    "doc2query": {"train", "validation"},
  }
  assert tables["multi"].version == 0


@pytest.mark.parametrize("scheme", ["naive", "text", "multi"])
def test_indexing_targets_decode_to_the_documents_docids(
  scheme, names, tables, vocab, data
):
  table = tables[scheme]
  examples = _examples(names[scheme]["indexing"])
  pairs = collections.Counter(
    (_text(ex["doc_id"]), _text(ex["docid"])) for ex in examples
  )
  assert pairs == collections.Counter(
    (doc_id, docid) for docid, doc_id in table.all_docids()
  )
  for ex in examples:
    doc_id, docid = _text(ex["doc_id"]), _text(ex["docid"])
    assert vocab.decode_docid(ex["targets"]) == docid
    assert ex["targets"][-1] == vocab.eos_id
    assert list(ex["targets"][:-1]) == vocab.encode_docid(docid)
    assert _text(ex["inputs_pretokenized"]) == data.corpus[doc_id].text
    assert "Headline" not in vocab.decode(ex["inputs"])  # title never used


def test_multi_docid_table_gives_one_example_per_docid(names, tables):
  table = tables["multi"]
  assert all(len(ids) == 2 for ids in table.docids_of.values())
  examples = _examples(names["multi"]["indexing"])
  assert len(examples) == 2 * NUM_DOCS
  retrieval = _examples(names["multi"]["retrieval"])
  assert len(retrieval) == 2 * 8


def test_t5x_features_from_seqio_converter(names, vocab):
  task_name = names["naive"]["indexing"]
  raw = _examples(task_name)
  dataset = seqio.get_mixture_or_task(task_name).get_dataset(
    LENGTHS, split="train", shuffle=False
  )
  converted = seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS)
  features = [{k: v.numpy() for k, v in ex.items()} for ex in converted]
  assert len(features) == len(raw)
  for ex, feats in zip(raw, features):
    assert set(feats) == {
      "encoder_input_tokens",
      "decoder_input_tokens",
      "decoder_target_tokens",
      "decoder_loss_weights",
    }
    target = feats["decoder_target_tokens"]
    assert target.shape == (LENGTHS["targets"],)
    assert feats["encoder_input_tokens"].shape == (LENGTHS["inputs"],)
    assert vocab.decode_docid(target) == _text(ex["docid"])
    np.testing.assert_array_equal(
      feats["decoder_input_tokens"], np.concatenate([[0], target[:-1]])
    )
    np.testing.assert_array_equal(feats["decoder_loss_weights"], target != 0)
    inputs = feats["encoder_input_tokens"]
    assert inputs[np.count_nonzero(inputs) - 1] == vocab.eos_id


def test_long_inputs_are_truncated_and_end_in_eos(names, vocab):
  lengths = {"inputs": 5, "targets": 12}
  for ex in _examples(names["naive"]["indexing"], lengths=lengths):
    assert len(ex["inputs"]) <= 5 and ex["inputs"][-1] == vocab.eos_id


def test_docid_longer_than_target_length_is_an_error(names):
  # NUM_DOCS > 10: "d10" has naive docid "<1> <0>" -> 3 ids with EOS.
  with pytest.raises(tf.errors.InvalidArgumentError, match="<1> <0>"):
    _examples(names["naive"]["indexing"], lengths={"inputs": 8, "targets": 2})


def test_retrieval_splits_follow_qrels(names, data, vocab, tables):
  for split, qrels_split in tasks.QRELS_SPLIT.items():
    examples = _examples(names["naive"]["retrieval"], split=split)
    relevant = {
      (q, d)
      for q, docs in data.qrels[qrels_split].items()
      for d, score in docs.items()
      if score > 0
    }
    assert {
      (_text(ex["query_id"]), _text(ex["doc_id"])) for ex in examples
    } == relevant
    for ex in examples:
      assert (
        _text(ex["inputs_pretokenized"])
        == (data.queries[_text(ex["query_id"])])
      )
      assert (
        vocab.decode_docid(ex["targets"])
        in tables["naive"].docids_of[_text(ex["doc_id"])]
      )


def test_held_out_queries_never_in_any_train_split(names, data):
  held_out = {
    data.queries[q] for split in ("dev", "test") for q in data.qrels[split]
  }
  seen = set()
  for scheme_names in names.values():
    for task_name in scheme_names.values():
      for ex in _examples(task_name, split="train"):
        for key in ("inputs_pretokenized", "targets_pretokenized"):
          if key in ex:
            seen.add(_text(ex[key]))
  assert seen and not seen & held_out
  assert {data.queries[q] for q in data.qrels["train"]} <= seen


def test_doc2query_pairs_bodies_with_train_queries(names, data, vocab):
  lengths = {"inputs": 24, "targets": 64}
  examples = _examples(names["naive"]["doc2query"], lengths=lengths)
  assert {
    (_text(ex["doc_id"]), _text(ex["targets_pretokenized"])) for ex in examples
  } == {(f"d{i}", data.queries[f"q{i}"]) for i in range(8)}
  for ex in examples:
    assert ex["targets"][-1] == vocab.eos_id
    assert vocab.decode(ex["targets"]) == _text(ex["targets_pretokenized"])
    assert (
      _text(ex["inputs_pretokenized"]) == data.corpus[_text(ex["doc_id"])].text
    )
  validation = _examples(
    names["naive"]["doc2query"], split="validation", lengths=lengths
  )
  assert {_text(ex["query_id"]) for ex in validation} == {"q8", "q9", "q10"}


def test_pseudo_query_task(names, pseudo, tables, vocab):
  examples = _examples(names["multi"]["pseudo_query"])
  assert len(examples) == 2 * 2 * NUM_DOCS  # 2 queries x 2 docids per doc
  for ex in examples:
    doc_id = _text(ex["doc_id"])
    assert _text(ex["inputs_pretokenized"]) in pseudo[doc_id]
    assert (
      vocab.decode_docid(ex["targets"]) in tables["multi"].docids_of[doc_id]
    )


def test_registering_twice_is_safe_and_changes_are_caught(
  data, tables, vocab, pseudo, names
):
  again = tasks.register_gr_tasks(
    name="tt",
    dataset=data,
    table=tables["naive"],
    vocab=vocab,
    pseudo_queries=pseudo,
  )
  assert again == names["naive"]
  changed = {d: q[:1] for d, q in pseudo.items()}
  with pytest.raises(ValueError, match="pseudo_query.v1 is already registered"):
    tasks.register_gr_tasks(
      name="tt",
      dataset=data,
      table=tables["naive"],
      vocab=vocab,
      pseudo_queries=changed,
    )
  bumped = tasks.register_gr_tasks(
    name="tt",
    dataset=data,
    table=tables["naive"],
    vocab=vocab,
    pseudo_queries=changed,
    version="v2",
  )
  assert bumped["pseudo_query"] == "gr.tt.naive.v0.pseudo_query.v2"


def test_new_table_version_gives_new_names(data, tables, vocab):
  table = tables["naive"]
  known = dict(list(data.corpus.items())[:10])
  small = naive.NaiveScheme().assign(known)
  rest = {d: doc for d, doc in data.corpus.items() if d not in known}
  bigger = naive.NaiveScheme().assign_new(small, rest)
  assert (small.version, bigger.version) == (0, 1)
  old = tasks.register_gr_tasks(
    name="tv", dataset=data, table=small, vocab=vocab
  )
  new = tasks.register_gr_tasks(
    name="tv", dataset=data, table=bigger, vocab=vocab
  )
  assert new["indexing"] == "gr.tv.naive.v1.indexing.v1"
  assert set(old.values()).isdisjoint(new.values())
  assert len(_examples(old["indexing"])) == 10
  assert len(_examples(new["indexing"])) == NUM_DOCS
  # Queries about documents the small table lacks are left out.
  assert "test" not in seqio.get_mixture_or_task(old["retrieval"]).splits
  assert table.num_docs == NUM_DOCS


def test_mixture(names):
  rates = {
    names["naive"]["indexing"]: 1.0,
    names["naive"]["retrieval"]: 2.0,
    names["naive"]["doc2query"]: 0.5,
  }
  name = tasks.register_gr_mixture("gr.tt.mix", rates)
  assert tasks.register_gr_mixture("gr.tt.mix", rates) == name
  dataset = seqio.get_mixture_or_task(name).get_dataset(
    LENGTHS, split="train", shuffle=True, seed=0, num_epochs=1
  )
  converted = seqio.EncDecFeatureConverter(pack=False)(dataset, LENGTHS)
  batch = [ex for ex in converted.take(8).as_numpy_iterator()]
  assert len(batch) == 8
  assert all(ex["decoder_target_tokens"].shape == (12,) for ex in batch)
  with pytest.raises(ValueError, match="different definition"):
    tasks.register_gr_mixture("gr.tt.mix", {**rates, next(iter(rates)): 3.0})
  with pytest.raises(ValueError, match="not registered"):
    tasks.register_gr_mixture("gr.tt.mix2", {"gr.nope": 1.0})
  with pytest.raises(ValueError, match="must be > 0"):
    tasks.register_gr_mixture("gr.tt.mix3", {next(iter(rates)): 0.0})


def test_shared_query_ids_across_splits_are_rejected(data, tables, vocab):
  leaky = BeirDataset(
    corpus=data.corpus,
    queries=data.queries,
    qrels={**data.qrels, "test": {"q0": {"d0": 1}}},
  )
  with pytest.raises(ValueError, match="both train and test.*q0"):
    tasks.register_gr_tasks(
      name="leak", dataset=leaky, table=tables["naive"], vocab=vocab
    )


def test_bad_names_and_unknown_tokens(data, tables, vocab):
  with pytest.raises(ValueError, match="task name"):
    tasks.task_name("has-dash", tables["naive"], "indexing")
  with pytest.raises(ValueError, match="kind"):
    tasks.task_name("ok", tables["naive"], "bogus")
  bare = vocab_lib.Vocabulary(vocab.sp_model_path)  # no docid tokens
  with pytest.raises(ValueError, match="not a docid token"):
    tasks.register_gr_tasks(
      name="bare", dataset=data, table=tables["naive"], vocab=bare
    )


@pytest.mark.parametrize("docid_targets", [True, False])
def test_file_task_streams_the_same_examples_as_the_in_memory_task(
  data, tables, vocab, tmp_path, docid_targets
):
  """Peer: register_task over the same examples (file order, unshuffled),
  docid targets (indexing) and text targets (doc2query)."""
  if docid_targets:
    examples = tasks.indexing_examples(data.corpus, tables["multi"], vocab)
  else:
    examples = [
      tasks.Example(doc.text, doc.title, doc_id)
      for doc_id, doc in data.corpus.items()
    ]
  suffix = "docids" if docid_targets else "text"
  memory = tasks.register_task(
    f"tt_memory_{suffix}.v1",
    {tasks.TRAIN: examples},
    vocab,
    docid_targets=docid_targets,
  )
  path = str(tmp_path / "examples.tfrecord")
  from gr.train import example_files

  written = example_files.write_examples(
    path, iter(examples), text_targets=not docid_targets
  )
  assert written == len(examples)
  streamed = tasks.register_file_task(
    f"tt_file_{suffix}.v1", path, vocab, docid_targets=docid_targets
  )
  want, got = _examples(memory), _examples(streamed)
  assert len(got) == len(want) == len(examples)
  for a, b in zip(want, got):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # Shuffled: the same examples in another (seeded) order.
  shuffled = seqio.get_mixture_or_task(streamed).get_dataset(
    LENGTHS, split="train", shuffle=True, seed=1
  )
  docs = sorted(_text(ex["doc_id"].numpy()) for ex in shuffled)
  assert docs == sorted(_text(ex["doc_id"]) for ex in want)


def test_write_examples_refuses_mixed_targets(tmp_path):
  from gr.train import example_files

  with pytest.raises(ValueError, match="example 2"):
    example_files.write_examples(
      str(tmp_path / "x.tfrecord"),
      [tasks.Example("a", (3, 1), "d1"), tasks.Example("b", "text", "d2")],
      text_targets=False,
    )
  assert not list(tmp_path.iterdir())  # nothing left behind
