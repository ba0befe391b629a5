r"""Trains a model: gin files + bindings -> the gin-bound train().

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
The console shows status lines; the full log (gin config, INFO lines) is
in MODEL_DIR/logs/train-<time>.log (--verbose: on the console too).
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from gr import partitioning  # noqa: E402
from gr.experiments import configurables  # noqa: E402
from gr.experiments import gin_cli  # noqa: E402

_GIN_FILES, _GIN_BINDINGS = gin_cli.define_gin_flags()
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0 (multi-host).'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', 1, 'Processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', 0, "This process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _COORDINATOR.value:
    partitioning.initialize_distributed(
      _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
    )
  gin_cli.parse_gin(_GIN_FILES.value, _GIN_BINDINGS.value)
  multihost = _NUM_PROCESSES.value > 1
  gin_cli.log_under(
    'train.model_dir', f'-p{_PROCESS_ID.value}' if multihost else ''
  )
  configurables.train()


if __name__ == '__main__':
  gin_cli.run(main, console=True)
