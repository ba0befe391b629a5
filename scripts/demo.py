r"""The demo (`make demo`): news benchmark -> docids -> train -> GR vs BM25.

  python scripts/demo.py [--gin_file=configs/demo.gin] [--gin.TRAIN_STEPS=..]
    [--verbose]

Builds the shipped news benchmark into data/news if it is not there, then
runs the demo experiment (MiniLM encoder under a one-layer T5 decoder,
atomic docids with the lexical plan, configs/demo.gin) and prints the
table. Leaves the index, a checkpoint, TensorBoard logs and TREC run files
under runs/demo. The console shows one status line per phase and the
table; the full log (the gin config, every INFO line) is in
runs/demo/logs/demo-<time>.log, and --verbose shows it on the console too
(gr/console.py).
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import os  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from gr.data import news  # noqa: E402
from gr.experiments import gin_cli  # noqa: E402
from gr.experiments import run  # noqa: E402

_GIN_FILES, _GIN_BINDINGS = gin_cli.define_gin_flags(['configs/demo.gin'])
_DATA_DIR = flags.DEFINE_string(
  'data_dir', 'data/news', 'Where the news benchmark is (or is built).'
)


def main(argv):
  del argv
  start = time.time()
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  gin_cli.log_under('run_experiment.workdir')
  if not os.path.exists(os.path.join(_DATA_DIR.value, news.MANIFEST_FILE)):
    logging.info('building the news benchmark into %s', _DATA_DIR.value)
    news.build_news_benchmark(_DATA_DIR.value)
  run.run_experiment()
  print(f'demo finished in {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
  gin_cli.run(main, console=True)
