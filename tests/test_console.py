"""The quiet console (gr/console.py, issue 19 item 7).

In process: which records become status lines, how progress is drawn on a
terminal and printed sparsely elsewhere, what the log file and --verbose
get, and that expected warnings and orbax's INFO lines stay off the console.
As a user runs them: a tiny run_experiment prints a few lines and the table
while its log file holds the gin config and the INFO lines, and --verbose
shows those lines on the console.
"""

import io
import logging as py_logging
import os
import pathlib
import random
import re
import subprocess
import sys

from absl import logging
import pytest

from gr import console
from gr.data import beir

REPO = pathlib.Path(__file__).resolve().parents[1]
# Status lines, the log path and the table of the tiny run (about 8); the
# demo's budget is 30 with its 17-line table.
MAX_CONSOLE_LINES = 15
# TensorFlow's C++ start-up notice on x86 unless the user turned oneDNN off.
ONEDNN_NOTICE = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '1') != '0'


def _record(level, message, path='/x/gr/train/loop.py', line=363):
  module = os.path.splitext(os.path.basename(path))[0]
  record = py_logging.LogRecord('absl', level, path, line, message, (), None)
  assert record.module == module
  return record


@pytest.fixture
def job(tmp_path):
  """A console set up in this process, writing to a StringIO."""
  out = io.StringIO()
  level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)
  handler = console.setup('job')
  handler._stream = out  # pylint: disable=protected-access
  handler._tty = False  # pylint: disable=protected-access
  try:
    yield handler, out
  finally:
    console.teardown()
    py_logging.getLogger().setLevel(level)


# --------------------------------------------------------- in process --


def test_expected_warnings_and_orbax_info_stay_off_the_console():
  uncached = _record(
    py_logging.WARNING,
    'Using an uncached FunctionDataset for training is not recommended',
    '/x/seqio/dataset_providers.py',
  )
  assert console.expected(uncached)
  assert not console.expected(_record(py_logging.WARNING, 'disk is full'))
  assert not console.kept(
    _record(py_logging.INFO, 'saved', '/x/orbax/checkpoint/x.py')
  )
  assert console.kept(
    _record(py_logging.WARNING, 'slow', '/x/orbax/checkpoint/x.py')
  )
  assert console.kept(_record(py_logging.INFO, 'step 100/300'))


def test_status_lines_warnings_and_what_stays_in_the_file(job, tmp_path):
  handler, out = job
  logging.info('Gin config:\nTRAIN_STEPS = 2')
  path = console.log_to(str(tmp_path))
  assert re.fullmatch(
    re.escape(str(tmp_path / 'logs' / 'job-')) + r'\d{8}-\d{6}\.log', path
  )
  # Records as the library logs them: a phase that ended, seqio's features
  # (file only), an expected warning (file only), an unexpected one.
  for record in (
    _record(
      py_logging.INFO,
      'built atomic index of 12 documents in 0.1s',
      '/x/gr/train/indexing.py',
      82,
    ),
    _record(py_logging.INFO, 'feature: x', '/x/seqio/dataset_providers.py'),
    _record(
      py_logging.WARNING,
      'Using an uncached FunctionDataset for training',
      '/x/seqio/dataset_providers.py',
    ),
    _record(py_logging.WARNING, 'the disk is nearly full'),
    _record(
      py_logging.INFO,
      "lexical weight 1.0 (mean dev MRR@10 {'0.0': 0.9444444444444444})",
      '/x/gr/experiments/dev_selection.py',
      104,
    ),
  ):
    py_logging.getLogger('absl').handle(record)
  shown = out.getvalue().splitlines()
  assert shown[0] == f'log: {path} (--verbose to see it here)'
  assert shown[1].endswith('built atomic index of 12 documents in 0.1s')
  assert 'the disk is nearly full' in shown[2]
  assert shown[3].endswith(
    "lexical weight 1.0 (mean dev MRR@10 {'0.0': 0.944})"
  )
  assert len(shown) == 4, shown
  text = pathlib.Path(path).read_text()
  for line in ('Gin config:', 'TRAIN_STEPS = 2', 'feature: x', 'uncached'):
    assert line in text


def test_progress_is_sparse_off_a_terminal(job, monkeypatch):
  handler, out = job
  now = [1000.0]
  monkeypatch.setattr(console.time, 'time', lambda: now[0])

  def step(n, total=300):
    handler.handle(
      _record(
        py_logging.INFO,
        f'step {n}/{total} accuracy 0.5 loss 1.2500 z_loss 0.1 '
        f'2.00 steps/s ETA 1m40s',
      )
    )

  step(100)  # the first record starts the stream: no line yet
  now[0] += 10
  step(200)  # 10 s later: still none
  now[0] += console.SPARSE_SECONDS
  step(250)  # a line at most every SPARSE_SECONDS
  now[0] += 1
  step(300)  # and when the stream ends
  shown = out.getvalue().splitlines()
  assert len(shown) == 2, shown
  assert shown[0].endswith(
    'training step 250/300 (83%), loss 1.2500, 2.00 steps/s, ETA 1m40s'
  )
  assert shown[1].endswith(
    'training step 300/300 (100%), loss 1.2500, 2.00 steps/s'
  )


def test_encoder_tuning_shows_its_progress_and_its_verdict(job):
  handler, out = job
  path = '/x/gr/train/encoder_tuning.py'
  handler.handle(_record(py_logging.INFO,
    'encoder tuning step 150/150: loss 0.5372 (1214.4 s)', path))  # fmt: skip
  handler.handle(_record(py_logging.INFO,
    'encoder tuning: dev dense MRR@10 +0.0372, kept True',
    '/x/gr/experiments/tuned_encoder.py'))  # fmt: skip
  shown = out.getvalue().splitlines()
  assert shown[0].endswith('encoder tuning step 150/150 (100%), loss 0.5372')
  assert shown[1].endswith('encoder tuning: dev dense MRR@10 +0.037, kept True')


def test_progress_redraws_one_line_on_a_terminal(job):
  handler, out = job
  handler._tty = True  # pylint: disable=protected-access
  for n in (1, 2):
    handler.handle(
      _record(
        py_logging.INFO,
        f'encoder cache: {n}00/300 tokens, 5s elapsed, ETA 9s',
        '/x/gr/model/encoder_cache.py',
        247,
      )
    )
  handler.handle(_record(py_logging.WARNING, 'something odd'))
  drawn = out.getvalue()
  assert drawn.count('\n') == 1  # the warning's line; progress redrawn
  assert drawn.count('\r\x1b[K') == 4  # two draws, a clear, a redraw
  assert drawn.endswith(
    'encoder cache tokens [#############-------] 200/300 (66%), ETA 9s'
  )
  handler.finish()
  assert out.getvalue().endswith('\n')


def test_verbose_shows_every_record_as_absl_formats_it(tmp_path):
  out = io.StringIO()
  level = py_logging.getLogger().level
  py_logging.getLogger().setLevel(py_logging.INFO)
  handler = console.setup('job', verbose=True)
  handler._stream = out  # pylint: disable=protected-access
  try:
    logging.info('Gin config:\nX = 1')
    console.log_to(str(tmp_path))
  finally:
    console.teardown()
    py_logging.getLogger().setLevel(level)
  assert re.search(r'^I\d{4} .*\] Gin config:$', out.getvalue(), re.M)
  assert 'X = 1' in out.getvalue()
  assert 'log: ' not in out.getvalue()


# ----------------------------------------------------- as a user runs it --


def _beir(folder: pathlib.Path, num_docs: int = 12):
  rng = random.Random(0)
  words = [f'w{i}' for i in range(300)]
  corpus, queries = {}, {}
  qrels = {'train': {}, 'dev': {}, 'test': {}}
  for i in range(num_docs):
    body = rng.sample(words, 20)
    corpus[f'doc{i}'] = beir.Document(f'doc{i}', f't{i}', ' '.join(body))
    for split in qrels:
      qid = f'q{i}_{split}'
      start = rng.randrange(0, 14)
      queries[qid] = ' '.join(body[start : start + 6])
      qrels[split][qid] = {f'doc{i}': 1}
  beir.write_beir(str(folder), corpus, queries, qrels)


def _run_experiment(*args):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS='')
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # the script's own setting
  return subprocess.run(
    [sys.executable, str(REPO / 'scripts' / 'run_experiment.py'), *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )


def test_a_tiny_run_prints_a_few_lines_and_logs_the_rest(tmp_path):
  _beir(tmp_path / 'data')
  workdir = tmp_path / 'work'
  result = _run_experiment(
    '--gin_file=configs/news_naive_tiny.gin',
    f"--gin.DATA_DIR='{tmp_path / 'data'}'",
    f"--gin.WORKDIR='{workdir}'",
    '--gin.TRAIN_STEPS=2',
    '--gin.BATCH_SIZE=8',
    '--gin.INPUT_LENGTH=16',
    '--gin.VOCAB_SIZE_SP=200',
    '--gin.run_experiment.exact_queries=2',
    "--gin.run_experiment.task_rates={'indexing': 1.0, 'retrieval': 1.0}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  shown = (result.stderr + result.stdout).splitlines()
  assert len(shown) <= MAX_CONSOLE_LINES, '\n'.join(shown)
  assert result.stdout.splitlines()[1].startswith('query set ')
  assert any(line.startswith('titles/test  ') for line in shown)
  assert any('training step 2/2 (100%)' in line for line in shown)
  for noise in ('Gin config', 'I0000', 'oneDNN', 'cuInit', 'uncached'):
    assert noise not in result.stderr, result.stderr
  (log,) = (workdir / 'logs').glob('run_experiment-*.log')
  assert f'log: {log} ' in result.stderr
  text = log.read_text()
  assert 'Gin config:' in text and 'TRAIN_STEPS = 2' in text
  assert re.search(
    r'^I\d{4} .* indexing\.py:\d+\] built naive index', text, re.M
  )
  if ONEDNN_NOTICE:  # TensorFlow's C++ start-up lines land here
    assert 'oneDNN custom operations are on' in text
  assert 'checkpoint_manager.py' not in text  # orbax's INFO lines


def test_verbose_shows_the_log_lines_on_the_console(tmp_path):
  (tmp_path / 'data').mkdir()  # no corpus.jsonl: fails after gin, fast
  result = _run_experiment(
    '--verbose',
    '--gin_file=configs/news_naive_tiny.gin',
    f"--gin.DATA_DIR='{tmp_path / 'data'}'",
    f"--gin.WORKDIR='{tmp_path / 'work'}'",
  )
  assert result.returncode == 2, result.stderr[-3000:]
  assert re.search(
    r'^I\d{4} .*gin_cli\.py:\d+\] Gin config:$', result.stderr, re.M
  )
  if ONEDNN_NOTICE:  # start-up lines too
    assert 'oneDNN custom operations are on' in result.stderr
  assert (
    result.stderr.strip()
    .splitlines()[-1]
    .startswith('run_experiment.py: error: ')
  )
  (log,) = (tmp_path / 'work' / 'logs').glob('run_experiment-*.log')
  assert 'Gin config:' in log.read_text()
