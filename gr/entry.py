"""A script's entry point: absl's app.run, bad input in one line, a console.

Every script ends with `entry.run(main)` (scripts that parse gin files use
gr/experiments/gin_cli.py's `run`, which adds the `--gin.NAME=value`
shorthand and calls this one). It is absl's `app.run(main)`, except that
bad input (a wrong flag, a missing file or folder, a malformed data file, a
run that cannot be loaded, a gin file or binding that does not parse:
`INPUT_ERRORS`) ends with one line on stderr, the error's message (which
names the file, line or field), and exit status 2, not a traceback. Run
with --verbosity=1 (and --verbose where the job has a quiet console) to get
the traceback too. Any other exception is a bug and keeps its traceback.

`run(main, console=True)` also gives the job a quiet console
(gr/console.py): status lines, unexpected warnings and the result on the
console, every log record in `<run dir>/logs/<job>-<time>.log` once main
calls `console.log_to(run_dir)`, and a --verbose flag that shows the log
lines on the console too (with --verbosity=1, the traceback of bad input).

A shared leaf: imports gr.console only.
"""

import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging

from gr import console as console_lib

USAGE_EXIT_CODE = 2

# The library's errors that mean "this input is wrong", by qualified name so
# that a script does not import modules it does not use just to catch them
# (an exception of a type whose module was never imported cannot occur).
INPUT_ERRORS = (
  'gr.data.beir.BeirFormatError',
  'gr.data.embeddings_file.EmbeddingsFileError',
  'gr.docids.table_files.DocidTableError',
  'gr.index.artifact.IndexArtifactError',
  'gr.train.checkpoints.ArtifactError',
  'gr.model.model_config.ModelConfigError',
  'gr.model.hf_import.HFImportError',
  'gr.serve.serving_config.RunLoadError',
  'gr.experiments.gin_cli.GinConfigError',
)
# Built-in and absl ones: a missing path, a wrong command line.
_INPUT_ERROR_TYPES = (
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  app.UsageError,
  flags.Error,
)


def is_input_error(error: BaseException) -> bool:
  """Whether `error` says the command's input is wrong (see INPUT_ERRORS)."""
  if isinstance(error, _INPUT_ERROR_TYPES):
    return True
  return any(
    f'{cls.__module__}.{cls.__qualname__}' in INPUT_ERRORS
    for cls in type(error).__mro__
  )


def fail(message: Any) -> NoReturn:
  """One line `<script>: error: <message>` on stderr, then exit status 2.

  Gin's "In call to configurable ..." notes on an error are left out.
  """
  line = ' '.join(
    ' '.join(
      text
      for text in str(message).splitlines()
      if not text.strip().startswith('In call to configurable')
    ).split()
  )
  sys.stdout.flush()
  print(
    f'{os.path.basename(sys.argv[0])}: error: {line}',
    file=sys.stderr,
    flush=True,
  )
  sys.exit(USAGE_EXIT_CODE)


def _parse_flags(argv: Sequence[str]) -> list[str]:
  try:
    return flags.FLAGS(list(argv))
  except flags.Error as e:
    fail(e)


def _define_verbose() -> None:
  if 'verbose' not in flags.FLAGS:
    flags.DEFINE_bool(
      'verbose',
      False,
      'Show every log line (INFO and up, the gin config) on the console '
      'too, not only status lines and warnings.',
    )


def run(main: Callable[[list[str]], Any], *, console: bool = False) -> None:
  """app.run(main); bad input exits 2 in one line.

  console=True: the job's console is gr/console.py's, set up before main
  (with a --verbose flag) and given back when main returns.
  """
  if console:
    _define_verbose()

  def checked_main(argv):
    if console:
      job = os.path.splitext(os.path.basename(sys.argv[0]))[0]
      console_lib.setup(job, verbose=flags.FLAGS.verbose)
    try:
      return main(argv)
    except Exception as e:  # pylint: disable=broad-exception-caught
      if not is_input_error(e):
        console_lib.log_traceback()  # the console gets Python's own
        raise
      logging.debug('bad input', exc_info=True)
      console_lib.teardown()
      fail(e)
    finally:
      console_lib.teardown()

  app.run(checked_main, flags_parser=_parse_flags)
