"""Builds and saves a DocidTable for a BEIR folder, and prints its statistics.

  python scripts/build_docids.py --data_dir data/news --scheme semantic \
      --out data/news/docids/semantic [--param k=10 --param c=10]

--param values are parsed as JSON when they can be (k=10 -> 10, parts=[...]),
otherwise kept as strings (method=tfidf). Semantic (and multi with a semantic
part) embed document bodies with MiniLM, cached in --embeddings_cache
(default <data_dir>/embeddings/minilm_bodies.npy); reused when the bodies match.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gr import docids  # pylint: disable=wrong-import-position
from gr.data import beir  # pylint: disable=wrong-import-position
from gr.docids import stats  # pylint: disable=wrong-import-position


def parse_params(pairs: list[str]) -> dict:
  params = {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    if not sep or not key:
      raise SystemExit(f"--param {pair!r}: expected key=value")
    try:
      params[key] = json.loads(value)
    except json.JSONDecodeError:
      params[key] = value
  return params


def needs_embeddings(scheme) -> bool:
  is_multi = isinstance(scheme, docids.MultiScheme)
  parts = scheme.part_schemes() if is_multi else [scheme]
  return any(isinstance(p, docids.SemanticScheme) for p in parts)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", required=True, help="BEIR folder")
  parser.add_argument("--scheme", required=True, choices=sorted(docids.SCHEMES))
  parser.add_argument("--out", required=True, help="output table directory")
  parser.add_argument("--param", action="append", default=[], help="key=value")
  parser.add_argument("--embeddings_cache", default=None)
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()

  corpus = beir.read_corpus(os.path.join(args.data_dir, "corpus.jsonl"))
  scheme = docids.get_scheme(args.scheme, **parse_params(args.param))
  kwargs, embed_seconds = {}, 0.0
  if needs_embeddings(scheme):
    from gr import embed  # pylint: disable=g-import-not-at-top
    cache = args.embeddings_cache or os.path.join(
        args.data_dir, "embeddings", "minilm_bodies.npy")
    start = time.perf_counter()
    kwargs["embeddings"] = embed.embed_with_cache(
        [d.text for d in corpus.values()], cache,
        lambda texts: embed.Embedder.load().embed(texts, args.batch_size))
    embed_seconds = time.perf_counter() - start
  start = time.perf_counter()
  table = scheme.assign(corpus, **kwargs)
  build_seconds = time.perf_counter() - start
  table.save(args.out)
  print(stats.format_statistics(stats.docid_statistics(table)))
  print(f"embedding time {embed_seconds:.1f} s (incl. model load, 0 if cached "
        f"or unused); assign time {build_seconds:.1f} s; saved to {args.out}")


if __name__ == "__main__":
  main()
