r"""The demo (`make demo`): news benchmark -> docids -> train -> GR vs BM25.

  python scripts/demo.py [--gin_file=configs/demo.gin] [--gin.TRAIN_STEPS=..]

Builds the shipped news benchmark into data/news if it is not there, then
runs the demo experiment (MiniLM encoder under a one-layer T5 decoder,
atomic docids with the lexical plan, configs/demo.gin) and prints the
table. Leaves the index, a checkpoint, TensorBoard logs and TREC run files
under runs/demo. Logs only warnings; --verbosity=0 shows the INFO lines
(the gin config, training progress).
"""

import os
import time

from absl import flags
from absl import logging

from gr.data import news
from gr.experiments import gin_cli
from gr.experiments import run

_GIN_FILES = flags.DEFINE_multi_string(
  'gin_file', ['configs/demo.gin'], 'Gin config files.'
)
_GIN_BINDINGS = flags.DEFINE_multi_string('gin_bindings', [], 'Bindings.')
_DATA_DIR = flags.DEFINE_string(
  'data_dir', 'data/news', 'Where the news benchmark is (or is built).'
)


def main(argv):
  del argv
  start = time.time()
  if not os.path.exists(os.path.join(_DATA_DIR.value, news.MANIFEST_FILE)):
    logging.info('building the news benchmark into %s', _DATA_DIR.value)
    news.build_news_benchmark(_DATA_DIR.value)
  gin_cli.quiet_orbax_info()
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  run.run_experiment()
  print(f'demo finished in {(time.time() - start) / 60:.1f} min')


if __name__ == '__main__':
  flags.FLAGS.set_default('verbosity', logging.WARNING)
  gin_cli.run(main)
