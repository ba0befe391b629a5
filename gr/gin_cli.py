"""Command-line gin handling shared by the scripts (an edge module).

t5x conventions: `--gin_file` (repeatable), `--gin_bindings` (repeatable) and
the shorthand `--gin.NAME=value` for `--gin_bindings=NAME=value`. Gin files
are looked up relative to the working directory, then the repository root.
"""
import logging as py_logging
import os
from typing import Sequence

from absl import logging
import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rewrite_gin_shorthand(argv: Sequence[str]) -> list[str]:
  """--gin.NAME=value -> --gin_bindings=NAME=value (t5x's shorthand)."""
  return [f'--gin_bindings={arg[len("--gin."):]}'
          if arg.startswith('--gin.') else arg for arg in argv]


def quiet_orbax_info() -> None:
  """Orbax logs each save in detail at INFO; keep its warnings only."""
  logging.get_absl_handler().addFilter(
      lambda r: r.levelno >= py_logging.WARNING or 'orbax' not in r.pathname)


def parse_gin(files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses gin files then bindings, searching the repository root too."""
  gin.add_config_file_search_path(REPO_ROOT)
  gin.parse_config_files_and_bindings(list(files), list(bindings))
  logging.info('Gin config:\n%s', gin.config_str())
