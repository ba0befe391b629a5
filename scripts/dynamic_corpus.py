r"""The dynamic-corpus experiment: docid schemes x continual strategies.

  MPLBACKEND=Agg python scripts/dynamic_corpus.py \
    --gin_file=configs/dynamic_news_tiny.gin \
    --gin.WORKDIR="'/tmp/gr_dynamic'" --docs_fraction=0.1

Trains on the news benchmark's D0, applies D1..D4 with each strategy, and
writes results.json, results.csv, results.md and PNG plots to WORKDIR
(gr/continual/dynamic.py, gr/continual/dynamic_report.py). Started again, it skips the (scheme, strategy) cells that
already finished. --docs_fraction / --max_docs_per_period shrink the corpus
(shorthand for the run_dynamic_experiment bindings).
The console shows status lines and the table; the full log (gin config,
INFO lines) is in WORKDIR/logs/dynamic_corpus-<time>.log (--verbose: on
the console too).
"""

from gr import console

# Before anything imports TensorFlow: its C++ start-up lines go to the log.
console.quiet_native_startup()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from gr.continual import dynamic_report  # noqa: E402
from gr.experiments import configurables  # noqa: E402
from gr.experiments import gin_cli  # noqa: E402

_GIN_FILES, _GIN_BINDINGS = gin_cli.define_gin_flags()
_DOCS_FRACTION = flags.DEFINE_float(
  'docs_fraction', None, 'Fraction of each period\'s documents to use.'
)
_MAX_DOCS = flags.DEFINE_integer(
  'max_docs_per_period', None, 'Cap on documents per period (0: none).'
)
_CACHE_DIR = flags.DEFINE_string(
  'compilation_cache_dir',
  '/tmp/gr_jax_cache',
  'Persistent XLA cache: identical train/search steps compile once.',
)


def size_bindings() -> list[str]:
  """--docs_fraction / --max_docs_per_period as gin bindings."""
  bindings = []
  if _DOCS_FRACTION.value is not None:
    bindings.append(
      f'run_dynamic_experiment.docs_fraction = {_DOCS_FRACTION.value}'
    )
  if _MAX_DOCS.value is not None:
    bindings.append(
      f'run_dynamic_experiment.max_docs_per_period = {_MAX_DOCS.value}'
    )
  return bindings


def enable_compilation_cache(path: str) -> None:
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CACHE_DIR.value:
    enable_compilation_cache(_CACHE_DIR.value)
  gin_cli.parse_gin(
    _GIN_FILES.value, list(_GIN_BINDINGS.value) + size_bindings()
  )
  gin_cli.log_under('run_dynamic_experiment.workdir')
  results = configurables.run_dynamic_experiment()
  last = len(results['periods']) - 1
  print(dynamic_report.format_table(dynamic_report.summary_rows(results), last))
  print(f'wall time {results["wall_seconds"]:.0f}s')


if __name__ == '__main__':
  gin_cli.run(main, console=True)
