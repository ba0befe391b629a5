"""A job's console: status lines and the result; the full log in a file.

Library code logs through absl (INFO and up) and knows nothing of this
module. A script's entry point (gr/entry.py's `run(main, console=True)`,
or gin_cli.run for the scripts that parse gin) calls
`setup(job, verbose=)` once its flags are parsed; from then on:

- every record, as absl formats it (`I1206 05:14:00.10 ... file.py:82] ...`),
  goes to the job's log file `<run dir>/logs/<job>-<YYYYmmdd-HHMMSS>.log`,
  which `log_to(run_dir)` opens as soon as the job knows its run directory
  (the records before that, the gin config among them, wait in memory);
  Python warnings (warnings.warn) are log records too. The INFO records
  of the libraries in `QUIET_INFO` (orbax) are dropped, with the reason;
- the console (stderr) shows one status line, prefixed by the job's
  elapsed time, for each record that `STATUS_RULES` names by the logging
  call's module and the message's start: a phase that ended ("built
  atomic index of 3720 documents in 1.2s"), or a progress record
  (`done/total ... ETA`). On a terminal a progress record redraws one
  line; otherwise a stream's progress is printed when it ends and at most
  every `SPARSE_SECONDS` before that;
- warnings and errors reach the console too, except the expected ones
  (`EXPECTED_WARNINGS`, each with its reason), which go to the file only;
- `verbose=True` (the scripts' --verbose) writes every record to the
  console as well, as absl did, and no status lines.

TensorFlow's C++ code writes start-up lines to file descriptor 2 while its
libraries load and when it first looks for devices, before any flag is
read. `quiet_native_startup()`, called by a script before its other
imports, loads TensorFlow with fd 2 pointed at a temporary file and keeps
those lines for the log file (and for --verbose).

A shared leaf: imports the standard library and absl (TensorFlow only
inside `quiet_native_startup`).
"""

import dataclasses
import logging as py_logging
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from typing import IO, Callable, Optional

from absl import logging

# A progress stream that has not ended prints a line at most this often
# when the console is not a terminal (a CI log, `make demo | tee`).
SPARSE_SECONDS = 300.0
# Status lines on a console that is not a terminal are cut to this width
# (a wide terminal's).
PLAIN_WIDTH = 132
# Records held in memory before the log file opens (a job that never opens
# one keeps only the latest).
MAX_HELD_RECORDS = 20_000


@dataclasses.dataclass(frozen=True)
class StatusRule:
  """Records of `module` (the logging call's file, no .py) whose message
  matches `pattern` at its start become status lines. A pattern with the
  groups `done` and `total` is a progress record, shown as `label`, the
  count, the first match of each of `extras` in the message, and its ETA."""

  module: str
  pattern: str
  label: str = ''
  extras: tuple[str, ...] = ()


# The records a user wants to see while a job runs, one per phase or
# progress stream; every other INFO record goes to the log file only.
STATUS_RULES = (
  StatusRule('news', r'news benchmark in '),
  StatusRule('indexing', r'built \S+ index of '),
  StatusRule('encoder_cache', r'encoder cache: reusing '),
  StatusRule(
    'encoder_cache',
    r'encoder cache: (?P<done>\d+)/(?P<total>\d+) tokens',
    'encoder cache tokens',
  ),
  StatusRule('family', r'warm start'),
  StatusRule(
    'embed', r'embedded (?P<done>\d+)/(?P<total>\d+) texts', 'embedded texts'
  ),
  StatusRule('loop', r'Resuming from checkpoint'),
  StatusRule(
    'loop',
    r'step (?P<done>\d+)/(?P<total>\d+) ',
    'training step',
    (r'(?<![\w])loss \S+', r'\S+ steps/s'),
  ),
  StatusRule('loop', r'eval at step '),
  StatusRule(
    'encoder_tuning',
    r'encoder tuning step (?P<done>\d+)/(?P<total>\d+):',
    'encoder tuning step',
    (r'loss \S+',),
  ),
  StatusRule('tuned_encoder', r'encoder tuning: '),
  StatusRule('dev_selection', r'lexical weight '),
  StatusRule('rerank_sets', r'rerank set: '),
  StatusRule('lexical_head', r'term-weight head step '),
  StatusRule('dynamic_cells', r'\S+ step \d+: '),
  StatusRule(
    'query_generators',
    r'doc2query: (?P<done>\d+)/(?P<total>\d+) documents',
    'doc2query documents',
  ),
)

# Warnings the project expects: (logging call's module, message start,
# reason). They go to the log file, not to the console.
EXPECTED_WARNINGS = (
  (
    'dataset_providers',
    'Using an uncached FunctionDataset',
    # seqio warns, for every task a job trains on, that an uncached
    # FunctionDataset shuffles poorly on restarts. gr's tasks are built per
    # run from the corpus and shuffled by the job's seed, and a resumed job
    # restores its data iterator with the checkpoint: nothing to act on.
    'per-run tasks, seeded shuffle, iterator restored with the checkpoint',
  ),
)


# Libraries whose INFO records are dropped before they reach the log file
# or the console (path fragment, reason).
QUIET_INFO = (
  (
    '/orbax/',
    # orbax logs each checkpoint save in ~40 INFO lines of its internals
    # (threads, handlers, temporary directories); its warnings are kept.
    'checkpoint internals',
  ),
)


def kept(record: py_logging.LogRecord) -> bool:
  """False for the INFO (and lower) records of the QUIET_INFO libraries."""
  return record.levelno >= py_logging.WARNING or not any(
    fragment in record.pathname for fragment, _ in QUIET_INFO
  )


def expected(record: py_logging.LogRecord) -> bool:
  """Whether `record` is a warning in EXPECTED_WARNINGS."""
  message = record.getMessage()
  return any(
    record.module == module and message.startswith(start)
    for module, start, _ in EXPECTED_WARNINGS
  )


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  if hours:
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}'
  return f'{rest // 60}:{rest % 60:02d}'


def _eta(message: str) -> Optional[str]:
  found = re.search(r'ETA (\d+m\d+s|[\d.]+ ?s\b)', message)
  return found.group(1).replace(' ', '') if found else None


@dataclasses.dataclass
class _Stream:
  """One progress stream's state: where its records come from."""

  key: tuple[str, int]
  started: float
  printed: float
  done: bool = False


class Console(py_logging.Handler):
  """Writes status lines, unexpected warnings and errors to the console.

  `stream` is looked up on each write (default: the current sys.stderr),
  so a test that swaps sys.stderr sees the lines.
  """

  def __init__(
    self,
    *,
    verbose: bool = False,
    tty: Optional[bool] = None,
    stream: Optional[IO[str]] = None,
    started: Optional[float] = None,
  ):
    super().__init__()
    self.setFormatter(logging.PythonFormatter())
    self.verbose = verbose
    self._tty = tty
    self._stream = stream
    self.started = time.time() if started is None else started
    self._current: Optional[_Stream] = None  # the progress line drawn
    self._drawn = ''
    self._streams: dict[tuple[str, int], _Stream] = {}

  @property
  def stream(self) -> IO[str]:
    return self._stream or sys.stderr

  @property
  def tty(self) -> bool:
    if self._tty is not None:
      return self._tty
    return bool(getattr(self.stream, 'isatty', lambda: False)())

  def emit(self, record: py_logging.LogRecord) -> None:
    try:
      if record.levelno >= py_logging.CRITICAL:
        return  # absl's own handler shows (and dies on) fatal records
      if self.verbose:
        self.line(self.format(record))
        return
      rule, found = _status_rule(record)
      if rule is not None:
        self._status(rule, found, record)
      elif record.levelno >= py_logging.WARNING and not expected(record):
        self.line(self.format(record))
    except Exception:  # pylint: disable=broad-exception-caught
      self.handleError(record)

  def line(self, text: str) -> None:
    """One line on the console; a progress line drawn stays below it."""
    if self._drawn:
      self.stream.write('\r\x1b[K')
    self.stream.write(text.rstrip('\n') + '\n')
    if self._drawn:
      self.stream.write(self._drawn)
    self.stream.flush()

  def finish(self) -> None:
    """Ends a progress line that is still being redrawn."""
    if self._drawn:
      self.stream.write('\n')
      self.stream.flush()
    self._drawn, self._current = '', None

  def _width(self) -> int:
    if not self.tty:
      return PLAIN_WIDTH
    return max(shutil.get_terminal_size((PLAIN_WIDTH, 24)).columns - 1, 20)

  def _fit(self, text: str) -> str:
    width = self._width()
    text = f'{_duration(time.time() - self.started):>7}  {text}'
    return text if len(text) <= width else text[: width - 3] + '...'

  def _status(self, rule, found, record) -> None:
    if 'done' not in found.groupdict():
      self.finish()
      self.line(self._fit(_short_floats(record.getMessage())))
      return
    done, total = int(found.group('done')), int(found.group('total'))
    stream = self._stream_of(record)
    stream.done = done >= total
    tty = self.tty
    text = self._fit(
      _progress_text(rule, record.getMessage(), done, total, bar=tty)
    )
    if tty:
      if self._current is not stream:
        self.finish()
      self._current, self._drawn = stream, '\r\x1b[K' + text
      self.stream.write(self._drawn)
      self.stream.flush()
      if stream.done:
        self.finish()
    elif stream.done or time.time() - stream.printed >= SPARSE_SECONDS:
      stream.printed = time.time()
      self.line(text)

  def _stream_of(self, record) -> _Stream:
    key = (record.pathname, record.lineno)
    stream = self._streams.get(key)
    if stream is None or stream.done:
      now = time.time()
      stream = self._streams[key] = _Stream(key, now, now)
    return stream


def _short_floats(text: str) -> str:
  """0.9444444444444444 -> 0.944: a status line is read, not parsed."""
  return re.sub(
    r'(?<![\w.])\d+\.\d{4,}', lambda m: f'{float(m.group()):.3f}', text
  )


def _status_rule(record):
  message = None
  for rule in STATUS_RULES:
    if record.module != rule.module:
      continue
    message = record.getMessage() if message is None else message
    found = re.match(rule.pattern, message)
    if found:
      return rule, found
  return None, None


def _progress_text(
  rule: StatusRule, message: str, done: int, total: int, bar: bool = False
) -> str:
  fraction = min(done / max(total, 1), 1.0)
  drawn = f' [{"#" * round(20 * fraction):-<20}]' if bar else ''
  parts = [f'{rule.label}{drawn} {done}/{total} ({int(100 * fraction)}%)']
  for extra in rule.extras:
    found = re.search(extra, message)
    if found:
      parts.append(found.group(0))
  eta = _eta(message)
  if eta and done < total:
    parts.append(f'ETA {eta}')
  return ', '.join(parts)


class LogFile(py_logging.Handler):
  """Every record, absl-formatted, to a file; held in memory until `open`."""

  def __init__(self):
    super().__init__()
    self.setFormatter(logging.PythonFormatter())
    self.path: Optional[str] = None
    self._file: Optional[IO[str]] = None
    self._held: list[str] = []

  def emit(self, record: py_logging.LogRecord) -> None:
    try:
      self.write(self.format(record))
    except Exception:  # pylint: disable=broad-exception-caught
      self.handleError(record)

  def write(self, text: str) -> None:
    if self._file is not None:
      self._file.write(text + '\n')
      self._file.flush()
    else:
      self._held.append(text)
      del self._held[:-MAX_HELD_RECORDS]

  def open(self, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self._file = open(path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
    self.path = path
    held, self._held = self._held, []
    for text in held:
      self.write(text)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    super().close()


@dataclasses.dataclass
class _Job:
  name: str
  started: float
  console: Console
  log_file: LogFile
  absl_filter: Callable[[py_logging.LogRecord], bool]


_job: Optional[_Job] = None
# What TensorFlow's C++ code wrote to fd 2 during quiet_native_startup.
_native_lines: list[str] = []


def quiet_native_startup() -> None:
  """Loads TensorFlow and lets it look for devices with fd 2 redirected.

  What its C++ code writes there (oneDNN, "Could not find cuda drivers",
  "failed call to cuInit" on a machine without a GPU, absl's pre-init
  notice) says nothing about the run: it goes to the log file, or to the
  console with --verbose. Call before importing seqio or TensorFlow. Also
  sets TF_CPP_MIN_LOG_LEVEL=2 (unless set): C++ INFO and WARNING lines of
  TensorFlow and XLA during the run (e.g. tf.data's end-of-sequence
  notices) go nowhere; their errors still reach the console.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    failed = True
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top

      # TensorFlow probes CUDA once, on its first device lookup.
      tf.config.list_physical_devices()
      failed = False
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = captured.read().decode('utf-8', errors='replace')
      if failed:
        sys.stderr.write(text)  # the import failed: show everything
  _native_lines.extend(text.splitlines())


def setup(job: str, *, verbose: bool = False) -> Console:
  """Routes the job's log records to the console and its log file.

  Call once flags are parsed: absl's app.run has installed its handler and
  set the level to INFO (unless --verbosity says otherwise), so the file
  holds INFO and up. See the module docstring for what goes where.
  """
  global _job
  if _job is not None:
    teardown()
  root = py_logging.getLogger()
  # TensorFlow gives its logger its own stderr handler when it is imported
  # before absl's is installed; its records reach the root's handlers anyway
  # (else every TensorFlow warning shows twice).
  tf_logger = py_logging.getLogger('tensorflow')
  for handler in list(tf_logger.handlers):
    tf_logger.removeHandler(handler)
  py_logging.captureWarnings(True)  # warnings.warn -> the log and console
  started = time.time()
  console = Console(verbose=verbose, started=started)
  log_file = LogFile()
  for text in _native_lines:
    log_file.write(text)
    if verbose:
      console.line(text)
  # absl's handler keeps only fatal records (it aborts the process on them).
  absl_filter = lambda r: r.levelno >= py_logging.CRITICAL
  logging.get_absl_handler().addFilter(absl_filter)
  for handler in (console, log_file):
    handler.addFilter(kept)
    root.addHandler(handler)
  _job = _Job(job, started, console, log_file, absl_filter)
  return console


def log_to(run_dir: str, suffix: str = '') -> str:
  """Opens `<run_dir>/logs/<job>-<start time><suffix>.log`; says so on the
  console. Returns the path. Records logged since `setup` are written
  first. `suffix` tells apart processes of one job that share run_dir."""
  if _job is None:
    raise RuntimeError('console.setup() was not called')
  stamp = time.strftime('%Y%m%d-%H%M%S', time.localtime(_job.started))
  path = os.path.join(run_dir, 'logs', f'{_job.name}-{stamp}{suffix}.log')
  _job.log_file.open(path)
  if not _job.console.verbose:
    _job.console.line(f'log: {path} (--verbose to see it here)')
  return path


def log_path() -> Optional[str]:
  """The open log file's path, if any."""
  return _job.log_file.path if _job is not None else None


def log_traceback() -> None:
  """Writes the exception being handled to the log file only."""
  if _job is not None:
    _job.log_file.write('job failed:\n' + traceback.format_exc().rstrip())


def teardown() -> None:
  """Ends a progress line, closes the log file, gives the console back."""
  global _job
  if _job is None:
    return
  _job.console.finish()
  root = py_logging.getLogger()
  root.removeHandler(_job.console)
  root.removeHandler(_job.log_file)
  _job.log_file.close()
  logging.get_absl_handler().removeFilter(_job.absl_filter)
  py_logging.captureWarnings(False)
  _job = None
