"""The command line of the scripts that parse gin: files and bindings.

t5x conventions: `--gin_file` (repeatable), `--gin_bindings` (repeatable) and
the shorthand `--gin.NAME=value` for `--gin_bindings=NAME=value`. Gin files
are looked up relative to the working directory, then the repository root.

A gin script's entry point is `gin_cli.run(main)`: gr/entry.py's `run`
(absl's app.run; bad input, a gin file or binding that does not parse
included, ends in one line on stderr and exit status 2; `console=True` for
a quiet console) after the `--gin.` shorthand is rewritten. Scripts that
parse no gin call `entry.run(main)` directly. `log_under('run_experiment.
workdir')` opens the job's log file under the run directory that the
parsed gin config binds.
"""

import os
import sys
import tokenize
from typing import Any, Callable, Sequence

from absl import flags
from absl import logging
import gin

from gr import console as console_lib
from gr import entry

# gr/experiments/gin_cli.py -> the repository root.
REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)


class GinConfigError(ValueError):
  """A gin file or binding does not parse or names an unknown configurable."""


def define_gin_flags(
  files: Sequence[str] = (),
  files_help: str = 'Gin config files, applied in order.',
) -> tuple[flags.FlagHolder, flags.FlagHolder]:
  """The gin scripts' --gin_file and --gin_bindings (both repeatable), with
  `files` as --gin_file's default; their holders, for `parse_gin`."""
  return (
    flags.DEFINE_multi_string('gin_file', list(files), files_help),
    flags.DEFINE_multi_string(
      'gin_bindings', [], 'Gin bindings, applied after the files.'
    ),
  )


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


def run(main: Callable[[list[str]], Any], *, console: bool = False) -> None:
  """entry.run(main) with the --gin. shorthand; bad input exits 2 in one line.

  console=True: the job's console is gr/console.py's (with a --verbose
  flag), as in entry.run.
  """
  sys.argv = rewrite_gin_shorthand(sys.argv)
  entry.run(main, console=console)
