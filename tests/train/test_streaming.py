"""Streamed tasks (gr/train/streaming.py): a toy corpus above a tiny
threshold is written to TFRecord shards and read back with the in-memory
path's examples; reruns reuse the shards; a corrupt shard is named; and a
training run interrupted and resumed sees the batches of an uninterrupted
one, from the data position saved with its checkpoint."""

import collections
import os
import random
import shutil

import numpy as np
import pytest
import seqio

from gr.data.beir import BeirDataset, Document
from gr.docids import naive
from gr.index import sentencepiece_training as sp_training
from gr.index import vocab as vocab_lib
from gr.model import models
from gr.model import network
from gr.queries import doc2query
from gr.train import data as data_lib
from gr.train import example_files
from gr.train import loop as train_lib
from gr.train import streaming
from gr.train import tasks

WORDS = (
  "river bank loan market energy price school teacher budget vote storm "
  "coast harbor train station museum garden bridge farmer wheat"
).split()
NUM_DOCS = 30
LENGTHS = {"inputs": 16, "targets": 8}


@pytest.fixture(scope="module")
def data():
  rng = random.Random(0)
  corpus = {
    f"d{i}": Document(
      f"d{i}",
      "",
      " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))),
    )
    for i in range(NUM_DOCS)
  }
  queries = {
    f"q{i}": f"question {i} {WORDS[i % len(WORDS)]}" for i in range(NUM_DOCS)
  }
  qrels = {
    "train": {f"q{i}": {f"d{i}": 1} for i in range(0, 20)},
    "dev": {f"q{i}": {f"d{i}": 1} for i in range(20, 25)},
    "test": {f"q{i}": {f"d{i}": 1} for i in range(25, 30)},
  }
  return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


@pytest.fixture(scope="module")
def table(data):
  return naive.NaiveScheme().assign(data.corpus)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, data, table):
  texts = [d.text for d in data.corpus.values()] + list(data.queries.values())
  path = sp_training.train_sentencepiece(
    texts, str(tmp_path_factory.mktemp("sp") / "spm"), vocab_size=80
  )
  return vocab_lib.Vocabulary(path, table.reserved_tokens)


@pytest.fixture(scope="module")
def pseudo(data):
  return {d: [f"about {doc.text.split()[0]}"] for d, doc in data.corpus.items()}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("examples"))


def _register(name, data, table, vocab, pseudo, stream):
  return tasks.register_gr_tasks(
    name=name,
    dataset=data,
    table=table,
    vocab=vocab,
    pseudo_queries=pseudo,
    streaming=stream,
  )


@pytest.fixture(scope="module")
def both(data, table, vocab, pseudo, shard_dir):
  """(in-memory names, streamed names): the same tasks both ways."""
  memory = _register("sm", data, table, vocab, pseudo, streaming.IN_MEMORY)
  stream = streaming.Streaming(
    above_docs=5, directory=shard_dir, shuffle_buffer=7
  )
  return memory, _register("ss", data, table, vocab, pseudo, stream)


def _examples(name, split, **kwargs):
  task = seqio.get_mixture_or_task(name)
  dataset = task.get_dataset(LENGTHS, split=split, num_epochs=1, **kwargs)
  return [{k: v.numpy() for k, v in ex.items()} for ex in dataset]


def _key(example):
  return (
    tuple(example["inputs"]),
    tuple(example["targets"]),
    example["doc_id"],
    example["query_id"],
  )


def test_streamed_tasks_hold_the_in_memory_examples(both, shard_dir):
  """Unshuffled: the same examples in the same order; shuffled: the same
  multiset in another order (one epoch)."""
  memory, streamed = both
  assert memory.keys() == streamed.keys() == set(tasks.KINDS)
  for kind in tasks.KINDS:
    splits = seqio.get_mixture_or_task(memory[kind]).splits
    assert seqio.get_mixture_or_task(streamed[kind]).splits == splits
    for split in splits:
      want = _examples(memory[kind], split, shuffle=False)
      got = _examples(streamed[kind], split, shuffle=False)
      assert [_key(e) for e in got] == [_key(e) for e in want], (kind, split)
      shuffled = _examples(streamed[kind], split, shuffle=True, seed=4)
      assert collections.Counter(map(_key, shuffled)) == collections.Counter(
        map(_key, want)
      )
  assert data_lib.streams_from_files(streamed[tasks.INDEXING])
  assert not data_lib.streams_from_files(memory[tasks.INDEXING])
  assert any(
    f.startswith(f"{streamed[tasks.INDEXING]}.train.")
    for f in os.listdir(shard_dir)
  )


def test_threshold_chooses_memory_or_shards(data, table, vocab, tmp_path):
  at = streaming.Streaming(above_docs=NUM_DOCS, directory=str(tmp_path))
  names = _register("st_at", data, table, vocab, None, at)
  assert not data_lib.streams_from_files(names[tasks.INDEXING])
  assert not os.listdir(tmp_path)
  above = streaming.Streaming(above_docs=NUM_DOCS - 1, directory=str(tmp_path))
  names = _register("st_above", data, table, vocab, None, above)
  assert data_lib.streams_from_files(names[tasks.INDEXING])
  assert os.listdir(tmp_path)
  assert streaming.DEFAULT.above_docs == 50_000  # the news demo stays in memory


def test_many_shards_keep_the_order_and_a_rerun_reuses_them(
  data, table, vocab, tmp_path, monkeypatch
):
  stream = streaming.Streaming(
    above_docs=0, directory=str(tmp_path), examples_per_shard=7
  )
  memory = _register("sr_mem", data, table, vocab, None, streaming.IN_MEMORY)
  names = _register("sr", data, table, vocab, None, stream)
  (folder,) = [f for f in os.listdir(tmp_path) if ".indexing." in f]
  shards = example_files.load_shards(str(tmp_path / folder))
  assert len(shards.paths) == 5 and shards.count == NUM_DOCS  # ceil(30 / 7)
  want = _examples(memory[tasks.INDEXING], "train", shuffle=False)
  got = _examples(names[tasks.INDEXING], "train", shuffle=False)
  assert [_key(e) for e in got] == [_key(e) for e in want]

  def no_writes(*args, **kwargs):
    raise AssertionError("shards written again")

  monkeypatch.setattr(example_files, "write_shards", no_writes)
  assert _register("sr", data, table, vocab, None, stream) == names


def test_a_corrupt_or_missing_shard_is_named(data, table, vocab, tmp_path):
  stream = streaming.Streaming(above_docs=0, directory=str(tmp_path))
  _register("sc", data, table, vocab, None, stream)
  (folder,) = [f for f in os.listdir(tmp_path) if ".indexing." in f]
  (shard,) = [
    p for p in (tmp_path / folder).iterdir() if p.suffix == ".tfrecord"
  ]
  raw = bytearray(shard.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  shard.write_bytes(bytes(raw))
  with pytest.raises(example_files.ShardError, match=str(shard)):
    _register("sc", data, table, vocab, None, stream)
  shard.unlink()
  with pytest.raises(example_files.ShardError, match=f"{shard}.*missing"):
    _register("sc", data, table, vocab, None, stream)


def test_doc2query_task_streams_above_the_threshold(data, vocab, tmp_path):
  stream = streaming.Streaming(above_docs=0, directory=str(tmp_path))
  name = doc2query.register_doc2query_task("sd", data, vocab, streaming=stream)
  assert data_lib.streams_from_files(name)
  memory = doc2query.register_doc2query_task(
    "sd_mem", data, vocab, streaming=streaming.IN_MEMORY
  )
  for split in ("train", "validation"):
    assert [_key(e) for e in _examples(name, split, shuffle=False)] == [
      _key(e) for e in _examples(memory, split, shuffle=False)
    ]


def test_train_batches_draw_from_the_in_memory_examples(both):
  """The loop's batches of the streamed indexing task (seqio repeats, then
  shuffles in its own buffer, so batches cross epochs): 10 epochs' worth
  hold every in-memory example and nothing else. (One epoch is exactly
  the in-memory multiset: test_streamed_tasks_hold_the_in_memory_examples.)"""
  memory, streamed = both
  shapes = dict(
    split="train", input_length=16, target_length=8, batch_size=5, seed=2
  )
  batches = data_lib.task_batches(streamed[tasks.INDEXING], **shapes)
  got = collections.Counter()
  for _ in range(2 * NUM_DOCS):
    for row in next(batches)["encoder_input_tokens"]:
      got[tuple(row)] += 1
  want = data_lib.task_batches(memory[tasks.INDEXING], **shapes)
  want = {
    tuple(row)
    for _ in range(2 * NUM_DOCS)
    for row in next(want)["encoder_input_tokens"]
  }
  assert set(got) == want
  assert len(want) == NUM_DOCS and sum(got.values()) == 10 * NUM_DOCS


def test_interrupted_run_resumes_with_the_uninterrupted_batches(
  both, vocab, tmp_path
):
  """A streamed mixture: checkpoint_data is on by default, and a run
  resumed from step 3 sees the batches of steps 4..6 that the
  uninterrupted run saw (and ends with its params)."""
  _, streamed = both
  mixture = tasks.register_gr_mixture(
    "ss.naive.stream_mixture",
    {streamed[tasks.INDEXING]: 1.0, streamed[tasks.PSEUDO_QUERY]: 1.0},
  )
  assert data_lib.streams_from_files(mixture)
  model = models.EncoderDecoderModel(
    network.T5Config.tiny(
      vocab.vocab_size,
      num_encoder_layers=1,
      num_decoder_layers=1,
      emb_dim=32,
      head_dim=8,
      mlp_dim=64,
    )
  )

  def run(model_dir, seen):
    def record(batch):
      seen.append(batch["encoder_input_tokens"].copy())
      return batch

    return train_lib.train(
      model=model,
      mixture_or_task_name=mixture,
      train_steps=6,
      batch_size=8,
      model_dir=str(model_dir),
      input_length=16,
      target_length=8,
      checkpoint_every=3,
      log_every=3,
      seed=5,
      batch_transform=record,
    )

  reference_batches, resumed_batches = [], []
  reference = run(tmp_path / "reference", reference_batches)
  positions = tmp_path / "reference" / data_lib.DATA_STATE_DIR
  assert sorted(os.listdir(positions)) == ["3", "6"]
  resumed_dir = tmp_path / "resumed"
  shutil.copytree(tmp_path / "reference", resumed_dir)
  shutil.rmtree(resumed_dir / "6")  # as if killed after step 3
  shutil.rmtree(resumed_dir / data_lib.DATA_STATE_DIR / "6")
  resumed = run(resumed_dir, resumed_batches)
  assert int(resumed.step) == 6
  assert len(resumed_batches) >= 3
  for want, got in zip(
    reference_batches[3:6], resumed_batches[:3], strict=True
  ):
    np.testing.assert_array_equal(want, got)
  np.testing.assert_allclose(
    np.concatenate([np.ravel(x) for x in _leaves(resumed.params)]),
    np.concatenate([np.ravel(x) for x in _leaves(reference.params)]),
    rtol=1e-6,
  )


def _leaves(tree):
  import jax

  return [
    np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))
  ]


def test_run_experiment_mixtures_stream_above_its_threshold(
  data, table, vocab, pseudo, tmp_path
):
  """run_experiment's docid_tasks: both its mixtures (training, and every
  docid task for the encoder cache) stream from shards in the given folder."""
  import types

  from gr.experiments import run

  index = types.SimpleNamespace(table=table, vocab=vocab)
  register_tasks, _ = run.docid_tasks(
    "sx", data, pseudo, {"indexing": 1.0, "retrieval": 1.0}, 16, 0, tmp_path
  )
  assert data_lib.streams_from_files(register_tasks(index))
  assert any(".indexing." in f for f in os.listdir(tmp_path / "examples"))
  memory_tasks, _ = run.docid_tasks(
    "sx_mem", data, pseudo, {"indexing": 1.0}, 16, NUM_DOCS, tmp_path
  )
  assert not data_lib.streams_from_files(memory_tasks(index))
