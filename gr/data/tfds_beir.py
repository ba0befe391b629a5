"""A TFDS builder for any BEIR folder (no download: it reads local files).

Not yet used by the jobs (only by tests/test_tfds_beir.py); issue 21 wires
it in as their streaming input.

One builder, `beir_folder`, with one config per (folder, part):

  part      splits                      features
  corpus    corpus                      doc_id, title, text, metadata_json
  queries   queries                     query_id, text
  qrels     one per qrels/<split>.tsv   query_id, doc_id, score (int32)

Records keep file order (shuffling is disabled). Reading goes through
gr.data.beir, so malformed input raises BeirFormatError and qrels are
checked against the corpus and query ids. A config's name ends with a
digest of the files it reads, so editing the folder prepares a new dataset
instead of serving stale records.

  datasets = load_beir_tfds("data/news", data_dir="/tmp/tfds")
  datasets["corpus"], datasets["queries"], datasets["qrels_test"]
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Iterator, Optional

import tensorflow as tf
import tensorflow_datasets as tfds

from gr.data import beir

PARTS = ("corpus", "queries", "qrels")


@dataclasses.dataclass(eq=False)
class BeirFolderConfig(tfds.core.BuilderConfig):
  """Which folder and which part of it (see module docstring)."""

  folder: str = ""
  part: str = "corpus"
  queries_file: str = "queries.jsonl"
  qrels_dir: str = "qrels"


def _qrels_paths(config: BeirFolderConfig) -> dict[str, str]:
  """{split: path} of every qrels .tsv, sorted by split name."""
  qrels_dir = os.path.join(config.folder, config.qrels_dir)
  if not os.path.isdir(qrels_dir):
    raise beir.BeirFormatError(qrels_dir, None, "qrels folder not found")
  return {
    name[:-4]: os.path.join(qrels_dir, name)
    for name in sorted(os.listdir(qrels_dir))
    if name.endswith(".tsv")
  }


def _part_files(config: BeirFolderConfig) -> list[str]:
  corpus = os.path.join(config.folder, "corpus.jsonl")
  queries = os.path.join(config.folder, config.queries_file)
  return {
    "corpus": [corpus],
    "queries": [queries],
    "qrels": [corpus, queries, *_qrels_paths(config).values()],
  }[config.part]


def _digest(paths: list[str]) -> str:
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()[:12]


def make_config(
  folder: str,
  part: str,
  *,
  queries_file: str = "queries.jsonl",
  qrels_dir: str = "qrels",
  name: Optional[str] = None,
) -> BeirFolderConfig:
  """A config for `part` of `folder`, named `<name>-<part>-<digest>`.

  `name` defaults to the folder's base name plus, for the queries and qrels
  of a non-default query set, the queries file (`news_subtitles_queries`);
  the corpus part is shared by every query set of a folder.
  """
  if part not in PARTS:
    raise ValueError(f"part must be one of {PARTS}, got {part!r}")
  folder = os.path.abspath(os.fspath(folder))
  if name is None:
    name = os.path.basename(folder)
    if part != "corpus" and queries_file != "queries.jsonl":
      name += "_" + os.path.splitext(queries_file)[0]
  name = re.sub(r"[^A-Za-z0-9_]", "_", name)
  config = BeirFolderConfig(
    name="",
    folder=folder,
    part=part,
    queries_file=queries_file,
    qrels_dir=qrels_dir,
  )
  return dataclasses.replace(
    config,
    name=f"{name}-{part}-{_digest(_part_files(config))}",
    description=f"{part} of the BEIR folder {folder}",
  )


def _features(part: str) -> tfds.features.FeaturesDict:
  text = tfds.features.Text()
  return tfds.features.FeaturesDict(
    {
      "corpus": {
        "doc_id": text,
        "title": text,
        "text": text,
        "metadata_json": text,
      },
      "queries": {"query_id": text, "text": text},
      "qrels": {"query_id": text, "doc_id": text, "score": tf.int32},
    }[part]
  )


class BeirFolder(tfds.core.GeneratorBasedBuilder):
  """Any local BEIR folder as a TFDS dataset; pass `config=make_config(...)`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Corpus, queries and qrels of a BEIR folder."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=_features(self.builder_config.part),
      disable_shuffling=True,
      homepage="https://github.com/beir-cellar/beir",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    corpus = os.path.join(config.folder, "corpus.jsonl")
    queries = os.path.join(config.folder, config.queries_file)
    if config.part == "corpus":
      return {"corpus": self._generate_examples(corpus)}
    if config.part == "queries":
      return {"queries": self._generate_examples(queries)}
    references = dict(
      corpus_ids={d.doc_id for d in beir.iter_corpus(corpus)},
      query_ids=set(beir.read_queries(queries)),
    )
    return {
      split: self._generate_examples(path, references)
      for split, path in _qrels_paths(config).items()
    }

  def _generate_examples(
    self, path: str, references: Optional[dict] = None
  ) -> Iterator[tuple[str, dict]]:
    """(key, example) of the config's part from one file, in file order."""
    part = self.builder_config.part
    if part == "corpus":
      for doc in beir.iter_corpus(path):
        yield (
          doc.doc_id,
          {
            "doc_id": doc.doc_id,
            "title": doc.title,
            "text": doc.text,
            "metadata_json": json.dumps(dict(doc.metadata), ensure_ascii=False),
          },
        )
    elif part == "queries":
      for query_id, text in beir.read_queries(path).items():
        yield query_id, {"query_id": query_id, "text": text}
    else:
      for query_id, judged in beir.read_qrels(path, **references).items():
        for doc_id, score in judged.items():
          yield (
            f"{query_id}\t{doc_id}",
            {"query_id": query_id, "doc_id": doc_id, "score": score},
          )


def beir_builders(
  folder: str, data_dir: str, **config_kwargs
) -> dict[str, BeirFolder]:
  """{part: BeirFolder builder} for every part of `folder` (not prepared)."""
  return {
    part: BeirFolder(
      config=make_config(folder, part, **config_kwargs),
      data_dir=os.fspath(data_dir),
    )
    for part in PARTS
  }


def load_beir_tfds(
  folder: str, data_dir: str, **config_kwargs
) -> dict[str, tf.data.Dataset]:
  """Prepares (once) and loads a BEIR folder as tf.data datasets.

  Args:
    folder: the BEIR folder.
    data_dir: TFDS data directory for the prepared records.
    **config_kwargs: `queries_file`, `qrels_dir`, `name` (see make_config).

  Returns:
    {"corpus": ds, "queries": ds, "qrels_<split>": ds, ...}; elements are
    dicts of scalar tensors (strings as tf.string bytes).
  """
  datasets = {}
  for part, builder in beir_builders(folder, data_dir, **config_kwargs).items():
    builder.download_and_prepare()
    for split in builder.info.splits:
      key = f"qrels_{split}" if part == "qrels" else split
      datasets[key] = builder.as_dataset(split=split)
  return datasets
