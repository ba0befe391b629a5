"""Builds and saves a DocidTable for a BEIR folder, and prints its statistics.

  python scripts/build_docids.py --data_dir data/news --scheme semantic \
      --out data/news/docids/semantic [--param k=10 --param c=10]

--param values are parsed as JSON when they can be (k=10 -> 10, parts=[...]),
otherwise kept as strings (method=tfidf). Semantic (and multi with a semantic
part) embed document bodies with MiniLM, cached in --embeddings_cache
(default <data_dir>/embeddings/minilm_bodies.npy); reused when the bodies match.
--embeddings_file takes the vectors from a user's .npz instead (`ids` [N],
`vectors` [N, D]: gr/data/embeddings_file.py), e.g. embedded elsewhere.
The console shows status lines (embedding progress) and the statistics;
--verbose shows every log line (this job keeps no log file).
"""

import json
import os
import time

from absl import app
from absl import flags

from gr import docids
from gr import entry
from gr.data import beir
from gr.data import embeddings_file
from gr.docids import stats

_DATA_DIR = flags.DEFINE_string('data_dir', None, 'BEIR folder.', required=True)
_SCHEME = flags.DEFINE_enum(
  'scheme', None, sorted(docids.SCHEMES), 'Docid scheme.', required=True
)
_OUT = flags.DEFINE_string(
  'out', None, 'Output table directory.', required=True
)
_PARAM = flags.DEFINE_multi_string('param', [], 'Scheme parameter key=value.')
_EMBEDDINGS_CACHE = flags.DEFINE_string(
  'embeddings_cache',
  None,
  'Body embeddings cache (default <data_dir>/embeddings/minilm_bodies.npy).',
)
_EMBEDDINGS_FILE = flags.DEFINE_string(
  'embeddings_file',
  None,
  'A user-supplied .npz of ids [N] and vectors [N, D] that semantic / rq '
  'docids quantise instead of embedding the bodies with MiniLM.',
)
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Embedding batch size.')


def parse_params(pairs: list[str]) -> dict:
  params = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise app.UsageError(f"--param {pair!r}: expected key=value")
    try:
      params[key] = json.loads(value)
    except json.JSONDecodeError:
      params[key] = value
  return params


def needs_embeddings(scheme) -> bool:
  is_multi = isinstance(scheme, docids.MultiScheme)
  parts = scheme.part_schemes() if is_multi else [scheme]
  return any(
    isinstance(p, (docids.SemanticScheme, docids.RQScheme)) for p in parts
  )


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  corpus = beir.read_corpus(os.path.join(_DATA_DIR.value, "corpus.jsonl"))
  scheme = docids.get_scheme(_SCHEME.value, **parse_params(_PARAM.value))
  kwargs, embed_seconds = {}, 0.0
  if _EMBEDDINGS_FILE.value:
    if not needs_embeddings(scheme):
      raise app.UsageError(f"{_SCHEME.value} docids use no embeddings")
    kwargs["embeddings"] = embeddings_file.vectors_for(
      _EMBEDDINGS_FILE.value, list(corpus)
    )
  elif needs_embeddings(scheme):
    from gr.model import embed  # pylint: disable=g-import-not-at-top

    cache = _EMBEDDINGS_CACHE.value or os.path.join(
      _DATA_DIR.value, "embeddings", "minilm_bodies.npy"
    )
    start = time.perf_counter()
    kwargs["embeddings"] = embed.embed_with_cache(
      [d.text for d in corpus.values()],
      cache,
      lambda texts: embed.Embedder.load().embed(texts, _BATCH_SIZE.value),
    )
    embed_seconds = time.perf_counter() - start
  start = time.perf_counter()
  table = scheme.assign(corpus, **kwargs)
  build_seconds = time.perf_counter() - start
  table.save(_OUT.value)
  print(stats.format_statistics(stats.docid_statistics(table)))
  print(
    f"embedding time {embed_seconds:.1f} s (incl. model load, 0 if cached "
    f"or unused); assign time {build_seconds:.1f} s; saved to {_OUT.value}"
  )


if __name__ == "__main__":
  entry.run(main, console=True)
