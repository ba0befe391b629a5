r"""Runs a generative-retrieval experiment from gin: index, train, evaluate.

  python scripts/run_experiment.py --gin_file=configs/news_naive_tiny.gin \
    [--gin.TRAIN_STEPS=500] [--gin.DATA_DIR="'/path/to/beir'"]

Prints the GR vs BM25 table and leaves the index, checkpoints, TensorBoard
logs, TREC run files and results.json under WORKDIR. Run again with the
same WORKDIR, it reuses the index and resumes training.
"""

from absl import app
from absl import flags

from gr.experiments import gin_cli
from gr.experiments import run

_GIN_FILES = flags.DEFINE_multi_string('gin_file', [], 'Gin config files.')
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [], 'Bindings.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  gin_cli.quiet_orbax_info()
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  run.run_experiment()


if __name__ == '__main__':
  gin_cli.run(main)
