"""Every script's bad input ends in one line on stderr and exit status 2.

Each case runs the script as a user would (no PYTHONPATH: the editable
install makes gr importable) on input that fails before any model is built:
a malformed corpus line, a missing folder or file, a wrong flag or gin
binding. entry.run (gin_cli.run for the gin scripts) turns those errors
into `<script>: error: <message>`.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import gin
import pytest

from gr import entry
from gr.experiments import gin_cli

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def bad_beir(tmp_path_factory):
  """A BEIR folder whose corpus.jsonl line 2 is malformed JSON."""
  folder = tmp_path_factory.mktemp('bad_beir')
  (folder / 'corpus.jsonl').write_text(
    '{"_id": "d1", "title": "t", "text": "hello"}\n{"_id": "d2", "text": \n'
  )
  (folder / 'queries.jsonl').write_text('{"_id": "q1", "text": "hello"}\n')
  (folder / 'qrels').mkdir()
  (folder / 'qrels' / 'test.tsv').write_text(
    'query-id\tcorpus-id\tscore\nq1\td1\t1\n'
  )
  return folder


def _run(script, *args, cwd=REPO):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', XLA_FLAGS='')
  return subprocess.run(
    [sys.executable, str(REPO / 'scripts' / script), *map(str, args)],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=240,
  )


def _assert_one_line_error(result, script, *expected):
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'{script}: error: '), result.stderr[-3000:]
  for text in expected:
    assert text in last, last


def test_run_experiment_names_the_malformed_corpus_line(bad_beir, tmp_path):
  result = _run(
    'run_experiment.py',
    '--gin_file=configs/news_naive_tiny.gin',
    f"--gin.DATA_DIR='{bad_beir}'",
    f"--gin.WORKDIR='{tmp_path / 'work'}'",
  )
  _assert_one_line_error(
    result, 'run_experiment.py', 'corpus.jsonl:2', 'malformed JSON'
  )
  assert 'In call to configurable' not in result.stderr.splitlines()[-1]


def test_generate_queries_names_the_malformed_corpus_line(bad_beir, tmp_path):
  result = _run(
    'generate_queries.py',
    f'--data_dir={bad_beir}',
    f'--model_dir={tmp_path / "d2q"}',
    f'--output={tmp_path / "queries.jsonl"}',
    '--query_files=queries.jsonl:qrels',
  )
  _assert_one_line_error(
    result, 'generate_queries.py', 'corpus.jsonl:2', 'malformed JSON'
  )


def test_bench_task_memory_rejects_an_unknown_path():
  result = _run('bench_task_memory.py', '--child=nowhere', '--quick')
  _assert_one_line_error(result, 'bench_task_memory.py', 'child')


def test_train_names_the_missing_gin_file():
  result = _run('train.py', '--gin_file=gin/no_such_file.gin')
  _assert_one_line_error(result, 'train.py', 'no_such_file.gin')


def test_demo_names_the_unknown_gin_configurable(tmp_path):
  (tmp_path / 'manifest.json').write_text('{}')  # so no benchmark is built
  result = _run('demo.py', f'--data_dir={tmp_path}', '--gin.no_such.x=1')
  _assert_one_line_error(
    result, 'demo.py', "No configurable matching 'no_such'", 'no_such.x=1'
  )


def test_serve_names_the_missing_run(tmp_path):
  result = _run('serve.py', f'--checkpoint={tmp_path / "missing" / "model"}')
  _assert_one_line_error(
    result, 'serve.py', str(tmp_path / 'missing'), 'model_config.json'
  )


def test_serve_rejects_an_unknown_flag():
  result = _run('serve.py', '--checkpoint=x', '--no_such_flag=1')
  _assert_one_line_error(result, 'serve.py', 'no_such_flag')


def test_bench_serving_names_the_missing_run(tmp_path):
  result = _run(
    'bench_serving.py',
    f'--checkpoint={tmp_path / "missing" / "model"}',
    f'--out={tmp_path / "out.json"}',
  )
  _assert_one_line_error(result, 'bench_serving.py', str(tmp_path / 'missing'))


def test_bench_train_names_the_unknown_config():
  result = _run('bench_train.py', '--configs=tiny,huge', '--skip_hf')
  _assert_one_line_error(result, 'bench_train.py', '--configs', "'huge'")


def test_build_docids_names_the_malformed_corpus_line(bad_beir, tmp_path):
  result = _run(
    'build_docids.py',
    '--data_dir',
    bad_beir,
    '--scheme',
    'naive',
    '--out',
    tmp_path / 'table',
  )
  _assert_one_line_error(result, 'build_docids.py', 'corpus.jsonl:2')
  assert not (tmp_path / 'table').exists()


def test_build_docids_names_a_missing_data_folder(tmp_path):
  result = _run(
    'build_docids.py',
    '--data_dir',
    tmp_path / 'missing',
    '--scheme',
    'naive',
    '--out',
    tmp_path / 'table',
  )
  _assert_one_line_error(
    result, 'build_docids.py', str(tmp_path / 'missing' / 'corpus.jsonl')
  )


def test_build_news_names_the_bad_flag_value(tmp_path):
  result = _run('build_news.py', '--out', tmp_path / 'news', '--seed=abc')
  _assert_one_line_error(result, 'build_news.py', '--seed', 'abc')


def test_results_table_names_the_missing_results_file(tmp_path):
  result = _run('results_table.py', tmp_path)
  _assert_one_line_error(
    result, 'results_table.py', str(tmp_path / 'results.json')
  )


# ------------------------------------------------------ entry, gin_cli --


@pytest.mark.parametrize('name', entry.INPUT_ERRORS)
def test_every_listed_input_error_exists(name):
  module, _, cls = name.rpartition('.')
  error = getattr(importlib.import_module(module), cls)
  assert issubclass(error, Exception)
  assert entry.is_input_error(error.__new__(error))  # by type only


def test_other_errors_are_bugs_and_keep_their_traceback():
  assert not entry.is_input_error(ValueError('x'))
  assert not entry.is_input_error(KeyError('x'))
  assert entry.is_input_error(FileNotFoundError('x'))
  assert entry.is_input_error(gin_cli.GinConfigError('x'))


def test_fail_writes_one_line_and_exits_2(capsys, monkeypatch):
  monkeypatch.setattr(sys, 'argv', ['tool.py'])
  with pytest.raises(SystemExit) as exit_info:
    entry.fail(
      "bad thing\n  In file 'a.gin', line 3\n"
      "  In call to configurable 'f' (<function f>)\n"
    )
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
    "tool.py: error: bad thing In file 'a.gin', line 3\n"
  )


@gin.configurable('gin_value_probe')
def _gin_value_probe(workdir=None, steps=0):
  return workdir, steps


def test_gin_value_reads_through_macros():
  """log_under finds the run directory however the gin files bind it."""
  try:
    with gin.unlock_config():
      gin.clear_config()
      gin.parse_config(
        [
          "ROOT = '/tmp/runs'",
          'WORKDIR = %ROOT',
          'gin_value_probe.workdir = %WORKDIR',
          'gin_value_probe.steps = 3',
        ]
      )
    assert gin_cli.gin_value('gin_value_probe.workdir') == '/tmp/runs'
    assert gin_cli.gin_value('gin_value_probe.steps') == 3
    with pytest.raises(ValueError):
      gin_cli.gin_value('gin_value_probe.missing')
  finally:
    with gin.unlock_config():
      gin.clear_config()


def _fake_run(folder, scale: float):
  """A run dir whose results.json has every system collect_schemes reads."""
  folder.mkdir()
  row = lambda h1: {'Hits@1': h1, 'Hits@10': 0.9, 'MRR@10': 0.8, 'other': 1}
  systems = ('gr', 'gr:model', 'gr:terms', 'bm25', 'dense')
  results = {
    qset: {s: row(scale * (i + 1) / 10) for i, s in enumerate(systems)}
    for qset in ('titles/test', 'subtitles/test')
  }
  results['lexical_weight'] = {'chosen': scale}
  results['run'] = {'scheme': folder.name}
  (folder / 'results.json').write_text(json.dumps(results))
  return folder


def test_collect_schemes_updates_the_schemes_it_is_given(tmp_path):
  out = tmp_path / 'schemes.json'
  out.write_text(json.dumps({'kept': {'step0': 1}, 'text': {'old': 2}}))
  result = _run(
    'collect_schemes.py',
    f'--text_step0={_fake_run(tmp_path / "t0", 1.0)}',
    f'--text_trained={_fake_run(tmp_path / "t1", 0.5)}',
    f'--out={out}',
  )
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(out.read_text())
  assert written['kept'] == {'step0': 1} and written['text']['old'] == 2
  assert written['text']['step0']['titles/test'] == {
    'Hits@1': 0.2, 'Hits@10': 0.9, 'MRR@10': 0.8
  }  # fmt: skip
  assert written['text_plan']['trained']['subtitles/test']['Hits@1'] == 0.05
  assert written['lexical_weight'] == {'text_step0': 1.0, 'text_trained': 0.5}
  assert written['runs']['text_trained'] == {'scheme': 't1'}
  assert 'atomic' not in written and 'bm25' not in written


def test_collect_schemes_reads_results_files_for_rq(tmp_path):
  out = tmp_path / 'schemes.json'
  step0 = _fake_run(tmp_path / 'r0', 1.0) / 'results.json'
  result = _run('collect_schemes.py', f'--rq_step0={step0}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  written = json.loads(out.read_text())
  assert written['rq']['step0']['titles/test']['Hits@1'] == 0.2  # gr:model
  assert written['rq_plan']['step0']['titles/test']['Hits@1'] == 0.1  # gr
  assert 'trained' not in written['rq']
  assert written['lexical_weight'] == {'rq_step0': 1.0}
