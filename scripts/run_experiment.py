r"""Runs a generative-retrieval experiment from gin: index, train, evaluate.

  python scripts/run_experiment.py --gin_file=configs/news_naive_tiny.gin \
    [--gin.TRAIN_STEPS=500] [--gin.DATA_DIR="'/path/to/beir'"] [--verbose]

Prints the GR vs BM25 table and leaves the index, checkpoints, TensorBoard
logs, TREC run files and results.json under WORKDIR. Run again with the
same WORKDIR, it reuses the index and resumes training. The console shows
status lines and the table; the full log (gin config, INFO lines) is in
WORKDIR/logs/run_experiment-<time>.log (--verbose: on the console too).
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402

from gr.experiments import gin_cli  # noqa: E402
from gr.experiments import run  # noqa: E402

_GIN_FILES, _GIN_BINDINGS = gin_cli.define_gin_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  gin_cli.log_under('run_experiment.workdir')
  run.run_experiment()


if __name__ == '__main__':
  gin_cli.run(main, console=True)
