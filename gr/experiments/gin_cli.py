"""The scripts' command line: gin files and bindings, one entry wrapper.

t5x conventions: `--gin_file` (repeatable), `--gin_bindings` (repeatable) and
the shorthand `--gin.NAME=value` for `--gin_bindings=NAME=value`. Gin files
are looked up relative to the working directory, then the repository root.

Every script's entry point is `gin_cli.run(main)`: absl's `app.run(main)`,
except that bad input (a wrong flag, a gin file or binding that does not
parse, a missing file or folder, a malformed data file, a run that cannot be
loaded: `INPUT_ERRORS`) ends with one line on stderr, the error's message
(which names the file, line or field), and exit status 2, not a traceback.
Run with --verbosity=1 (and --verbose where the job has a quiet console)
to get the traceback too. Any other exception is a bug and keeps its
traceback.

`run(main, console=True)` also gives the job a quiet console
(gr/console.py): status lines, unexpected warnings and the result on the
console, every log record in `<run dir>/logs/<job>-<time>.log` once main
calls `console.log_to(run_dir)` (`log_under('run_experiment.workdir')`
reads the run directory from the parsed gin config), and a --verbose flag
that shows the log lines on the console too (with --verbosity=1, the
traceback of bad input).
"""

import os
import sys
import tokenize
from typing import Any, Callable, NoReturn, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

from gr import console as console_lib

# gr/experiments/gin_cli.py -> the repository root.
REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
USAGE_EXIT_CODE = 2

# The library's errors that mean "this input is wrong", by qualified name so
# that a script does not import modules it does not use just to catch them
# (an exception of a type whose module was never imported cannot occur).
INPUT_ERRORS = (
  'gr.data.beir.BeirFormatError',
  'gr.docids.base.DocidTableError',
  'gr.index.artifact.IndexArtifactError',
  'gr.train.checkpoints.ArtifactError',
  'gr.model.model_config.ModelConfigError',
  'gr.model.hf_import.HFImportError',
  'gr.serve.served_run.RunLoadError',
)
# Built-in and absl ones: a missing path, a wrong command line.
_INPUT_ERROR_TYPES = (
  FileNotFoundError,
  NotADirectoryError,
  IsADirectoryError,
  app.UsageError,
  flags.Error,
)


class GinConfigError(ValueError):
  """A gin file or binding does not parse or names an unknown configurable."""


def rewrite_gin_shorthand(argv: Sequence[str]) -> list[str]:
  """--gin.NAME=value -> --gin_bindings=NAME=value (t5x's shorthand)."""
  return [
    f'--gin_bindings={arg[len("--gin.") :]}'
    if arg.startswith('--gin.')
    else arg
    for arg in argv
  ]


def gin_value(key: str) -> Any:
  """The value bound to `key` ('run_experiment.workdir'), through macros."""
  value = gin.query_parameter(key)
  while (
    isinstance(value, gin.config.ConfigurableReference)
    and value.configurable.wrapped is gin.config.macro
  ):
    value = gin.query_parameter(f'{value.scoped_selector}.value')
  return value


def log_under(key: str, suffix: str = '') -> None:
  """Opens the job's log file (console.log_to) under the directory that gin
  binds to `key`; nothing if none is bound (the job then fails on it)."""
  try:
    run_dir = gin_value(key)
  except ValueError:
    return
  if isinstance(run_dir, str):
    console_lib.log_to(run_dir, suffix)


def _gin_message(error: BaseException) -> str:
  if isinstance(error, tokenize.TokenError) and len(error.args) == 2:
    message, (line, _) = error.args
    return f'line {line}: {message}'
  return str(error)


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files then bindings, searching the repository root too.

  As gin.parse_config_files_and_bindings, but a file or binding that fails
  raises GinConfigError naming it.
  """
  gin.add_config_file_search_path(REPO_ROOT)
  parse_errors = (
    OSError,
    ValueError,
    SyntaxError,
    ImportError,
    tokenize.TokenError,
  )
  for path in files:
    try:
      gin.parse_config_file(path)
    except parse_errors as e:
      raise GinConfigError(f'gin file {path}: {_gin_message(e)}') from e
  try:
    gin.parse_config(list(bindings))
  except parse_errors as e:
    raise GinConfigError(f'gin bindings: {_gin_message(e)}') from e
  gin.finalize()
  logging.info('Gin config:\n%s', gin.config_str())


def is_input_error(error: BaseException) -> bool:
  """Whether `error` says the command's input is wrong (see INPUT_ERRORS)."""
  if isinstance(error, (GinConfigError, *_INPUT_ERROR_TYPES)):
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
  """app.run(main) with the --gin. shorthand; bad input exits 2 in one line.

  console=True: the job's console is gr/console.py's, set up before main
  (with a --verbose flag) and given back when main returns.
  """
  sys.argv = rewrite_gin_shorthand(sys.argv)
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
