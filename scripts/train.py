r"""Trains a model: gin files + bindings -> gr.train.train().

  python scripts/train.py \
    --gin_file=gin/models/t5_tiny.gin --gin_file=gin/runs/train.gin \
    --gin.MIXTURE_OR_TASK_NAME="'my_task'" --gin.TRAIN_STEPS=100 \
    --gin.MODEL_DIR="'/tmp/gr_run'"

--gin.NAME=value is shorthand for --gin_bindings=NAME=value. Gin files are
looked up relative to the working directory, then to the repository root.
Multi-host: pass --coordinator_address, --num_processes and --process_id to
every process (the same command otherwise).
Started again with the same command after a crash, it resumes from the last
checkpoint in MODEL_DIR.
"""
import logging as py_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from gr import partitioning  # pylint: disable=g-import-not-at-top,wrong-import-position
from gr import train as train_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_GIN_FILES = flags.DEFINE_multi_string(
    'gin_file', [], 'Gin config files, applied in order.')
_GIN_BINDINGS = flags.DEFINE_multi_string(
    'gin_bindings', [], 'Gin bindings, applied after the files.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 (multi-host).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, "This process's index.")


def rewrite_gin_shorthand(argv: list[str]) -> list[str]:
  """--gin.NAME=value -> --gin_bindings=NAME=value (t5x's shorthand)."""
  return [f'--gin_bindings={arg[len("--gin."):]}'
          if arg.startswith('--gin.') else arg for arg in argv]


def quiet_orbax_info() -> None:
  """Orbax logs each save in detail at INFO; keep its warnings only."""
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or 'orbax' not in r.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value:
    partitioning.initialize_distributed(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  quiet_orbax_info()
  gin.add_config_file_search_path(REPO_ROOT)
  gin.parse_config_files_and_bindings(_GIN_FILES.value, _GIN_BINDINGS.value)
  logging.info('Gin config:\n%s', gin.config_str())
  train_lib.train()


if __name__ == '__main__':
  sys.argv = rewrite_gin_shorthand(sys.argv)
  app.run(main)
